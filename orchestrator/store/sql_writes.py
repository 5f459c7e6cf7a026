"""Runs' hot writes (create, log_batch, terminate) into a SQLite or PostgreSQL MLflow store as
plain SQL: the rows MLflow's own SqlAlchemyStore writes, without its ORM, and the writes of many
runs in one transaction (`SqlWrites.apply`).

Why: for a short run MLflow's calls through MlflowClient cost more CPU than the rest of the
driver, most of it in SQLAlchemy's Python layer (sessions, PRAGMAs, each run read back); the same
rows as plain SQL cost a small fraction (bench_tiny_runs.py measures both). `RestWrites`
(rest_writes.py) is the same idea for a tracking server: MLflow's own REST API as plain JSON.
PostgreSQL (`tracking.uri: postgresql://...`, the database behind a lab's `mlflow server`): the
same rows through psycopg2, a batch's points by COPY; a driver that may reach the database writes
to it directly (bench_driver_scale.py --store database) and the server still serves the UI.

Safety, each checked by tests/unit/test_sql_writes.py (which writes the same runs both ways and
compares everything MLflow gives back, on every MLflow release `make test-compat` installs):
- The rows are MLflow's, so MLflow (its UI, search, the report) reads them as its own.
- The path is used only on MLflow releases it was tested with (versions.py) and only when the
  store's five run tables have exactly the columns this writer knows (`SqlWrites.of`); else
  MlflowClient writes.
- What MLflow checks, this writer checks the same way, raising MlflowException as MLflow does
  (INVALID_PARAMETER_VALUE, a refusal the write queue does not retry): a metric, param or tag
  name or a metric value MLflow refuses (keys.check_batch, MLflow's own validation); a run that is not
  there or not active; a param logged again with another value; a row the database refuses.
- NaN and infinite metrics are stored as MLflow stores them.
The two dialects differ only in placeholders, bulk inserts and how a table's columns are listed
(`Dialect`); the SQL is the upsert both speak.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import math
import sqlite3
import struct
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

from orchestrator.store.keys import check_batch, metric_value
from orchestrator.store.queue import Op
from orchestrator.store.writes import evaluation_points

# The columns of the tables written, as MLflow 2.16 to 3.17 create them.
SCHEMA = {
    "runs": {
        "run_uuid",
        "name",
        "source_type",
        "source_name",
        "entry_point_name",
        "user_id",
        "status",
        "start_time",
        "end_time",
        "source_version",
        "lifecycle_stage",
        "artifact_uri",
        "experiment_id",
        "deleted_time",
    },
    "tags": {"key", "value", "run_uuid"},
    "params": {"key", "value", "run_uuid"},
    "metrics": {"key", "value", "timestamp", "run_uuid", "step", "is_nan"},
    "latest_metrics": {"key", "value", "timestamp", "step", "is_nan", "run_uuid"},
}
MAX_FLOAT = 1.7976931348623157e308  # MLflow stores +-inf as +-the largest double
POSTGRES_LANES = 2
SELECT_CHUNK = 500  # keys in one IN (...): SQLite allows 32,766 variables, older builds 999


@dataclass(frozen=True)
class Dialect:
    """What differs between the two databases: how to connect, placeholders, a bulk insert, and
    how a table's columns are listed."""

    name: str
    connect: Callable[[], Any]
    errors: tuple[type[Exception], ...]  # the driver's errors: a store it cannot read is not one it knows
    # Errors about the row itself (a value longer than its column, a broken constraint): the same
    # write would fail again, so it is refused as MLflow refuses it. The write queue retries only
    # a lost connection (queue.transient: the database away, a locked SQLite file).
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

    def each(self, db: Any, text: str, rows: list[tuple]) -> None:
        """One statement once per row, in one round trip on PostgreSQL (psycopg2's executemany
        is one a row)."""
        if not rows:
            return
        if self.name == "sqlite":
            db.executemany(text, rows)
        else:
            from psycopg2.extras import execute_batch

            execute_batch(db.cursor(), self.sql(text), rows, page_size=1000)

    def select_in(self, db: Any, head: str, keys: set[str]) -> list[tuple]:
        """`head` IN (keys): the rows, in chunks of SELECT_CHUNK keys."""
        out: list[tuple] = []
        keys_list = sorted(keys)
        for i in range(0, len(keys_list), SELECT_CHUNK):
            chunk = keys_list[i : i + SELECT_CHUNK]
            out += self.run(db, f"{head} IN ({', '.join('?' * len(chunk))})", chunk).fetchall()
        return out

    def insert_new(
        self,
        db: Any,
        table: str,
        columns: Sequence[str],
        rows: list[tuple],
        encode: Callable[[list[tuple]], str | bytes] | None = None,
    ) -> None:
        """The rows not in `table` yet (a row there already is a retried batch's). PostgreSQL: COPY,
        several times cheaper a row for the server than an INSERT of a VALUES list, in a
        savepoint; only when a row is there already does the INSERT ... ON CONFLICT run instead.
        `encode`: the rows as COPY's input, text (copy_text, the default) or binary (bytes)."""
        head = f"INSERT INTO {table} ({', '.join(columns)})"
        if self.name == "sqlite" or not rows:
            return self.many(db, head, rows, "ON CONFLICT DO NOTHING")
        import psycopg2.errors

        payload = (encode or copy_text)(rows)
        binary = isinstance(payload, bytes)
        cur = db.cursor()
        cur.execute("SAVEPOINT bulk")
        try:
            cur.copy_expert(
                f"COPY {table} ({', '.join(columns)}) FROM STDIN" + (" (FORMAT binary)" if binary else ""),
                io.BytesIO(payload) if binary else io.StringIO(payload),
            )
        except psycopg2.errors.UniqueViolation:
            cur.execute("ROLLBACK TO SAVEPOINT bulk")
            self.many(db, head, rows, "ON CONFLICT DO NOTHING")
        else:
            cur.execute("RELEASE SAVEPOINT bulk")

    def column_types(self, db: Any, table: str) -> dict[str, str]:
        """Column -> its declared type (SQLite) or data_type (PostgreSQL)."""
        if self.name == "sqlite":
            return {row[1]: row[2] for row in db.execute(f"PRAGMA table_info({table})")}
        cur = self.run(
            db,
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = "
            "current_schema() AND table_name = ?",
            (table,),
        )
        return dict(cur.fetchall())


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_field(v: Any) -> str:
    if v is None:
        return "\\N"
    if isinstance(v, bool):
        return "t" if v else "f"
    if isinstance(v, float):
        return repr(v)
    return str(v).translate(_COPY_ESCAPES)


