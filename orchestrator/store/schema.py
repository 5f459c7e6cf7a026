"""A new SQLite store's tables: made whole before any other process can see the file, and fast.

MLflow makes a SQLite store's tables on the first call a process makes on it, by running every
one of its migrations (1.4 s on this project's 2-core machine, MLflow 3.17), with no lock. When
two processes do that on one new file at once (the driver and a `grokscale status`, an
`mlflow ui`, a test reading the study), the loser fails: "table ... already exists", "duplicate
column name", a migration that found 0 rows, an AttributeError inside a migration script. Of
three processes released together, two fail.

So `ready` makes a new store in a private file beside it and hard-links that file into place;
the link fails if the name was taken meanwhile. The store's name never holds a half-made store
made by grokscale, and of two grokscale processes one's store wins and the other's is dropped.

The private file is a copy of a template: a store MLflow made once per MLflow version, in the
user's cache folder, with its experiments deleted. MLflow adds the Default experiment to a
store that has none when it opens it, with this store's artifact location and time, so the copy
opens as a new store would (30 ms instead of 1.4 s). A template that is not an empty store of
that schema, or that MLflow will not open, is deleted and the store made by MLflow's own
migrations instead; one that someone else could have written (its file or folder not this
user's, or writable by others) is left alone and not used.

A store that another program is making right now (an `mlflow ui` started on the same new path)
can still be half-made when read; for the errors that shows, `ready` waits and retries.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import sqlite3
import time
from pathlib import Path

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 60.0  # MLflow's migrations of a new store take seconds on a loaded machine
# What a process sees when another program is making the tables (lower case): from SQLite, from
# Alembic, from MLflow's schema check.
RACE_SIGNS = (
    "already exists",
    "duplicate column name",
    "database is locked",
    "online migration expected to match one row",
    "out-of-date database schema",
)
CACHE_ENV = "GROKSCALE_CACHE"  # the folder of the template; default $XDG_CACHE_HOME/grokscale


def lost_race(err: BaseException) -> bool:
    """`err`, or one it came from, is what a process sees when another made the tables meanwhile."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if any(sign in str(err).lower() for sign in RACE_SIGNS):
            return True
        err = err.__cause__ or err.__context__
    return False


def template_path() -> Path | None:
    """Where the template of this MLflow version is kept; None with no cache folder to keep it in
    (no GROKSCALE_CACHE, no XDG_CACHE_HOME and a home that cannot be found, as for a container's
    user without a passwd entry)."""
    import mlflow

    folder = os.environ.get(CACHE_ENV)
    if not folder:
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        if cache.startswith("~"):  # expanduser found no home
            return None
        folder = os.path.join(cache, "grokscale")
    return Path(folder) / f"mlflow-{mlflow.__version__}-empty-store.db"


def _opened(path: Path) -> None:
    """MLflow's store in the file `path`, opened (its tables made if it had none) and closed."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{path}")
    client.search_experiments(max_results=1)
    # No connection keeps the file once it moves (MLflow's private attributes: if a release
    # renames them, the connections close when the process ends instead).
    with contextlib.suppress(AttributeError):
        client._tracking_client.store.engine.dispose()


def _private(beside: Path) -> Path:
    """A new empty file beside `beside`, made by this process alone (O_EXCL, a random name: a
    link planted in a shared folder is never followed), with the mode the umask gives a new file."""
    path = beside.with_name(f".{beside.name}.{secrets.token_hex(8)}.new")
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    return path


def _trusted(path: Path) -> bool:
    """The template and its folder are this user's and no one else can write them (as ssh asks of
    its keys): a template planted in a shared cache is never copied into a study's store."""
    for p in (path, path.parent):
        st = p.stat()
        if st.st_uid != os.getuid() or st.st_mode & 0o022:
            log.warning("not using the template store %s: %s is not this user's alone to write", path, p)
            return False
    return True


def _empty(path: Path) -> bool:
    """The file is a SQLite store with no experiment and no run (a template, as made)."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        return all(
            db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] == 0 for t in ("experiments", "runs")
        )


def _template() -> Path | None:
    """The template (made now if missing); None where it cannot be made."""
    path = template_path()
    if path is None:
        return None
    if path.is_file():
        return path if _trusted(path) else None
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        private = _private(path)
        try:
            _opened(private)
            with contextlib.closing(sqlite3.connect(private)) as db, db:
                db.execute("DELETE FROM experiments")  # Default: MLflow remakes it in each copy
            private.chmod(0o600)  # this user's alone, whatever the umask (`_trusted`)
            with contextlib.suppress(FileExistsError):  # another process's template won
                os.link(private, path)
        finally:
            private.unlink(missing_ok=True)
    except (OSError, sqlite3.Error) as err:  # an unwritable cache: each store is made by MLflow
        log.info("no template store in %s (%s)", path.parent, err)
        return None
    return path


def _fill(private: Path) -> None:
    """A whole new store in `private`: the template's copy, or MLflow's migrations."""
    template = _template()
    if template is not None:
        try:
            with template.open("rb") as src, private.open("r+b") as dst:
                shutil.copyfileobj(src, dst)
            if _empty(private):
                _opened(private)
                return
            raise ValueError("it holds experiments or runs")
        except Exception as err:  # noqa: BLE001 - any flaw of the template: MLflow makes the store
            log.warning("the template store %s is unusable (%s); deleting it", template, err)
            template.unlink(missing_ok=True)
            private.write_bytes(b"")
    _opened(private)


def _made_beside(target: Path) -> None:
    """A whole new store at `target`, unless one appeared there meanwhile (then that one stays)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    private = _private(target)
    try:
        _fill(private)
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
    from mlflow.tracking import MlflowClient

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
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
            return
        except Exception as err:
            if not lost_race(err) or time.monotonic() > deadline:
                raise
            log.info("another program is making the MLflow store's tables; waiting for it")
            time.sleep(0.5)
