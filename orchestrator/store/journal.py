"""The Optuna journal file, checked before Optuna reads it.

Optuna's JournalFileBackend appends one JSON line per operation. A driver killed mid-write, or
a full disk, leaves a last line cut short. Optuna then drops that line silently on read, and
the next append is glued onto the partial line; the line it makes is not JSON, and every later
read fails with a raw traceback (seen with Optuna 5.0: `AttributeError ... _last_created_trial_
id_by_this_process` on the next ask). A damaged line anywhere else means the file was edited or
corrupted, and replaying past it would silently lose or misplace trials.

So, before a study opens its journal:
- a cut-short LAST line is recovered: the operation it held never completed, so it is moved to
  `<journal>.partial-<time>` (kept, not deleted) and the file is cut back to its last whole
  line, which is what Optuna itself would replay; the caller reports the note;
- a bad line elsewhere is an error naming the file and the line; nothing is changed.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path


class JournalCorrupt(Exception):
    """A journal line other than the last is not valid JSON: the file cannot be trusted."""


def _bad(line: bytes) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return True
    return False


def check_journal(path: str | os.PathLike) -> str | None:
    """Check (and if need be repair the tail of) a journal file; returns a note of what was
    recovered, None when the file is whole or absent. Raises JournalCorrupt otherwise."""
    path = Path(path)
    if not path.is_file():
        return None
    data = path.read_bytes()
    if not data:
        return None
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline, as a whole journal does
    for i, line in enumerate(lines, start=1):
        if line.strip() and _bad(line):
            raise JournalCorrupt(
                f"{path}: line {i} of {len(lines) + (1 if tail else 0)} is not a valid journal record "
                f"({line[:80]!r}...). The file was damaged or edited; nothing was changed. Restore it from a "
                "backup, or move it away to start the study's search afresh (its MLflow runs are kept).")
    if not tail:
        return None
    if not _bad(tail):  # a whole record that only lacks its newline: complete it
        with open(path, "ab") as f:
            f.write(b"\n")
            f.flush()
            os.fsync(f.fileno())
        return None
    keep = data[:len(data) - len(tail)]
    aside = path.with_name(f"{path.name}.partial-{time.strftime('%Y%m%d-%H%M%S')}")
    aside.write_bytes(tail)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(keep)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return (f"{path}: its last record was cut short ({len(tail)} bytes, an operation a killed driver or a "
            f"full disk never finished); it was set aside in {aside.name} and the journal resumes from the "
            "last whole record")
