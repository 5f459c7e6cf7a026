"""A run's hot writes (create, log_batch, terminate) into a SQLite MLflow store as plain SQL: the
rows MLflow's own SqlAlchemyStore writes, in one transaction a call, without its ORM.

Why: for a run of 0.1 s the MLflow calls were the driver's largest cost (issue 16). Profiled on
the 2-core machine (session 8), one run's calls through MlflowClient cost 30-40 ms of CPU, 75% of
it in SQLAlchemy's Python layer: 11 sessions a run, each with 3 PRAGMAs and the run read back.
The same rows as plain SQL cost about 4 ms. `RestWrites` (tracker.py) is the same idea for a
tracking server: MLflow's own REST API as plain JSON.

Safety: the rows are MLflow's, so MLflow (its UI, search, the report) reads them as its own;
`tests/unit/test_sql_writes.py` writes the same runs both ways and compares everything MLflow
gives back. The path is used only when the store's five run tables have exactly the columns this
writer knows (`SqlWrites.of`); a store of another MLflow schema gets MlflowClient, as before.
What MLflow checks and this writer keeps: a run must exist and be active; a param logged again
must keep its value (MlflowException, INVALID_PARAMETER_VALUE, which the write queue drops as
refused); NaN and infinite metrics are stored as MLflow stores them.
"""

from __future__ import annotations

import math
import sqlite3
import threading
import time
import uuid
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


class SqlWrites:
    """log_batch, set_terminated and create_run on a SQLite MLflow store, one connection per
    thread (the driver's and the tracker's writer thread), each call its own transaction."""

    def __init__(self, path: str, client: Any) -> None:
        self.path, self.client = path, client
        self.local = threading.local()
        self.artifact_roots: dict[str, str] = {}  # experiment id -> its artifact location

    @classmethod
    def of(cls, client: Any, uri: str) -> SqlWrites | None:
        """For a sqlite:/// URI whose store has the tables this writer knows; None otherwise."""
        if not uri.startswith("sqlite:///") or not Path(uri.removeprefix("sqlite:///")).is_file():
            return None
        writes = cls(uri.removeprefix("sqlite:///"), client)
        try:
            found = {table: {row[1] for row in writes._db().execute(f"PRAGMA table_info({table})")}
                     for table in SCHEMA}
        except sqlite3.Error:
            return None
        return writes if found == SCHEMA else None

    def _db(self) -> sqlite3.Connection:
        db = getattr(self.local, "db", None)
        if db is None:  # autocommit off: each call below is one transaction, committed or rolled back
            db = sqlite3.connect(self.path, timeout=30)
            db.execute("PRAGMA foreign_keys = ON")
            self.local.db = db
        return db

    def _active(self, db: sqlite3.Connection, run_id: str) -> None:
        row = db.execute("SELECT lifecycle_stage FROM runs WHERE run_uuid = ?", (run_id,)).fetchone()
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
        db = self._db()
        with db:
            db.execute("INSERT INTO runs (run_uuid, name, source_type, source_name, entry_point_name, user_id, "
                       "status, start_time, end_time, source_version, lifecycle_stage, artifact_uri, experiment_id, "
                       "deleted_time) VALUES (?, ?, 'UNKNOWN', '', '', ?, 'RUNNING', ?, NULL, '', 'active', ?, ?, "
                       "NULL)", (run_id, name, user, start, artifact_uri, int(experiment_id)))
            db.executemany("INSERT INTO tags (key, value, run_uuid) VALUES (?, ?, ?)",
                           [(k, v, run_id) for k, v in tags.items()])
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
            rows[(key, value, int(timestamp), int(step), int(nan))] = None  # a repeat is one row, as in MLflow
        db = self._db()
        with db:
            self._active(db, run_id)
            if params:
                had = dict(db.execute("SELECT key, value FROM params WHERE run_uuid = ?", (run_id,)).fetchall())
                changed = [p.key for p in params if p.key in had and had[p.key] != p.value]
                if changed:
                    raise MlflowException(f"Changing param values is not allowed. Params {changed} were already "
                                          f"logged with other values for run ID='{run_id}'.", INVALID_PARAMETER_VALUE)
                db.executemany("INSERT INTO params (key, value, run_uuid) VALUES (?, ?, ?)",
                               [(p.key, p.value, run_id) for p in params if p.key not in had])
            if rows:
                db.executemany("INSERT OR IGNORE INTO metrics (key, value, timestamp, step, is_nan, run_uuid) "
                               "VALUES (?, ?, ?, ?, ?, ?)", [(*r, run_id) for r in rows])
                self._latest(db, run_id, list(rows))
            if tags:
                db.executemany("INSERT OR REPLACE INTO tags (key, value, run_uuid) VALUES (?, ?, ?)",
                               [(t.key, t.value, run_id) for t in tags])

    @staticmethod
    def _latest(db: sqlite3.Connection, run_id: str, rows: list[tuple]) -> None:
        """latest_metrics: per key the point of the largest (step, timestamp, value), as MLflow keeps it."""
        best = {r[0]: r for r in db.execute("SELECT key, value, timestamp, step, is_nan FROM latest_metrics "
                                            "WHERE run_uuid = ?", (run_id,))}
        new = {}
        for key, value, timestamp, step, nan in rows:
            cur = new.get(key) or best.get(key)
            if cur is None or (step, timestamp, value) > (cur[3], cur[2], cur[1]):
                new[key] = (key, value, timestamp, step, nan)
        db.executemany("INSERT OR REPLACE INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid) "
                       "VALUES (?, ?, ?, ?, ?, ?)", [(*r, run_id) for r in new.values()])

    def set_terminated(self, run_id: str, status: str, end_time: int) -> None:
        db = self._db()
        with db:
            self._active(db, run_id)
            db.execute("UPDATE runs SET status = ?, end_time = ? WHERE run_uuid = ?", (status, end_time, run_id))
