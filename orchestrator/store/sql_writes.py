"""A run's hot writes (create, log_batch, terminate) into a SQLite or PostgreSQL MLflow store as
plain SQL: the rows MLflow's own SqlAlchemyStore writes, in one transaction a call, without its ORM.

Why: for a run of 0.1 s the MLflow calls were the driver's largest cost (issue 16). Profiled on
the 2-core machine (session 8), one run's calls through MlflowClient cost 30-40 ms of CPU, 75% of
it in SQLAlchemy's Python layer: 11 sessions a run, each with 3 PRAGMAs and the run read back.
The same rows as plain SQL cost about 4 ms. `RestWrites` (tracker.py) is the same idea for a
tracking server: MLflow's own REST API as plain JSON.
PostgreSQL (`tracking.uri: postgresql://...`, the database behind a lab's `mlflow server`): the
same rows through psycopg2, a batch's points by COPY. Issue 16's scale benchmark
measured the tracking server in front of such a database at ~1,300 points/s on 2 cores (~0.75 ms
of server time a point, its SQLAlchemy layer again); a driver that may reach the database writes
to it directly (bench_driver_scale.py --store database) and the server still serves the UI.

Safety: the rows are MLflow's, so MLflow (its UI, search, the report) reads them as its own;
`tests/unit/test_sql_writes.py` writes the same runs both ways and compares everything MLflow
gives back. The path is used only when the store's five run tables have exactly the columns this
writer knows (`SqlWrites.of`); a store of another MLflow schema gets MlflowClient, as before.
The two dialects differ only in placeholders, bulk inserts and how a
table's columns are listed (`Dialect`); the SQL is the upsert both speak.
What MLflow checks and this writer keeps: a run must exist and be active; a param logged again
must keep its value (MlflowException, INVALID_PARAMETER_VALUE, which the write queue drops as
refused); NaN and infinite metrics are stored as MLflow stores them.
"""

from __future__ import annotations

import contextlib
import io
import math
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.entities import Run, RunData, RunInfo, RunTag
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME, MLFLOW_USER
from mlflow.utils.uri import append_to_uri_path

# The columns of the tables written, as MLflow 2.x and 3.x (through 3.17) create them.
SCHEMA = {
    "runs": {"run_uuid", "name", "source_type", "source_name", "entry_point_name", "user_id", "status",
             "start_time", "end_time", "source_version", "lifecycle_stage", "artifact_uri", "experiment_id",
             "deleted_time"},
    "tags": {"key", "value", "run_uuid"},
    "params": {"key", "value", "run_uuid"},
    "metrics": {"key", "value", "timestamp", "run_uuid", "step", "is_nan"},
    "latest_metrics": {"key", "value", "timestamp", "step", "is_nan", "run_uuid"},
}
MAX_FLOAT = 1.7976931348623157e308  # MLflow stores +-inf as +-the largest double


@dataclass(frozen=True)
class Dialect:
    """What differs between the two databases: how to connect, placeholders, a bulk insert, and
    how a table's columns are listed."""

    name: str
    connect: Callable[[], Any]
    errors: tuple[type[Exception], ...]  # the driver's errors: a store it cannot read is not one it knows
    # Errors about the row itself (a value longer than its column, a broken constraint): the same
    # write would fail again, so it is refused as MLflow refuses it, and the write queue drops it
    # instead of retrying it for ever. Anything else (the server away) is retried.
    refusals: tuple[type[Exception], ...]

    def sql(self, text: str) -> str:
        return text if self.name == "sqlite" else text.replace("?", "%s")

    def run(self, db: Any, text: str, args: Sequence = ()) -> Any:
        cur = db.cursor()
        cur.execute(self.sql(text), args)
        return cur

    def many(self, db: Any, head: str, rows: list[tuple], tail: str = "") -> None:
        """INSERT `head` VALUES (...), one row per tuple, then `tail` (its ON CONFLICT clause)."""
        if not rows:
            return
        if self.name == "sqlite":
            db.executemany(f"{head} VALUES ({', '.join('?' * len(rows[0]))}) {tail}", rows)
        else:  # one statement of up to 1,000 rows: psycopg2's executemany is a round trip a row
            from psycopg2.extras import execute_values

            execute_values(db.cursor(), f"{head} VALUES %s {tail}", rows, page_size=1000)

    def insert_new(self, db: Any, table: str, columns: Sequence[str], rows: list[tuple]) -> None:
        """The rows not in `table` yet (a row there already is a retried batch's). PostgreSQL: COPY,
        several times cheaper a row for the server than an INSERT of a VALUES list, in a
        savepoint; only when a row is there already does the INSERT ... ON CONFLICT run instead."""
        head = f"INSERT INTO {table} ({', '.join(columns)})"
        if self.name == "sqlite" or not rows:
            return self.many(db, head, rows, "ON CONFLICT DO NOTHING")
        import psycopg2.errors

        cur = db.cursor()
        cur.execute("SAVEPOINT bulk")
        try:
            cur.copy_expert(f"COPY {table} ({', '.join(columns)}) FROM STDIN", io.StringIO(copy_text(rows)))
        except psycopg2.errors.UniqueViolation:
            cur.execute("ROLLBACK TO SAVEPOINT bulk")
            self.many(db, head, rows, "ON CONFLICT DO NOTHING")
        else:
            cur.execute("RELEASE SAVEPOINT bulk")

    def columns(self, db: Any, table: str) -> set[str]:
        if self.name == "sqlite":
            return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        cur = self.run(db, "SELECT column_name FROM information_schema.columns WHERE table_schema = "
                           "current_schema() AND table_name = ?", (table,))
        return {row[0] for row in cur.fetchall()}


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def copy_text(rows: list[tuple]) -> str:
    """Rows in COPY's text format: tab-separated, NULL as \\N, booleans t/f, floats as Python's
    shortest exact repr (PostgreSQL reads it back to the same double)."""

    def field(v: Any) -> str:
        if v is None:
            return "\\N"
        if isinstance(v, bool):
            return "t" if v else "f"
        if isinstance(v, float):
            return repr(v)
        return str(v).translate(_COPY_ESCAPES)

    return "".join("\t".join(field(v) for v in row) + "\n" for row in rows)


