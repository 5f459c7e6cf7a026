"""The Optuna journal file: read without changing it; its tail repaired only under Optuna's lock.

Optuna's JournalFileBackend appends one JSON line per operation, under its file lock. A driver
killed mid-write, or a full disk, leaves a last line cut short. Optuna then drops that line
silently on read, and the next append is glued onto the partial line; the line it makes is not
JSON, and every later read fails with a raw traceback (seen with Optuna 5.0: `AttributeError ...
_last_created_trial_id_by_this_process` on the next ask). A damaged line anywhere else means the
file was edited or corrupted, and replaying past it would silently lose or misplace trials.

So:
- `journal_tail` only reads: a bad line before the last is JournalCorrupt (naming the file and
  the line; nothing is changed), an incomplete last line is returned for the caller to report.
  A reader (`grokscale status`) never writes: the incomplete line it sees may be a live driver's
  append in progress.
- `RepairingJournalBackend` is the backend every driver writes through: each append, under
  Optuna's lock and before it writes, checks the file ends with a whole line. If not, the last
  line is an operation a writer never finished (a live writer finishes under the lock): a whole
  record lacking its newline is completed, a cut-short one is moved to `<journal>.partial-<time>`
  (kept, not deleted) and the file cut back to its last whole line, which is what Optuna itself
  replays. Read, cut and append happen under one hold of the lock, so no other writer's record
  can fall between them. A driver's first append is its claim on the study (store/hold.py).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock


class JournalCorrupt(Exception):
    """A journal line other than the last is not valid JSON: the file cannot be trusted."""


def _bad(line: bytes) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return True
    return False


def journal_tail(path: str | os.PathLike) -> bytes:
    """The journal's last line when it is incomplete (no newline), b"" when the file is whole or
    absent; raises JournalCorrupt when a line before it is not a record. Never writes."""
    path = Path(path)
    if not path.is_file():
        return b""
    lines = path.read_bytes().split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline, as a whole journal does
    for i, line in enumerate(lines, start=1):
        if line.strip() and _bad(line):
            raise JournalCorrupt(
                f"{path}: line {i} of {len(lines) + (1 if tail else 0)} is not a valid journal record "
                f"({line[:80]!r}...). The file was damaged or edited; nothing was changed. Restore it from a "
                "backup, or move it away to start the study's search afresh (its MLflow runs are kept)."
            )
    return tail


def _ends_whole(path: Path) -> bool:
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        if not size:
            return True
        f.seek(size - 1)
        return f.read(1) == b"\n"


def repair_tail(path: str | os.PathLike) -> str | None:
    """Complete or set aside an incomplete last line; a note of what was done, None when the file
    ends whole. Only under Optuna's lock on the journal (RepairingJournalBackend)."""
    path = Path(path)
    if not path.is_file() or _ends_whole(path):
        return None
    data = path.read_bytes()
    tail = data[data.rfind(b"\n") + 1 :]
    if not _bad(tail):  # a whole record that only lacks its newline: complete it
        with open(path, "ab") as f:
            f.write(b"\n")
            f.flush()
            os.fsync(f.fileno())
        return None
    aside = path.with_name(f"{path.name}.partial-{time.strftime('%Y%m%d-%H%M%S')}")
    aside.write_bytes(tail)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data[: len(data) - len(tail)])
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return (
        f"{path}: its last record was cut short ({len(tail)} bytes, an operation a killed driver or a "
        f"full disk never finished); it was set aside in {aside.name} and the journal resumes from the "
        "last whole record"
    )


class RepairingJournalBackend(JournalFileBackend):
    """Optuna's file backend whose every append first repairs the file's tail, both under the
    lock (module docstring). Reads are Optuna's own."""

    def __init__(self, file_path: str, lock_obj: JournalFileOpenLock) -> None:
        super().__init__(file_path, lock_obj=lock_obj)
        self.path, self.lock = file_path, lock_obj

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        self.lock.acquire()
        try:
            if note := repair_tail(self.path):
                print(f"note: {note}", file=sys.stderr)
            data = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs).encode()
            with open(self.path, "ab") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        finally:
            self.lock.release()