def copy_text(rows: list[tuple]) -> str:
    """Rows in COPY's text format: tab-separated, NULL as \\N, booleans t/f, floats as Python's
    shortest exact repr (PostgreSQL reads it back to the same double). Each distinct value is
    formatted once but floats: a batch repeats its keys, run ids, steps and timestamps."""
    memo: dict[tuple[type, Any], str] = {}

    def field(v: Any) -> str:
        if type(v) is float:  # mostly distinct; and -0.0 == 0.0 would share a memo entry
            return repr(v)
        k = (type(v), v)  # the type too: True == 1 formats differently
        s = memo.get(k)
        if s is None:
            s = memo[k] = _copy_field(v)
        return s

    return "".join("\t".join([field(v) for v in row]) + "\n" for row in rows)


METRIC_COLUMNS = ("key", "value", "timestamp", "step", "is_nan", "run_uuid")
# The PostgreSQL types of MLflow's metrics table that metric_copy_binary writes; another schema's
# (a store it does not know) gets the text format, which PostgreSQL converts.
METRIC_TYPES = {
    "key": "character varying",
    "value": "double precision",
    "timestamp": "bigint",
    "step": "bigint",
    "is_nan": "boolean",
    "run_uuid": "character varying",
}
_BINARY_HEAD = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)  # signature, flags, no extension
_BINARY_FIELDS = struct.pack(">h", len(METRIC_COLUMNS))  # a row's start: how many fields
_BINARY_NUMBERS = struct.Struct(">idiqiqi?")  # value (float8), timestamp, step (int8), is_nan (bool)


def _binary_text(s: str) -> bytes:
    raw = s.encode()
    return struct.pack(">i", len(raw)) + raw