def sqlite_dialect(path: str) -> Dialect:
    def connect():  # autocommit off: each call below is one transaction, committed or rolled back
        db = sqlite3.connect(path, timeout=30)
        db.execute("PRAGMA foreign_keys = ON")
        return db

    return Dialect("sqlite", connect, (sqlite3.Error,), (sqlite3.IntegrityError, sqlite3.DataError))


def postgres_dialect(dsn: str) -> Dialect | None:
    try:
        import psycopg2
    except ImportError:  # MLflow then reaches the database through whatever driver it has
        return None
    return Dialect("postgresql", lambda: psycopg2.connect(dsn), (psycopg2.Error,),
                   (psycopg2.IntegrityError, psycopg2.DataError))


def dialect_of(uri: str) -> Dialect | None:
    """For sqlite:///FILE (an existing file) and postgresql[+psycopg2]://...; None otherwise."""
    if uri.startswith("sqlite:///"):
        path = uri.removeprefix("sqlite:///")
        return sqlite_dialect(path) if Path(path).is_file() else None
    scheme, sep, rest = uri.partition("://")
    if sep and scheme in ("postgresql", "postgresql+psycopg2", "postgres"):
        return postgres_dialect(f"postgresql://{rest}")  # libpq reads the URI, options included
    return None


class SqlWrites:
    """log_batch, set_terminated and create_run on a SQLite or PostgreSQL MLflow store, one
    connection per thread (the driver's and the tracker's writer thread), each call its own
    transaction."""

    def __init__(self, dialect: Dialect, client: Any) -> None:
        self.dialect, self.client = dialect, client
        self.local = threading.local()
        self.artifact_roots: dict[str, str] = {}  # experiment id -> its artifact location

    @classmethod
    def of(cls, client: Any, uri: str) -> SqlWrites | None:
        """For a store this writer can reach whose tables it knows; None otherwise."""
        dialect = dialect_of(uri)
        if dialect is None:
            return None
        writes = cls(dialect, client)
        try:
            db = writes._db()
            found = {table: dialect.columns(db, table) for table in SCHEMA}
            db.rollback()  # PostgreSQL: the reads above opened a transaction
        except dialect.errors:
            writes.close()
            return None
        return writes if found == SCHEMA else None

    def _db(self) -> Any:
        db = getattr(self.local, "db", None)
        if db is None or getattr(db, "closed", 0):  # a PostgreSQL connection the server dropped: anew
            db = self.local.db = self.dialect.connect()
        return db

    def close(self) -> None:
        """This thread's connection."""
        db = getattr(self.local, "db", None)
        if db is not None:
            db.close()
            self.local.db = None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Any]:
        """This thread's connection, in one transaction: committed, or rolled back on any error."""
        db = self._db()
        try:
            with db:
                yield db
        except self.dialect.refusals as err:
            raise MlflowException(f"the store refused the write: {err}", INVALID_PARAMETER_VALUE) from err

    def experiment_name(self, experiment_id: str) -> str | None:
        db = self._db()
        with db:
            row = self.dialect.run(db, "SELECT name FROM experiments WHERE experiment_id = ?",
                                   (int(experiment_id),)).fetchone()
        return row[0] if row else None

    def _active(self, db: Any, run_id: str) -> None:
        row = self.dialect.run(db, "SELECT lifecycle_stage FROM runs WHERE run_uuid = ?", (run_id,)).fetchone()
        if row is None:
            raise MlflowException(f"Run with id={run_id} not found", RESOURCE_DOES_NOT_EXIST)
        if row[0] != "active":
            raise MlflowException(f"The run {run_id} must be in the 'active' state. Current state is {row[0]}.",
                                  INVALID_PARAMETER_VALUE)

    def create_run(self, experiment_id: str, tags: dict[str, str], name: str) -> Run:
        if experiment_id not in self.artifact_roots:  # once per experiment, through MLflow
            self.artifact_roots[experiment_id] = self.client.get_experiment(experiment_id).artifact_location
        run_id = uuid.uuid4().hex
        artifact_uri = append_to_uri_path(self.artifact_roots[experiment_id], run_id, "artifacts")
        tags = {**tags, MLFLOW_RUN_NAME: tags.get(MLFLOW_RUN_NAME, name)}
        user, start = tags.get(MLFLOW_USER, "unknown"), int(time.time() * 1000)
        d = self.dialect
        with self._transaction() as db:
            d.run(db, "INSERT INTO runs (run_uuid, name, source_type, source_name, entry_point_name, user_id, "
                      "status, start_time, end_time, source_version, lifecycle_stage, artifact_uri, experiment_id, "
                      "deleted_time) VALUES (?, ?, 'UNKNOWN', '', '', ?, 'RUNNING', ?, NULL, '', 'active', ?, ?, "
                      "NULL)", (run_id, name, user, start, artifact_uri, int(experiment_id)))
            d.many(db, "INSERT INTO tags (key, value, run_uuid)", [(k, v, run_id) for k, v in tags.items()])
        info = RunInfo(run_id=run_id, experiment_id=str(experiment_id), user_id=user, status="RUNNING",
                       start_time=start, end_time=None, lifecycle_stage="active", artifact_uri=artifact_uri,
                       run_name=name)
        return Run(info, RunData(tags=[RunTag(k, v) for k, v in tags.items()]))

    def log_batch(self, run_id: str, metrics=(), params=(), tags=()) -> None:
        """metrics as (key, value, timestamp ms, step); params and tags as MLflow's Param, RunTag."""
        rows = {}
        for key, value, timestamp, step in metrics:
            value = float(value)
            nan = math.isnan(value)
            value = 0.0 if nan else math.copysign(MAX_FLOAT, value) if math.isinf(value) else value
            rows[(key, value, int(timestamp), int(step), nan)] = None  # a repeat is one row, as in MLflow
        d = self.dialect
        with self._transaction() as db:
            self._active(db, run_id)
            if params:
                had = dict(d.run(db, "SELECT key, value FROM params WHERE run_uuid = ?", (run_id,)).fetchall())
                changed = [p.key for p in params if p.key in had and had[p.key] != p.value]
                if changed:
                    raise MlflowException(f"Changing param values is not allowed. Params {changed} were already "
                                          f"logged with other values for run ID='{run_id}'.", INVALID_PARAMETER_VALUE)
                new = {p.key: p.value for p in params if p.key not in had}
                d.many(db, "INSERT INTO params (key, value, run_uuid)", [(k, v, run_id) for k, v in new.items()])
            if rows:
                d.insert_new(db, "metrics", ("key", "value", "timestamp", "step", "is_nan", "run_uuid"),
                             [(*r, run_id) for r in rows])
                self._latest(db, run_id, list(rows))
            if tags:  # a tag set twice keeps its last value, as in MLflow
                last = {t.key: t.value for t in tags}
                d.many(db, "INSERT INTO tags (key, value, run_uuid)", [(k, v, run_id) for k, v in last.items()],
                       "ON CONFLICT (key, run_uuid) DO UPDATE SET value = excluded.value")

    def _latest(self, db: Any, run_id: str, rows: list[tuple]) -> None:
        """latest_metrics: per key the point of the largest (step, timestamp, value), as MLflow keeps it."""
        best = {r[0]: r for r in self.dialect.run(db, "SELECT key, value, timestamp, step, is_nan FROM "
                                                      "latest_metrics WHERE run_uuid = ?", (run_id,)).fetchall()}
        new = {}
        for key, value, timestamp, step, nan in rows:
            cur = new.get(key) or best.get(key)
            if cur is None or (step, timestamp, value) > (cur[3], cur[2], cur[1]):
                new[key] = (key, value, timestamp, step, bool(nan))
        self.dialect.many(db, "INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid)",
                          [(*r, run_id) for r in new.values()],
                          "ON CONFLICT (key, run_uuid) DO UPDATE SET value = excluded.value, timestamp = "
                          "excluded.timestamp, step = excluded.step, is_nan = excluded.is_nan")

    def set_terminated(self, run_id: str, status: str, end_time: int) -> None:
        with self._transaction() as db:
            self._active(db, run_id)
            self.dialect.run(db, "UPDATE runs SET status = ?, end_time = ? WHERE run_uuid = ?",
                             (status, end_time, run_id))
