"""The Optuna storage that holds a study's trials: a journal file (the default, safe for one
writer: the driver) or an RDB URL for teams. The driver writes it (`open_storage`); `grokscale
status` only reads it (`read_storage`), never creating, repairing or unlocking anything."""

from __future__ import annotations

import sys
from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

from orchestrator.store.journal import RepairingJournalBackend, journal_tail
from orchestrator.study.preflight import rdb_url

JOURNAL_LOCK_SUFFIX = ".lock"  # Optuna's lock file beside the journal (LOCK_FILE_SUFFIX, private)
JOURNAL_LOCK_GRACE_S = 30  # Optuna's default: a lock unchanged this long belongs to a dead writer


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """A journal file (the default, safe for one writer: the driver) or an RDB URL for teams.
    A journal is written through RepairingJournalBackend: an incomplete last record is set aside
    under Optuna's lock, by the first append (store/journal.py)."""
    if "://" in url:
        return optuna.storages.RDBStorage(rdb_url(url))
    path = Path(url).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    journal_tail(path)  # a damaged record before the last raises JournalCorrupt, changing nothing
    lock = path.with_name(path.name + JOURNAL_LOCK_SUFFIX)
    if lock.is_symlink() and not lock.exists():
        # Optuna's default lock is a symlink to the journal's path as given; from a relative path it
        # dangles, and then its grace period never starts (it stats the target): a driver killed
        # while writing left a lock the next one waited on forever, spinning. Such a lock is never
        # held by a live grokscale driver (it uses the lock below), so it is removed.
        lock.unlink()
        print(f"note: removed a stale journal lock {lock} (left by a killed driver)", file=sys.stderr)
    # A plain lock file: a killed driver's lock is broken after JOURNAL_LOCK_GRACE_S without change.
    lock_obj = JournalFileOpenLock(str(path), grace_period=JOURNAL_LOCK_GRACE_S)
    return JournalStorage(RepairingJournalBackend(str(path), lock_obj))


def read_storage(url: str) -> optuna.storages.BaseStorage | None:
    """The storage, to read only (`grokscale status`); None when there is none (none is created).
    A journal is read as it is, never repaired or unlocked: an incomplete last record (a live
    driver's append in progress, or a killed one's) is left alone, said on stderr, and not read."""
    if "://" in url:
        return optuna.storages.RDBStorage(rdb_url(url))
    path = Path(url).resolve()
    if not path.is_file():
        return None
    tail = journal_tail(path)  # a damaged record before the last raises JournalCorrupt
    if tail:
        print(
            f"note: {path}: its last record is incomplete ({len(tail)} bytes): a driver is writing it now, "
            "or one was killed mid-write. Shown: the records before it; nothing was changed (the next "
            "`grokscale run` sets a killed driver's record aside).",
            file=sys.stderr,
        )
    return JournalStorage(JournalFileBackend(str(path)))  # Optuna reads without its lock