def metric_copy_binary(rows: list[tuple]) -> bytes:
    """Metric rows (key, value, timestamp, step, is_nan, run id) in COPY's binary format: each
    field its length and its bytes, numbers as big-endian IEEE doubles and int8. A sixth of the
    client's CPU of the text format (floats are not printed); the same for the server, whose
    time goes to the table's indexes (bench_driver_scale.py --store database)."""
    keys: dict[str, bytes] = {}  # a key and a run id are each encoded once a call
    runs: dict[str, bytes] = {}
    out = [_BINARY_HEAD]
    pack = _BINARY_NUMBERS.pack
    for key, value, timestamp, step, nan, run_id in rows:
        k = keys.get(key) or keys.setdefault(key, _BINARY_FIELDS + _binary_text(key))
        r = runs.get(run_id) or runs.setdefault(run_id, _binary_text(run_id))
        out += (k, pack(8, value, 8, timestamp, 8, step, 1, nan), r)
    out.append(struct.pack(">h", -1))
    return b"".join(out)


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
    return Dialect(
        "postgresql",
        lambda: psycopg2.connect(dsn),
        (psycopg2.Error,),
        (psycopg2.IntegrityError, psycopg2.DataError),
    )


def dialect_of(uri: str) -> Dialect | None:
    """For sqlite:///FILE (an existing file) and postgresql[+psycopg2]://...; None otherwise."""
    if uri.startswith("sqlite:///"):
        path = uri.removeprefix("sqlite:///")
        return sqlite_dialect(path) if Path(path).is_file() else None
    scheme, sep, rest = uri.partition("://")
    if sep and scheme in ("postgresql", "postgresql+psycopg2", "postgres"):
        return postgres_dialect(f"postgresql://{rest}")  # libpq reads the URI, options included
    return None


def run_info(run_id: str, **fields: Any) -> RunInfo:
    """A RunInfo on any MLflow this writer knows: 2.x requires the id as `run_uuid` too, 3.x has
    no such argument."""
    if "run_uuid" in inspect.signature(RunInfo.__init__).parameters:
        fields["run_uuid"] = run_id
    return RunInfo(run_id=run_id, **fields)


@dataclass(frozen=True)
class NewRun:
    """A run's row and its first tags (its id is made here, so the write can wait in a queue)."""

    run_id: str
    experiment_id: str
    name: str
    user: str
    start_time: int
    artifact_uri: str
    tags: dict[str, str]


@dataclass(frozen=True)
class RunBatch:
    """log_batch: metrics as (key, value, timestamp ms, step); params and tags as MLflow's Param, RunTag."""

    run_id: str
    metrics: Sequence[tuple[str, float, int, int]] = ()
    params: Sequence[Any] = ()
    tags: Sequence[Any] = ()


@dataclass(frozen=True)
class RunEnd:
    run_id: str
    status: str
    end_time: int


RunWrite = NewRun | RunBatch | RunEnd


