"""How the hot writes of runs (create, log_batch, terminate) reach an MLflow store: one interface,
`Writes`, and three ways that implement it. The tracker holds one, chosen once (`choose_writes`).

- `ClientWrites`: through MlflowClient, to any store MLflow can write. The reference the other two
  are tested against (tests/unit/test_sql_writes.py writes the same runs both ways and compares
  everything MLflow reads back).
- `RestWrites` (rest_writes.py): to a tracking server, MLflow's REST API as plain JSON.
- `SqlWrites` (sql_writes.py): into a SQLite or PostgreSQL store, MLflow's own rows as plain SQL,
  queued as data so that the writes queued since a writer's last turn go out in one transaction.

What every implementation guarantees:
- The calls (`create_run`, `log_batch`, `set_terminated`) write at once and raise MlflowException
  as MlflowClient would, so the write queue (queue.py) tells a refusal from a lost connection.
- The queued forms (`queued_create`, `queued_batch`, `queued_end`) are what waits in a write lane:
  a `Call` to make later, or an `Op` (data) that `send` writes with the ops queued beside it.
- `points_sent` counts the evaluation points the store accepted (bench_driver_scale.py reads it).
- `lanes` is how many writer connections may write at once without reordering one run's writes.

Why not always MlflowClient: for a short run its calls cost more CPU than the rest of the driver
(bench_tiny_runs.py, bench_driver_scale.py). The faster two are used only on the MLflow releases
they were tested with (versions.py) and only when the store is one they know; else MlflowClient.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any, Protocol

from mlflow.entities import Metric, Run
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.tracking import MlflowClient

from orchestrator.store.queue import Call, Op
from orchestrator.study import redact_url

log = logging.getLogger(__name__)


def evaluation_points(metrics) -> int:
    """The points of a batch that are evaluations: final metrics are logged at step 0."""
    return sum(m[3] > 0 for m in metrics)


class Writes(Protocol):
    lanes: int
    points_sent: int

    def create_run(self, experiment_id: str, tags: dict[str, str], name: str) -> Run: ...

    def log_batch(self, run_id: str, metrics=(), params=(), tags=()) -> None:
        """Metrics as (key, value, timestamp ms, step); params and tags as MLflow's entities."""

    def set_terminated(self, run_id: str, status: str, end_time: int) -> None: ...

    def queued_create(self, experiment_id: str, tags: dict[str, str], name: str) -> tuple[Run, Op | None]:
        """The run, and the write that still has to make it (None: made already)."""

    def queued_batch(self, run_id: str, metrics=(), params=(), tags=()) -> Op | Call: ...

    def queued_end(self, run_id: str, status: str, end_time: int) -> Op | Call: ...

    def send(self, data: Sequence[Any]) -> None:
        """The data of queued `Op`s, in one transaction."""


class CallWrites:
    """The queued forms for writes made one call at a time: each waits in its lane as a `Call`."""

    lanes = 1

    def __init__(self) -> None:
        self.points_sent = 0
        self._counting = threading.Lock()  # the lanes' threads count into one number

    def _log_counted(self, run_id: str, metrics, params, tags) -> None:
        self.log_batch(run_id, metrics, params, tags)
        with self._counting:
            self.points_sent += evaluation_points(metrics)

    def queued_create(self, experiment_id: str, tags: dict[str, str], name: str) -> tuple[Run, Op | None]:
        return self.create_run(experiment_id, tags, name), None

    def queued_batch(self, run_id: str, metrics=(), params=(), tags=()) -> Op | Call:
        return Call(lambda: self._log_counted(run_id, metrics, params, tags), "log_batch", run_id)

    def queued_end(self, run_id: str, status: str, end_time: int) -> Op | Call:
        return Call(lambda: self.set_terminated(run_id, status, end_time), "set_terminated", run_id)

    def send(self, data: Sequence[Any]) -> None:
        raise MlflowException(f"{type(self).__name__} queues no data to send", INVALID_PARAMETER_VALUE)


class ClientWrites(CallWrites):
    """The writes through MlflowClient: any store MLflow can write, on any MLflow release."""

    def __init__(self, client: MlflowClient) -> None:
        super().__init__()
        self.client = client

    def create_run(self, experiment_id: str, tags: dict[str, str], name: str) -> Run:
        return self.client.create_run(experiment_id, tags=tags, run_name=name)

    def log_batch(self, run_id: str, metrics=(), params=(), tags=()) -> None:
        self.client.log_batch(
            run_id, metrics=[Metric(*m) for m in metrics], params=list(params), tags=list(tags)
        )

    def set_terminated(self, run_id: str, status: str, end_time: int) -> None:
        self.client.set_terminated(run_id, status, end_time=end_time)


def choose_writes(
    client: MlflowClient, uri: str, database: str | None, fast: bool, experiment: tuple[str, str]
) -> Writes:
    """The study's writes, once its store and its experiment (id, name) exist:
    - `fast` off (an MLflow release the fast paths were not tested with): MlflowClient;
    - a SQLite or PostgreSQL tracking URI of a schema SqlWrites knows: plain SQL;
    - a tracking server: plain SQL into its backend database when `database` names one of a
      schema SqlWrites knows, else plain JSON to its REST API. That database must hold the
      experiment under the id the server gave it: else it is not the server's, and writing there
      would put the runs where the server never shows them (MlflowException);
    - anything else: MlflowClient."""
    from orchestrator.store.rest_writes import RestWrites
    from orchestrator.store.sql_writes import SqlWrites

    if not fast:
        return ClientWrites(client)
    if database is not None:
        sql = SqlWrites.of(client, database)
        if sql is None:
            log.warning(
                "tracking.database: %s is not an MLflow store of a schema grokscale knows; runs are "
                "written through the tracking server",
                redact_url(database),
            )
        elif sql.experiment_name(experiment[0]) != experiment[1]:
            raise MlflowException(
                f"tracking.database: {redact_url(database)} does not hold the experiment "
                f"{experiment[1]!r} (id {experiment[0]}) that the tracking server has: it is not the "
                f"server's backend store",
                INVALID_PARAMETER_VALUE,
            )
        else:
            return sql
    return SqlWrites.of(client, uri) or RestWrites.of(client, uri) or ClientWrites(client)
