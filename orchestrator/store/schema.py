"""A new SQLite store's tables, made whole before any other process can see the file.

MLflow makes a SQLite store's tables (and runs its migrations) on the first call a process makes
on it, with no lock. When two processes do that on one new file at once (the driver and a
`grokscale status`, an `mlflow ui`, a test reading the study), the loser fails: "table ... already
exists", "duplicate column name", a migration that found 0 rows, an AttributeError inside a
migration script. Measured on MLflow 3.17: of three processes released together, two fail.

`ready` therefore makes a new store in a private file beside it and hard-links that file into
place, which fails if the name was taken meanwhile: the store's name never holds a half-made
store made by grokscale, and of two grokscale processes one's store wins and the other's is
dropped. A store that another program is making right now (an `mlflow ui` started on the same new
path) can still be half-made when read; for the errors that shows, `ready` waits and retries.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 60.0  # MLflow's migrations of a new store take a few seconds on one core
# What a process sees when another program is making the tables (lower case): from SQLite, from
# Alembic, from MLflow's schema check.
RACE_SIGNS = (
    "already exists",
    "duplicate column name",
    "database is locked",
    "online migration expected to match one row",
    "out-of-date database schema",
)


def lost_race(err: BaseException) -> bool:
    """`err`, or one it came from, is what a process sees when another made the tables meanwhile."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if any(sign in str(err).lower() for sign in RACE_SIGNS):
            return True
        err = err.__cause__ or err.__context__
    return False


def _touch(uri: str):
    """MLflow's store at `uri`, its tables made by this first call if it had none."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    client.search_experiments(max_results=1)
    return client


def _made_beside(target: Path) -> None:
    """A whole new store at `target`, unless one appeared there meanwhile (then that one stays)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    private = target.with_name(f".{target.name}.{os.getpid()}.new")
    private.unlink(missing_ok=True)  # a leftover of an earlier process of this pid
    try:
        store = _touch(f"sqlite:///{private}")._tracking_client.store
        store.engine.dispose()  # closed before the file is linked: no connection keeps it by another name
        with contextlib.suppress(FileExistsError):  # another process's store won: it is whole too
            os.link(private, target)
    finally:
        private.unlink(missing_ok=True)


def ready(uri: str, timeout_s: float = READY_TIMEOUT_S) -> None:
    """The SQLite store at `uri` exists with all of MLflow's tables; nothing for any other store.
    An error that is not another program making the tables (or that one past `timeout_s`) is
    raised."""
    if not uri.startswith("sqlite:"):
        return
    from orchestrator.study.preflight import sqlite_path

    path = sqlite_path(uri)
    if path is None:  # in memory: this process's alone
        return
    if not Path(path).exists():
        try:
            _made_beside(Path(path))
        except OSError as err:  # no hard links here (some FUSE file systems): MLflow makes it in place
            log.info("could not make the MLflow store beside %s (%s); making it in place", path, err)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            _touch(uri)
            return
        except Exception as err:
            if not lost_race(err) or time.monotonic() > deadline:
                raise
            log.info("another program is making the MLflow store's tables; waiting for it")
            time.sleep(0.5)