class SqlWrites:
    """The `Writes` (writes.py) of a SQLite or PostgreSQL MLflow store: runs' writes (`NewRun`,
    `RunBatch`, `RunEnd`) as data, any number of them in one transaction (`apply`). The tracker's
    writer thread sends every write queued since its last turn at once, so a turn costs a few
    statements whatever the number of runs (one transaction a run was the driver's largest cost at
    1,000 runs in flight). One connection per thread (the driver's and each writer thread's)."""

    def __init__(self, dialect: Dialect, client: Any) -> None:
        self.dialect, self.client = dialect, client
        self.local = threading.local()
        self.artifact_roots: dict[str, str] = {}  # experiment id -> its artifact location
        self.encode_metrics: Callable[[list[tuple]], str | bytes] = copy_text  # COPY's input (PostgreSQL)
        self.points_sent = 0
        self._counting = threading.Lock()  # the lanes' threads count into one number

    @property
    def lanes(self) -> int:
        """Connections writing runs' rows at once, each with its own runs: into PostgreSQL a second
        backend nearly doubles the points a second it ingests (bench_driver_scale.py --store
        database); a SQLite file takes one writer at a time."""
        return POSTGRES_LANES if self.dialect.name == "postgresql" else 1

    @classmethod
    def of(cls, client: Any, uri: str) -> SqlWrites | None:
        """For a store this writer can reach whose tables it knows; None otherwise."""
        dialect = dialect_of(uri)
        if dialect is None:
            return None
        writes = cls(dialect, client)
        try:
            db = writes._db()
            found = {table: dialect.column_types(db, table) for table in SCHEMA}
            db.rollback()  # PostgreSQL: the reads above opened a transaction
        except dialect.errors:
            writes.close()
            return None
        if {table: set(types) for table, types in found.items()} != SCHEMA:
            return None
        if dialect.name == "postgresql" and all(found["metrics"][c] == t for c, t in METRIC_TYPES.items()):
            writes.encode_metrics = metric_copy_binary
        return writes

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
            row = self.dialect.run(
                db, "SELECT name FROM experiments WHERE experiment_id = ?", (int(experiment_id),)
            ).fetchone()
        return row[0] if row else None

    # -- one write at a time: MlflowClient's calls --------------------------------------------
    def new_run(self, experiment_id: str, tags: dict[str, str], name: str) -> tuple[Run, NewRun]:
        """The run as MLflow would return it, and the write that makes it (not sent yet)."""
        if experiment_id not in self.artifact_roots:  # once per experiment, through MLflow
            self.artifact_roots[experiment_id] = self.client.get_experiment(experiment_id).artifact_location
        run_id = uuid.uuid4().hex
        artifact_uri = append_to_uri_path(self.artifact_roots[experiment_id], run_id, "artifacts")
        tags = {**tags, MLFLOW_RUN_NAME: tags.get(MLFLOW_RUN_NAME, name)}
        write = NewRun(
            run_id,
            str(experiment_id),
            name,
            tags.get(MLFLOW_USER, "unknown"),
            int(time.time() * 1000),
            artifact_uri,
            tags,
        )
        info = run_info(
            run_id,
            experiment_id=str(experiment_id),
            user_id=write.user,
            status="RUNNING",
            start_time=write.start_time,
            end_time=None,
            lifecycle_stage="active",
            artifact_uri=artifact_uri,
            run_name=name,
        )
        return Run(info, RunData(tags=[RunTag(k, v) for k, v in tags.items()])), write

    def create_run(self, experiment_id: str, tags: dict[str, str], name: str) -> Run:
        run, write = self.new_run(experiment_id, tags, name)
        self.apply([write])
        return run

    def log_batch(self, run_id: str, metrics=(), params=(), tags=()) -> None:
        self.apply([RunBatch(run_id, metrics, params, tags)])

    def set_terminated(self, run_id: str, status: str, end_time: int) -> None:
        self.apply([RunEnd(run_id, status, end_time)])

    # -- queued: as data, sent with the writes queued beside it ---------------------------------
    def queued_create(self, experiment_id: str, tags: dict[str, str], name: str) -> tuple[Run, Op]:
        run, write = self.new_run(experiment_id, tags, name)
        return run, Op(write)

    def queued_batch(self, run_id: str, metrics=(), params=(), tags=()) -> Op:
        return Op(RunBatch(run_id, metrics, params, tags))

    def queued_end(self, run_id: str, status: str, end_time: int) -> Op:
        return Op(RunEnd(run_id, status, end_time))

    def send(self, data: Sequence[RunWrite]) -> None:
        self.apply(data)
        points = sum(evaluation_points(w.metrics) for w in data if isinstance(w, RunBatch))
        with self._counting:
            self.points_sent += points

    # -- any number of writes, one transaction --------------------------------------------------
    def apply(self, writes: Sequence[RunWrite]) -> None:
        """The writes, in one transaction, with what they would make one after another: a tag set
        twice keeps its last value, a point logged twice is one row, latest_metrics keeps each
        key's largest (step, timestamp, value). What MLflow would refuse of any of them (a name
        or a metric value MLflow refuses, a run not found or not active, a param logged again
        with another value, a row the database refuses) refuses them all, as MlflowException; the
        write queue then sends them one by one, so only the refused one is dropped. A write sent
        again (its commit's answer lost) adds nothing twice: runs and points already there are
        left as they are."""
        d = self.dialect
        made = [w for w in writes if isinstance(w, NewRun)]
        batches = [w for w in writes if isinstance(w, RunBatch)]
        ends = {w.run_id: w for w in writes if isinstance(w, RunEnd)}  # the last end of a run counts
        tags: dict[tuple[str, str], str] = {}  # (run, key) -> its last value
        for w in made:
            check_batch(tags=[RunTag(k, v) for k, v in w.tags.items()])
            tags.update(((w.run_id, k), v) for k, v in w.tags.items())
        points: dict[tuple, None] = {}  # (key, value, timestamp, step, is_nan, run): a repeat is one row
        for w in batches:
            check_batch(w.metrics, w.params, w.tags)
            for key, value, timestamp, step in w.metrics:
                if type(value) is not float:
                    value = metric_value(value)
                    if isinstance(value, str):
                        raise MlflowException(f"metric {key}: {value}", INVALID_PARAMETER_VALUE)
                nan = math.isnan(value)
                if nan:
                    value = 0.0
                elif math.isinf(value):
                    value = math.copysign(MAX_FLOAT, value)
                points[(key, value, int(timestamp), int(step), nan, w.run_id)] = None
            tags.update(((w.run_id, t.key), t.value) for t in w.tags)
        with self._transaction() as db:
            if made:  # ON CONFLICT: a create sent again finds its run there
                d.many(
                    db,
                    "INSERT INTO runs (run_uuid, name, source_type, source_name, entry_point_name, user_id, "
                    "status, start_time, end_time, source_version, lifecycle_stage, artifact_uri, "
                    "experiment_id, deleted_time)",
                    [
                        (
                            w.run_id,
                            w.name,
                            "UNKNOWN",
                            "",
                            "",
                            w.user,
                            "RUNNING",
                            w.start_time,
                            None,
                            "",
                            "active",
                            w.artifact_uri,
                            int(w.experiment_id),
                            None,
                        )
                        for w in made
                    ],
                    "ON CONFLICT DO NOTHING",
                )
            self._active(db, {w.run_id for w in batches} | set(ends))
            self._params(db, [w for w in batches if w.params])
            if points:
                d.insert_new(db, "metrics", METRIC_COLUMNS, list(points), self.encode_metrics)
                self._latest(db, points)
            d.many(
                db,
                "INSERT INTO tags (key, value, run_uuid)",
                [(k, v, r) for (r, k), v in tags.items()],
                "ON CONFLICT (key, run_uuid) DO UPDATE SET value = excluded.value",
            )
            d.each(
                db,
                "UPDATE runs SET status = ?, end_time = ? WHERE run_uuid = ?",
                [(w.status, w.end_time, w.run_id) for w in ends.values()],
            )

    def _active(self, db: Any, run_ids: set[str]) -> None:
        """Each run is there and active, or MlflowException as MLflow raises it."""
        stage = dict(
            self.dialect.select_in(db, "SELECT run_uuid, lifecycle_stage FROM runs WHERE run_uuid", run_ids)
        )
        for run_id in sorted(run_ids):
            if run_id not in stage:
                raise MlflowException(f"Run with id={run_id} not found", RESOURCE_DOES_NOT_EXIST)
            if stage[run_id] != "active":
                raise MlflowException(
                    f"The run {run_id} must be in the 'active' state. Current state is {stage[run_id]}.",
                    INVALID_PARAMETER_VALUE,
                )

    def _params(self, db: Any, batches: list[RunBatch]) -> None:
        """New params inserted; one logged again must keep its value, as in MLflow."""
        if not batches:
            return
        had: dict[tuple[str, str], str] = {
            (r, k): v
            for r, k, v in self.dialect.select_in(
                db, "SELECT run_uuid, key, value FROM params WHERE run_uuid", {w.run_id for w in batches}
            )
        }
        new: dict[tuple[str, str], str] = {}
        for w in batches:
            changed = [p.key for p in w.params if had.get((w.run_id, p.key), p.value) != p.value]
            if changed:
                raise MlflowException(
                    f"Changing param values is not allowed. Params {changed} were already "
                    f"logged with other values for run ID='{w.run_id}'.",
                    INVALID_PARAMETER_VALUE,
                )
            mine = {(w.run_id, p.key): p.value for p in w.params if (w.run_id, p.key) not in had}
            new.update(mine)
            had.update(mine)
        self.dialect.many(
            db, "INSERT INTO params (key, value, run_uuid)", [(k, v, r) for (r, k), v in new.items()]
        )

    def _latest(self, db: Any, points: dict[tuple, None]) -> None:
        """latest_metrics: per run and key the point of the largest (step, timestamp, value), as
        MLflow keeps it; the comparison with the stored one is the upsert's own condition."""
        best: dict[tuple[str, str], tuple] = {}
        for p in points:
            key, value, timestamp, step, _, run_id = p
            cur = best.get((run_id, key))
            if cur is None or (step, timestamp, value) > (cur[3], cur[2], cur[1]):
                best[(run_id, key)] = p
        self.dialect.many(
            db,
            "INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid)",
            list(best.values()),
            "ON CONFLICT (key, run_uuid) DO UPDATE SET value = excluded.value, timestamp = "
            "excluded.timestamp, step = excluded.step, is_nan = excluded.is_nan WHERE (excluded.step, "
            "excluded.timestamp, excluded.value) > (latest_metrics.step, latest_metrics.timestamp, "
            "latest_metrics.value)",
        )
