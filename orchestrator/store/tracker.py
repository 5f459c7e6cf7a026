"""All MLflow I/O. Only the driver calls this, so one process writes the store.

Layout: experiment = study; one parent run for the study; one child run per training run
(an Optuna trial under one seed), found again on resume by its run key tag (`names.TAG_RUN_KEY`).
Writes go through a `WriteQueue`: kept in order and retried while the server is away. In a
study the driver hands them to a writer thread (`start_writer`), so its loop never waits on the
server; evaluations are buffered per run and sent in batches of up to MLFLOW_BATCH metrics, a
run's live curve at most LIVE_S behind (issue 16: one batch per run per tick was the driver's
bottleneck at 1,000 runs in flight). Against a tracking server, batches and run updates go as
plain JSON to MLflow's REST API (`RestWrites`): MlflowClient's protobuf-to-JSON conversion and
per-request header providers cost about 0.2 ms per metric point, more than the rest of the driver.
A SQLite store is switched to write-ahead logging (`use_wal`): each MLflow call commits, and in
SQLite's default rollback journal a commit syncs the file several times; in WAL one sync per
commit, as durable (synchronous stays FULL). Measured (session 8: a run's writes as the driver
makes them, the modes interleaved over 15-20 rounds on the loaded 2-core machine, medians): wall
time per run on the writer thread 60 -> 44 ms and 137 -> 67 ms in two sessions of measuring, CPU
53 -> 38 ms and 42 -> 39 ms. Into such a store the hot writes go as plain SQL (`SqlWrites`,
sql_writes.py): one run's create, batches and end cost 22 ms of CPU through MlflowClient and
1.2 ms so (50 points, medians of 20 runs, loaded), and the driver's CPU per tiny run fell from
65 to 13 ms (bench_tiny_runs.py, 200 runs, loaded). There the writes are queued as data (`Op`)
and everything queued since the writer's last turn goes as one transaction, a run's create
included (its id is made here): at 1,000 runs in flight, one transaction a write was the
largest part of the driver's time (issue 16, session 10).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import os
import sqlite3
import subprocess
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
import yaml
from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException, RestException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.tracking import MlflowClient

from orchestrator.store import names
from orchestrator.store.names import RunStatus, tag_equals
from orchestrator.store.queue import Op, WriteLane, WriteQueue, answer
from orchestrator.store.redact import scrub, scrub_text, secrets_in
from orchestrator.store.results import all_runs
from orchestrator.store.sql_writes import RunBatch, RunEnd, RunWrite, SqlWrites
from orchestrator.study import Study, redact_url
from orchestrator.study.preflight import network_filesystem, sqlite_path

log = logging.getLogger(__name__)

PACKAGES = ("grokscale", "torch", "ray", "optuna", "mlflow", "numpy", "scipy", "pydantic")
# MLflow's HTTP client retries a request 7 times with backoff factor 2 and a 120 s timeout, so
# one write to a server that is down holds the driver for minutes. The WriteQueue keeps failed
# writes and tries again itself, so each request gives up in seconds instead (unless the user
# chose these settings).
HTTP_FAIL_FAST = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                  "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
MLFLOW_BATCH = 1000  # MLflow's limit of metrics in one log_batch
LIVE_S = 2.0  # a run's buffered evaluations are sent once this old (or a whole batch, or at its end)
# Connections writing runs' rows into a PostgreSQL store at once, each with its own runs: one
# PostgreSQL backend ingests ~67,000 points/s on this machine's cores, two ~110,000 (session 10,
# 4M points as the driver sends them). A SQLite file takes one writer at a time: one lane.
SQL_LANES = 2


class RestWrites:
    """log_batch and update_run against a tracking server, as JSON bodies on one HTTP session,
    with the client's own credentials and request headers (resolved once)."""

    def __init__(self, uri: str, creds: Any) -> None:
        from mlflow.tracking.request_header.registry import resolve_request_headers

        self.base = uri.rstrip("/") + "/api/2.0/mlflow/"
        self.session = requests.Session()
        self.session.headers.update(resolve_request_headers())
        if creds.username and creds.password:
            self.session.auth = (creds.username, creds.password)
        elif creds.token:
            self.session.headers["Authorization"] = f"Bearer {creds.token}"
        self.session.verify = False if creds.ignore_tls_verification else (creds.server_cert_path or True)
        if creds.client_cert_path:
            self.session.cert = creds.client_cert_path
        self.timeout = float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", "20"))

    @classmethod
    def of(cls, client: MlflowClient, uri: str) -> RestWrites | None:
        """For an http(s) tracking URI whose client speaks plain REST; None otherwise."""
        store = getattr(getattr(client, "_tracking_client", None), "store", None)
        get_creds = getattr(store, "get_host_creds", None)
        if not uri.startswith(("http://", "https://")) or get_creds is None:
            return None
        creds = get_creds()
        return None if getattr(creds, "use_databricks_sdk", False) else cls(uri, creds)

    def _post(self, endpoint: str, body: dict) -> dict:
        r = self.session.post(self.base + endpoint, json=body, timeout=self.timeout)
        try:
            answer = r.json()
        except ValueError:
            raise MlflowException(f"{endpoint}: HTTP {r.status_code}: {r.text[:500]}") from None
        if r.status_code != 200:
            raise RestException(answer)  # its error code gives the HTTP status `refused` reads
        return answer

    def log_batch(self, run_id: str, metrics=(), params=(), tags=()) -> None:
        self._post("runs/log-batch", {
            "run_id": run_id,
            "metrics": [{"key": k, "value": v, "timestamp": t, "step": s} for k, v, t, s in metrics],
            "params": [{"key": p.key, "value": p.value} for p in params],
            "tags": [{"key": t.key, "value": t.value} for t in tags]})

    def set_terminated(self, run_id: str, status: str, end_time: int) -> None:
        self._post("runs/update", {"run_id": run_id, "status": status, "end_time": end_time})

    def create_run(self, experiment_id: str, tags: dict[str, str], name: str) -> Run:
        from google.protobuf.json_format import ParseDict
        from mlflow.protos.service_pb2 import CreateRun

        answer = self._post("runs/create", {
            "experiment_id": experiment_id, "start_time": int(time.time() * 1000), "run_name": name,
            "tags": [{"key": k, "value": v} for k, v in tags.items()]})
        return Run.from_proto(ParseDict(answer, CreateRun.Response(), ignore_unknown_fields=True).run)


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):  # not installed: not listed
            out[name] = importlib.metadata.version(name)
    return out


