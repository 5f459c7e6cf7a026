"""A throwaway PostgreSQL cluster for tests and benchmarks: a fresh cluster in a temporary
directory made with the PostgreSQL binaries (initdb, pg_ctl), run as the `postgres` user, trust
authentication, TCP on 127.0.0.1 only, fsync off (the tests and benchmarks measure grokscale,
not the disk). A test's fixture takes one through `started_or_skip` (a skip where none can run
here); a benchmark turns `unavailable()` into an error."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from support.ports import free_port

PG_BIN = Path(os.environ.get("GROKSCALE_PG_BIN", "/usr/lib/postgresql/15/bin"))


def unavailable() -> str | None:
    """Why a cluster cannot be started here, or None."""
    missing = [b for b in ("initdb", "pg_ctl", "postgres", "psql") if not (PG_BIN / b).is_file()]
    if missing:
        return (
            f"PostgreSQL server binaries not found in {PG_BIN} (missing {', '.join(missing)}); "
            f"install postgresql-15 or set GROKSCALE_PG_BIN"
        )
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        return "no `postgres` system user to run the PostgreSQL server as"
    if os.geteuid() not in (0, user.pw_uid):
        return "the PostgreSQL server runs as the `postgres` user: needs root (or to be that user)"
    return None


class Postgres:
    def __init__(self) -> None:
        user = pwd.getpwnam("postgres")
        # Not under pytest's tmp_path (0700 root: the server runs as `postgres`), and short: the
        # Unix socket's path must fit in 107 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="gs-pg-"))
        os.chown(self.root, user.pw_uid, user.pw_gid)
        self.data = self.root / "pg"
        self.port = free_port()
        self.prefix = [] if os.geteuid() == user.pw_uid else ["runuser", "-u", "postgres", "--"]

    def _run(self, *cmd: str, timeout: float = 120) -> str:
        out = subprocess.run(
            [*self.prefix, *cmd], capture_output=True, text=True, timeout=timeout, cwd=self.root
        )
        if out.returncode:
            raise RuntimeError(
                f"{Path(cmd[0]).name} failed: {out.stdout[-1500:]}{out.stderr[-1500:]}{self.log()}"
            )
        return out.stdout

    def start(
        self,
        databases: tuple[str, ...] = ("optuna",),
        max_connections: int = 100,
        settings: dict[str, str] | None = None,
    ) -> None:
        """`settings`: more server settings (-c name=value), e.g. a benchmark's shared_buffers."""
        self._run(str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        more = "".join(f" -c {k}={v}" for k, v in (settings or {}).items())
        self._run(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.root / "log"),
            "-o",
            f"-h 127.0.0.1 -p {self.port} -k {self.root} -c fsync=off -c max_connections={max_connections}"
            f"{more}",
            "-w",
            "start",
        )
        for db in databases:
            self.query("postgres", f"CREATE DATABASE {db}")

    def url(self, db: str, driver: str = "postgresql") -> str:
        """`postgresql://...` (Optuna's storage URL) or e.g. driver="postgresql+psycopg2" (MLflow's)."""
        return f"{driver}://postgres@127.0.0.1:{self.port}/{db}"

    def query(self, db: str, sql: str) -> str:
        return self._run(
            str(PG_BIN / "psql"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            db,
            "-tAc",
            sql,
            timeout=300,
        ).strip()

    def stop(self) -> None:
        """Stop at once (a crash, as far as the clients can tell)."""
        subprocess.run(
            [*self.prefix, str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"],
            capture_output=True,
            timeout=60,
            cwd=self.root,
        )

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        path = self.root / "log"
        return path.read_text()[-2000:] if path.exists() else ""


@contextlib.contextmanager
def started_or_skip(databases: tuple[str, ...] = ("optuna",)) -> Iterator[Postgres]:
    """For a test's fixture: a started cluster with `databases`, removed afterwards; the test is
    skipped, saying why, where no cluster or no psycopg2 is here."""
    import pytest

    why = unavailable()
    if why:
        pytest.skip(why)
    pytest.importorskip("psycopg2", reason="the `test` extra's psycopg2-binary is not installed")
    server = Postgres()
    try:
        server.start(databases=databases)
        yield server
    finally:
        server.remove()