def use_wal(uri: str) -> str | None:
    """Put a SQLite store on a local disk in write-ahead-log mode (kept in the file: the UI and
    every later client read it so); the mode it is in afterwards, None for another store. WAL
    needs a local file system (its readers share memory): on a network one the store keeps its
    rollback journal (preflight refuses a study's store there: keep it behind `mlflow server`)."""
    path = sqlite_path(uri) if uri.startswith("sqlite:///") else None
    if path is None or network_filesystem(Path(path)):
        return None
    with contextlib.closing(sqlite3.connect(path, timeout=30)) as db:
        return str(db.execute("PRAGMA journal_mode=WAL").fetchone()[0])


class Tracker:
    def __init__(self, study: Study, client: MlflowClient | None = None):
        self.study = study
        self.secrets = secrets_in(study.model_dump(mode="json"))  # redacted wherever they turn up
        if study.tracking.uri.startswith(("http://", "https://")):
            for name, value in HTTP_FAIL_FAST.items():
                os.environ.setdefault(name, value)
        self.client = client or MlflowClient(tracking_uri=study.tracking.uri)
        # The hot writes (create, log_batch, terminate) without MlflowClient's overhead: plain JSON to
        # a tracking server, plain SQL into a SQLite store of the schema it knows (set in `open`,
        # once MLflow has made the store's tables); else the client.
        self.direct: RestWrites | SqlWrites | None = RestWrites.of(self.client, study.tracking.uri)
        # One lane (queue and writer thread) per database connection; a run's writes all go by
        # one lane, in order. Several only into PostgreSQL (`_open`).
        self.lanes = [WriteLane(self._send_ops)]
        self.buffered: dict[str, list[tuple[str, float, int, int]]] = {}  # run id -> (key, value, ms, step)
        self.buffered_at: dict[str, float] = {}  # run id -> when its oldest buffered point came
        self.experiment_id = ""
        self.parent_id = ""
        self.logged: dict[str, set[int]] = {}  # run id -> steps logged, so none is ever logged twice
        # run key -> mlflow Run: runs of earlier attempts (found at open) and runs in flight; a
        # finished run's is dropped (a Run with its tags is kilobytes: O(runs in flight), not done)
        self.children: dict[str, Any] = {}
        self.key_of: dict[str, str] = {}  # run id -> run key, runs in flight
        self.points_sent = 0  # evaluation metric points the store accepted (bench_driver_scale.py)
        self.counting = threading.Lock()

    @property
    def queue(self) -> WriteQueue:
        """The first lane's queue: the only one but into PostgreSQL."""
        return self.lanes[0].queue

    @property
    def pending(self) -> list:
        """The writes still waiting for the store, oldest first in each lane."""
        return [w for lane in self.lanes for w in lane.queue.pending]

    @property
    def backlog(self) -> int:
        """How many writes wait for the store (`len(pending)`, without the copy)."""
        return sum(len(lane.queue.pending) for lane in self.lanes)

    def mark(self) -> tuple[int, ...]:
        """The writes made so far: `sent_through(mark)` says when they are all out."""
        return tuple(lane.written for lane in self.lanes)

    def sent_through(self, mark: tuple[int, ...]) -> bool:
        """Every write made before `mark` has been sent (or refused and dropped)."""
        return all(lane.sent_through(m) for lane, m in zip(self.lanes, mark, strict=True))

    def _write(self, fn: Callable[[], None] | Op, run_id: str | None = None) -> None:
        """A write, into the lane of its run (the first lane for writes of no one run)."""
        lanes = self.lanes
        lanes[zlib.crc32(run_id.encode()) % len(lanes) if run_id and len(lanes) > 1 else 0].put(fn)

    def start_writer(self) -> None:
        """From now on the writes go out on threads of their own (one a lane), in order, retried as before."""
        for lane in self.lanes:
            lane.start()

    def flush(self, force: bool = False) -> bool:
        """Buffered evaluations that are due become writes; with the writer threads, they send them."""
        now = time.monotonic()
        for run_id in [r for r, t in self.buffered_at.items() if force or now - t >= LIVE_S]:
            self._send_buffered(run_id)
        return all([lane.flush(force) for lane in self.lanes])

    def drain(self, timeout_s: float = 120.0) -> bool:
        for run_id in list(self.buffered):
            self._send_buffered(run_id)
        return all([lane.drain(timeout_s) for lane in self.lanes])

    def _write_batch(self, run_id: str, metrics=(), params=(), tags=()) -> None:
        """One log_batch, queued; metrics as (key, value, timestamp ms, step)."""
        if isinstance(self.direct, SqlWrites):  # as data: sent with the writes queued beside it
            self._write(Op(RunBatch(run_id, metrics, params, tags)), run_id)
        else:
            self._write(lambda: self._batch(run_id, metrics, params, tags), run_id)

    def _batch(self, run_id: str, metrics=(), params=(), tags=()) -> None:
        if self.direct is not None:
            self.direct.log_batch(run_id, metrics, params, tags)
        else:
            self.client.log_batch(run_id, metrics=[Metric(*m) for m in metrics], params=list(params),
                                  tags=list(tags))
        self.points_sent += evaluation_points(metrics)

    def _send_ops(self, writes: list[RunWrite]) -> None:
        """Queued writes of runs' rows (`Op`s, with SqlWrites), in one transaction."""
        self.direct.apply(writes)
        points = sum(evaluation_points(w.metrics) for w in writes if isinstance(w, RunBatch))
        with self.counting:  # the lanes' threads count into one number
            self.points_sent += points

    def _write_end(self, run_id: str, status: str, end_time: int) -> None:
        if isinstance(self.direct, SqlWrites):
            self._write(Op(RunEnd(run_id, status, end_time)), run_id)
        elif self.direct is not None:
            self._write(lambda: self.direct.set_terminated(run_id, status, end_time), run_id)
        else:
            self._write(lambda: self.client.set_terminated(run_id, status, end_time=end_time), run_id)

    def _send_buffered(self, run_id: str, extra: list | None = None, tags: list | None = None) -> None:
        """The run's buffered points (and `extra` metrics, `tags`) as batches of MLFLOW_BATCH."""
        metrics = self.buffered.pop(run_id, []) + (extra or [])
        self.buffered_at.pop(run_id, None)
        for i in range(0, max(1, len(metrics)), MLFLOW_BATCH):
            chunk, last = metrics[i:i + MLFLOW_BATCH], i + MLFLOW_BATCH >= len(metrics)
            if chunk or tags:
                self._write_batch(run_id, chunk, tags=(tags or []) if last else [])

    # -- set-up: the experiment, the parent run, the runs of earlier attempts ---------------
    def open(self, config_yaml: str) -> None:
        """The study's experiment and parent run, found or made; retried while the tracking server
        is away (it may drop between the preflight check and here). Every step looks before it
        creates, so a retry after a lost answer never makes a second experiment or parent."""
        answer(lambda: self._open(config_yaml))

    def _open(self, config_yaml: str) -> None:
        self.children = {}
        exp = self.client.get_experiment_by_name(self.study.experiment_name)  # a SQLite store exists from here
        use_wal(self.study.tracking.uri)
        database = self.study.tracking.database
        if database is None:
            self.direct = self.direct or SqlWrites.of(self.client, self.study.tracking.uri)
        elif not isinstance(self.direct, SqlWrites):  # the server's own database, checked by preflight
            self.direct = SqlWrites.of(self.client, database) or self.direct
            if not isinstance(self.direct, SqlWrites):
                log.warning("tracking.database: %s is not an MLflow store of a schema grokscale knows; runs are "
                            "written through the tracking server", redact_url(database))
        self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(self.study.experiment_name)
        if database is not None and isinstance(self.direct, SqlWrites) and \
                self.direct.experiment_name(self.experiment_id) != self.study.experiment_name:
            raise MlflowException(f"tracking.database: {redact_url(database)} does not hold the experiment "
                                  f"{self.study.experiment_name!r} (id {self.experiment_id}) that the tracking server "
                                  f"has: it is not the server's backend store", INVALID_PARAMETER_VALUE)
        query = f"{tag_equals(names.TAG_ROLE, names.ROLE_STUDY)} and {tag_equals(names.TAG_STUDY, self.study.name)}"
        parents = self.client.search_runs([self.experiment_id], query)
        tags = {names.TAG_ROLE: names.ROLE_STUDY, names.TAG_STUDY: self.study.name,
                names.TAG_CONFIG_HASH: self.study.digest(), names.TAG_GIT_COMMIT: git_commit() or "none",
                **{f"{names.TAG_VERSION_PREFIX}{k}": v for k, v in package_versions().items()}}
        if parents:
            self.parent_id = parents[0].info.run_id
            self.client.update_run(self.parent_id, status="RUNNING")
            for k, v in tags.items():
                self.client.set_tag(self.parent_id, k, v)
        else:
            run = self.client.create_run(self.experiment_id, tags=tags, run_name=self.study.name)
            self.parent_id = run.info.run_id
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / names.ARTIFACT_STUDY
            path.write_text(config_yaml)
            self.client.log_artifact(self.parent_id, str(path))
        for run in all_runs(self.client, [self.experiment_id], tag_equals(names.PARENT_RUN, self.parent_id)):
            key = run.data.tags.get(names.TAG_RUN_KEY)
            if key:
                self.children[key] = run
        lanes = SQL_LANES if isinstance(self.direct, SqlWrites) and self.direct.dialect.name == "postgresql" else 1
        if len(self.lanes) != lanes and not self.backlog and all(lane.thread is None for lane in self.lanes):
            self.lanes = [WriteLane(self._send_ops, f"mlflow-writer-{i}") for i in range(lanes)]

    def _create_child(self, key: str, tags: dict[str, str], name: str):
        """create_run, retried while the server is away. A create whose answer was lost may have
        made the run all the same, so a retry first looks for it by its key: one run per key.
        Into a database (SqlWrites) the run's id is made here and its row queued like any write,
        sent again under the same id until it is in."""
        if isinstance(self.direct, SqlWrites):
            run, write = answer(lambda: self.direct.new_run(self.experiment_id, tags, name))
            self._write(Op(write), run.info.run_id)
            return run
        tried = False

        def create():
            nonlocal tried
            if tried:
                query = f"{tag_equals(names.TAG_RUN_KEY, key)} and {tag_equals(names.PARENT_RUN, self.parent_id)}"
                found = self.client.search_runs([self.experiment_id], query, max_results=1)
                if found:
                    return found[0]
            tried = True
            if self.direct is not None:
                return self.direct.create_run(self.experiment_id, tags, name)
            return self.client.create_run(self.experiment_id, tags=tags, run_name=name)

        return answer(create)

    # -- child runs ---------------------------------------------------------------------------
    def start_run(self, key: str, name: str, params: dict[str, Any], tags: dict[str, str]) -> str:
        """The run of `key`: the one an earlier attempt made (reopened), else a new one."""
        existing = self.children.get(key)
        if existing is not None:
            self.key_of[existing.info.run_id] = key
            return self._reopen(existing)
        # attempts counts driver submissions of this run (a resume adds one); Ray's own retries
        # after a dead worker show as names.TAG_RESUMED_FROM_STEP.
        all_tags = {names.PARENT_RUN: self.parent_id, names.TAG_RUN_KEY: key, names.TAG_ATTEMPTS: "1", **tags}
        run = self._create_child(key, all_tags, name)
        run_id = run.info.run_id
        self.children[key] = run
        self.key_of[run_id] = key
        self.logged[run_id] = set()
        safe = {k: param_text(v) for k, v in scrub(params, self.secrets).items()}  # a dict (the spec) as JSON
        batch = [Param(k, v[:names.PARAM_MAX_CHARS]) for k, v in safe.items()]
        self._write_batch(run_id, params=batch)
        # The whole spec, whatever its length, for `grokscale reproduce`: the param when it fits
        # (an artifact a run was 13% of the driver's time at 1,000 runs in flight), else an artifact.
        if len(safe.get(names.PARAM_SPEC_JSON, "")) >= names.PARAM_MAX_CHARS:
            self._write(lambda: self._log_text(run, safe[names.PARAM_SPEC_JSON], names.ARTIFACT_SPEC), run_id)
        return run_id

    def _log_text(self, run, text: str, name: str) -> None:
        """An artifact through the run's artifact store, found from its artifact URI:
        MlflowClient.log_text first reads the whole run back (about 5 ms of CPU a run on SQLite)."""
        repo = get_artifact_repository(run.info.artifact_uri, tracking_uri=self.study.tracking.uri)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_text(text)
            repo.log_artifact(str(path))

    def _reopen(self, run) -> str:
        run_id = run.info.run_id
        attempts = int(run.data.tags.get(names.TAG_ATTEMPTS, "1")) + 1
        self._write(lambda: self.client.update_run(run_id, status="RUNNING"), run_id)
        self._write(lambda: self.client.set_tag(run_id, names.TAG_ATTEMPTS, str(attempts)), run_id)
        # Even a FINISHED run: its trial may not have reached Optuna, and its result comes back.
        # Every evaluation logs every metric it has; the built-in trainers always log val_acc, a
        # user's trainer may not, so any curve metric (not a `final.*` total) gives the steps.
        curves = sorted(k for k in run.data.metrics if not k.startswith("final."))
        key = "val_acc" if "val_acc" in curves or not curves else curves[0]
        history = answer(lambda: self.client.get_metric_history(run_id, key))
        self.logged[run_id] = {m.step for m in history}
        return run_id

    def log_records(self, run_id: str, records: list[dict[str, float]]) -> None:
        """Evaluation records (each with its `step`), buffered and sent in batches (`flush`);
        steps already logged are skipped, so a retried trial that re-reports steps, or a history
        logged after its live reports, never repeats a point."""
        now = int(time.time() * 1000)
        logged = self.logged.setdefault(run_id, set())
        metrics = self.buffered.setdefault(run_id, [])
        for record in records:
            step = int(record["step"])
            if step in logged:
                continue
            logged.add(step)
            metrics += [(k, float(v), now, step) for k, v in record.items() if k != "step"]
        if not metrics:
            del self.buffered[run_id]
            return
        self.buffered_at.setdefault(run_id, time.monotonic())
        if len(metrics) >= MLFLOW_BATCH:
            self._send_buffered(run_id)

    def log_params(self, run_id: str, params: dict[str, object]) -> None:
        """Params known only once a run ends (the N a user's trainer reports), queued like any write."""
        from mlflow.entities import Param

        self._write_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def log_history(self, run_id: str, history: dict[str, list[float]]) -> None:
        """A trainer's whole history (columns of equal length, one entry per evaluation)."""
        steps = history.get("step", [])
        self.log_records(run_id, [{k: v[i] for k, v in history.items()} for i in range(len(steps))])

    def finish_run(self, run_id: str, status: RunStatus | str, reason: str, final: dict[str, float],
                   tags: dict[str, str]) -> None:
        status = RunStatus(status)
        now = int(time.time() * 1000)
        metrics = [(f"{names.FINAL_PREFIX}{k}", float(v), now, 0) for k, v in final.items() if v is not None]
        # A failure's reason is its traceback, which may quote a credential; tags are scrubbed by
        # value only (a tag named grokscale.flops.per_token is not a token).
        all_tags = [RunTag(names.TAG_STATUS, status.value),
                    RunTag(names.TAG_REASON, scrub_text(reason, self.secrets)[:5000])]
        all_tags += [RunTag(k, scrub_text(str(v), self.secrets)) for k, v in tags.items()]
        mlflow_status = "FINISHED" if status == RunStatus.COMPLETED else "FAILED"
        # The rest of its curve, its final metrics and its end tags: as few batches as fit.
        self._send_buffered(run_id, metrics, all_tags)
        # end_time is when the run ended, not when the write got through (a server that was down).
        self._write_end(run_id, mlflow_status, now)
        self.logged.pop(run_id, None)  # O(runs in flight): a finished run's steps are not kept
        self.children.pop(self.key_of.pop(run_id, ""), None)

    def close_orphans(self, live_keys: set[str]) -> int:
        """Runs left RUNNING by a dead driver whose trial will not run again: mark them KILLED."""
        closed = 0
        for key, run in self.children.items():
            if key not in live_keys and run.info.status == "RUNNING":
                self._write(lambda rid=run.info.run_id: self.client.set_terminated(rid, "KILLED"), run.info.run_id)
                self._write(lambda rid=run.info.run_id: self.client.set_tag(
                    rid, names.TAG_REASON, "closed on resume: its trial was recorded without it"), run.info.run_id)
                closed += 1
        return closed

    def finish_study(self, status: str = "FINISHED") -> None:
        self._write(lambda: self.client.set_terminated(self.parent_id, status))


def param_text(value: Any) -> str:
    """A param's value as MLflow keeps it: text, a dict or list as compact JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":")) if isinstance(value, (dict, list)) else str(value)


def evaluation_points(metrics) -> int:
    """The points of a batch that are evaluations: final metrics are logged at step 0."""
    return sum(m[3] > 0 for m in metrics)


def config_yaml(study: Study) -> str:
    """The resolved study as logged with the parent run, credentials redacted (see `scrub`)."""
    return yaml.safe_dump(scrub(study.model_dump(mode="json")), sort_keys=False)
