"""All MLflow I/O. Only the driver calls this, so one process writes the store.

Layout: experiment = study; one parent run for the study; one child run per training run
(an Optuna trial under one seed), found again on resume by its run key tag (`names.TAG_RUN_KEY`).

What it guarantees:
- Writes go through `WriteQueue`s (queue.py): kept in order, retried only while the store is
  away, for at most the retry cap. In a study the driver hands them to writer threads
  (`start_writer`), so its loop never waits on the store; a run's writes all go by one lane.
- Only what MLflow takes is queued (keys.py): a metric, param or tag MLflow would refuse is
  dropped alone, listed in the run's `grokscale.dropped_keys` tag and counted for the study
  (the parent run's tag, `dropped_keys`); the rest of its batch goes out. Batches keep within
  MLflow's limits per request.
- A write the store refuses or that fails for good (not a lost connection) fails its run as
  data: the run is marked failed with the error's traceback as its reason (`_write_failed`),
  `write_failure` tells the driver so before it tells Optuna, and the writes behind it go on.
- Evaluations are buffered per run and sent in batches of up to MLFLOW_BATCH points, a run's
  live curve at most LIVE_S behind: one batch per run per tick was the driver's bottleneck at
  1,000 runs in flight.
- The hot writes (create, log_batch, terminate) go through one `Writes` (writes.py), chosen once
  the store exists: MlflowClient, plain JSON to a tracking server, or plain SQL into a SQLite or
  PostgreSQL store. The rest (the parent run, artifacts, reads) goes through MlflowClient.
- A SQLite store on a local disk is in write-ahead-log mode (`use_wal`): one sync per commit
  instead of several, as durable (synchronous stays FULL).
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
import traceback
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from mlflow.entities import RunTag
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.tracking import MlflowClient

from orchestrator.store import names, schema
from orchestrator.store.keys import MAX_TAG_CHARS, Checked, batches, key_problem
from orchestrator.store.names import RunStatus, tag_equals
from orchestrator.store.queue import Call, Op, WriteLane, WriteQueue, answer, describe
from orchestrator.store.redact import scrub, scrub_text, secrets_in
from orchestrator.store.results import all_runs
from orchestrator.store.versions import fast_path
from orchestrator.store.writes import ClientWrites, Writes, choose_writes
from orchestrator.study import Study
from orchestrator.study.preflight import network_filesystem, sqlite_path

log = logging.getLogger(__name__)

PACKAGES = ("grokscale", "torch", "ray", "optuna", "mlflow", "numpy", "scipy", "pydantic")
# MLflow's HTTP client retries a request 7 times with backoff factor 2 and a 120 s timeout, so
# one write to a server that is down holds the driver for minutes. The WriteQueue keeps failed
# writes and tries again itself, so each request gives up in seconds instead (unless the user
# chose these settings).
HTTP_FAIL_FAST = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}
MLFLOW_BATCH = 1000  # MLflow's limit of metrics in one log_batch (keys.batches splits by its limits)
REASON_CHARS = 5000  # of a failure's reason (a traceback): its last lines, which name the error
LIVE_S = 2.0  # a run's buffered evaluations are sent once this old (or a whole batch, or at its end)


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
            cwd=Path(__file__).resolve().parent,
        )
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
        if client is None:
            schema.ready(study.tracking.uri)  # a new SQLite store, made whole before MlflowClient opens it
        self.client = client or MlflowClient(tracking_uri=study.tracking.uri)
        # The hot writes: MlflowClient's until `open` chooses them, once MLflow has made the store.
        self.writes: Writes = ClientWrites(self.client)
        self.chosen = False
        # One lane (queue and writer thread) per writer connection the writes take; a run's writes
        # all go by one lane, in order (`_open` makes them).
        self.lanes = [WriteLane(self._send_ops, on_failure=self._write_failed)]
        self.buffered: dict[str, list[tuple[str, float, int, int]]] = {}  # run id -> (key, value, ms, step)
        self.buffered_at: dict[str, float] = {}  # run id -> when its oldest buffered point came
        self.experiment_id = ""
        self.parent_id = ""
        self.logged: dict[str, set[int]] = {}  # run id -> steps logged, so none is ever logged twice
        # run key -> mlflow Run: runs of earlier attempts (found at open) and runs in flight; a
        # finished run's is dropped (a Run with its tags is kilobytes: O(runs in flight), not done)
        self.children: dict[str, Any] = {}
        self.key_of: dict[str, str] = {}  # run id -> run key, runs in flight
        self.metric_keys: set[str] = set()  # metric names MLflow takes (keys.key_problem), seen so far
        self.dropped: dict[str, dict[str, str]] = {}  # run id -> "metric <key>" -> why, runs in flight
        self.dropped_keys: dict[str, int] = {}  # "metric <key>" -> runs that dropped it, the whole study
        # Runs one of whose writes failed for good -> the failure, as their reason. The writer threads
        # add to it, the driver's reads it; `failing` orders a run's end against its failure.
        self.failed_writes: dict[str, str] = {}
        self.failing = threading.RLock()

    @property
    def points_sent(self) -> int:
        """Evaluation metric points the store accepted (bench_driver_scale.py)."""
        return self.writes.points_sent

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

    def idle_s(self) -> float:
        """How long writes have waited with none going out, the longest of the lanes (0: none waits)."""
        return max(lane.queue.idle_s() for lane in self.lanes)

    def mark(self) -> tuple[int, ...]:
        """The writes made so far: `sent_through(mark)` says when they are all out."""
        return tuple(lane.written for lane in self.lanes)

    def sent_through(self, mark: tuple[int, ...]) -> bool:
        """Every write made before `mark` has been sent (or dropped for good: then `write_failure`
        of its run says so)."""
        return all(lane.sent_through(m) for lane, m in zip(self.lanes, mark, strict=True))

    def write_failure(self, run_id: str) -> str | None:
        """Why the run's record is incomplete (a write of it failed for good), or None."""
        return self.failed_writes.get(run_id)

    def _lane(self, run_id: str | None) -> WriteLane:
        """The lane of a run's writes (the first lane for writes of no one run)."""
        lanes = self.lanes
        return lanes[zlib.crc32(run_id.encode()) % len(lanes) if run_id and len(lanes) > 1 else 0]

    def _write(self, fn: Callable[[], None] | Op | Call, run_id: str | None = None, what: str = "") -> None:
        """A write, into the lane of its run; a bare callable is named for the log (`what`)."""
        if not isinstance(fn, (Op, Call)):
            fn = Call(fn, what or getattr(fn, "__qualname__", "a write"), run_id)
        self._lane(run_id).put(fn)

    def start_writer(self) -> None:
        """From now on the writes go out on threads of their own (one a lane), in order, retried as before."""
        for lane in self.lanes:
            lane.start()

    def flush(self, force: bool = False) -> bool:
        """Buffered evaluations that are due become writes; with the writer threads, they send them.
        StoreUnreachable once the store has taken no write for the retry cap (queue.py)."""
        now = time.monotonic()
        for run_id in [r for r, t in self.buffered_at.items() if force or now - t >= LIVE_S]:
            self._send_buffered(run_id)
        return all([lane.flush(force) for lane in self.lanes])

    def drain(self, timeout_s: float = 120.0) -> bool:
        for run_id in list(self.buffered):
            self._send_buffered(run_id)
        return all([lane.drain(timeout_s) for lane in self.lanes])

    # -- writes as the store takes them -------------------------------------------------------
    def _write_batch(self, run_id: str, metrics=(), params=(), tags=()) -> None:
        """Checked entries, queued as as few log_batch requests as MLflow's limits allow;
        metrics as (key, value, timestamp ms, step)."""
        for m, p, t in batches(metrics, params, tags):
            self._write(self.writes.queued_batch(run_id, m, p, t), run_id)

    def _send_ops(self, data: list) -> None:
        """The data of queued `Op`s, in one transaction (a lane calls this on its thread)."""
        self.writes.send(data)

    def _send_buffered(self, run_id: str, extra: list | None = None, tags: list | None = None) -> None:
        """The run's buffered points (and `extra` metrics, `tags`), in batches."""
        metrics = self.buffered.pop(run_id, []) + (extra or [])
        self.buffered_at.pop(run_id, None)
        if metrics or tags:
            self._write_batch(run_id, metrics, tags=tags or [])

    def _checked(self, run_id: str | None, checked: Checked) -> Checked:
        """What `checked` dropped, kept for the run's `grokscale.dropped_keys` tag and the study's count;
        each key logged the first time the study drops it."""
        if checked.dropped and run_id is not None:
            mine = self.dropped.setdefault(run_id, {})
            for key, why in checked.dropped.items():
                if key in mine:
                    continue
                mine[key] = why
                if key not in self.dropped_keys:
                    log.warning(
                        "MLflow would refuse %s (%s): dropped, the rest of the run is logged; "
                        "each run that drops it lists it in its %s tag",
                        key,
                        why,
                        names.TAG_DROPPED_KEYS,
                    )
                self.dropped_keys[key] = self.dropped_keys.get(key, 0) + 1
        return checked

    def _write_failed(self, write: Any, err: BaseException) -> None:
        """A write of a run failed for good (queue.py calls this on the writer's thread): the run is
        marked failed, its reason the error and its traceback, after every write of it already
        queued, so nothing written before overrides it; `finish_run` keeps it so."""
        run_id = getattr(write, "run_id", None)
        if run_id is None or run_id == self.parent_id:
            return
        trace = "".join(traceback.format_exception(err)).rstrip()
        head = (
            f"an MLflow write of this run failed for good ({describe(write)}), so its record is incomplete:\n"
        )
        reason = scrub_text(head + trace[-(REASON_CHARS - len(head)) :], self.secrets)
        with self.failing:
            if run_id in self.failed_writes:  # its failure is being marked already (or could not be)
                return
            self.failed_writes[run_id] = reason
            queue = self._lane(run_id).queue
            tags = [RunTag(names.TAG_STATUS, RunStatus.FAILED.value), RunTag(names.TAG_REASON, reason)]
            # Straight into the queue (not `put`): this runs inside its flush, and it counts in no mark.
            queue.pending.append(self.writes.queued_batch(run_id, tags=tags))
            queue.pending.append(self.writes.queued_end(run_id, "FAILED", int(time.time() * 1000)))

    # -- set-up: the experiment, the parent run, the runs of earlier attempts ---------------
    def open(self, config_yaml: str) -> None:
        """The study's experiment and parent run, found or made; retried while the tracking server
        is away (it may drop between the preflight check and here). Every step looks before it
        creates, so a retry after a lost answer never makes a second experiment or parent."""
        answer(lambda: self._open(config_yaml), what="opening the study's experiment and parent run")

    def _open(self, config_yaml: str) -> None:
        self.children = {}
        exp = self.client.get_experiment_by_name(self.study.experiment_name)
        use_wal(self.study.tracking.uri)
        self.experiment_id = (
            exp.experiment_id if exp else self.client.create_experiment(self.study.experiment_name)
        )
        if not self.chosen:
            self.writes = choose_writes(
                self.client,
                self.study.tracking.uri,
                self.study.tracking.database,
                fast_path("mlflow"),
                (self.experiment_id, self.study.experiment_name),
            )
            self.chosen = True
        query = " and ".join(
            [tag_equals(names.TAG_ROLE, names.ROLE_STUDY), tag_equals(names.TAG_STUDY, self.study.name)]
        )
        parents = self.client.search_runs([self.experiment_id], query)
        tags = {
            names.TAG_ROLE: names.ROLE_STUDY,
            names.TAG_STUDY: self.study.name,
            names.TAG_CONFIG_HASH: self.study.digest(),
            names.TAG_GIT_COMMIT: git_commit() or "none",
            **{f"{names.TAG_VERSION_PREFIX}{k}": v for k, v in package_versions().items()},
        }
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
        lanes = self.writes.lanes
        if len(self.lanes) != lanes and not self.backlog and all(lane.thread is None for lane in self.lanes):
            self.lanes = [
                WriteLane(self._send_ops, f"mlflow-writer-{i}", self._write_failed) for i in range(lanes)
            ]

    def _create_child(self, key: str, tags: dict[str, str], name: str):
        """The run, made once, retried while the store is away. A create whose answer was lost may
        have made the run all the same, so a retry first looks for it by its key: one run per key.
        A create the writes queue as data (SqlWrites: the run's id is made here) is queued like any
        write, sent again under the same id until it is in."""
        tried = False

        def create():
            nonlocal tried
            if tried:
                query = " and ".join(
                    [tag_equals(names.TAG_RUN_KEY, key), tag_equals(names.PARENT_RUN, self.parent_id)]
                )
                found = self.client.search_runs([self.experiment_id], query, max_results=1)
                if found:
                    return found[0], None
            tried = True
            return self.writes.queued_create(self.experiment_id, tags, name)

        run, row = answer(create, what=f"create_run of {key}")
        if row is not None:
            self._write(row, run.info.run_id)
        return run

    # -- child runs ---------------------------------------------------------------------------
    def start_run(self, key: str, name: str, params: dict[str, Any], tags: dict[str, str]) -> str:
        """The run of `key`: the one an earlier attempt made (reopened), else a new one."""
        existing = self.children.get(key)
        if existing is not None:
            self.key_of[existing.info.run_id] = key
            return self._reopen(existing)
        # attempts counts driver submissions of this run (a resume adds one); Ray's own retries
        # after a dead worker show as names.TAG_RESUMED_FROM_STEP.
        start_tags = Checked()
        for k, v in {
            names.PARENT_RUN: self.parent_id,
            names.TAG_RUN_KEY: key,
            names.TAG_ATTEMPTS: "1",
            **tags,
        }.items():
            start_tags.add_tag(k, str(v))
        run = self._create_child(key, {t.key: t.value for t in start_tags.tags}, name)
        run_id = run.info.run_id
        self._checked(run_id, start_tags)
        self.children[key] = run
        self.key_of[run_id] = key
        self.logged[run_id] = set()
        safe = {k: param_text(v) for k, v in scrub(params, self.secrets).items()}  # a dict (the spec) as JSON
        checked = Checked()
        for k, v in safe.items():
            checked.add_param(k, v)
        self._write_batch(run_id, params=self._checked(run_id, checked).params)
        # The whole spec, whatever its length, for `grokscale reproduce`: the param when it fits
        # (an artifact a run was 13% of the driver's time at 1,000 runs in flight), else an artifact.
        if len(safe.get(names.PARAM_SPEC_JSON, "")) >= names.PARAM_MAX_CHARS:
            self._write(
                lambda: self._log_text(run, safe[names.PARAM_SPEC_JSON], names.ARTIFACT_SPEC),
                run_id,
                "the spec as an artifact",
            )
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
        self._write(lambda: self.client.update_run(run_id, status="RUNNING"), run_id, "update_run (reopened)")
        self._write(
            lambda: self.client.set_tag(run_id, names.TAG_ATTEMPTS, str(attempts)), run_id, "set_tag attempts"
        )
        # Even a FINISHED run: its trial may not have reached Optuna, and its result comes back.
        # Every evaluation logs every metric it has; the built-in trainers always log val_acc, a
        # user's trainer may not, so any curve metric (not a `final.*` total) gives the steps.
        curves = sorted(k for k in run.data.metrics if not k.startswith("final."))
        key = "val_acc" if "val_acc" in curves or not curves else curves[0]
        history = answer(lambda: self.client.get_metric_history(run_id, key), what="get_metric_history")
        self.logged[run_id] = {m.step for m in history}
        return run_id

    def log_records(self, run_id: str, records: list[dict[str, float]]) -> None:
        """Evaluation records (each with its `step`), buffered and sent in batches (`flush`);
        steps already logged are skipped, so a retried trial that re-reports steps, or a history
        logged after its live reports, never repeats a point. An entry MLflow would refuse (a
        name it does not take, a value that is no number) is dropped alone (`_checked`)."""
        now = int(time.time() * 1000)
        logged = self.logged.setdefault(run_id, set())
        metrics = self.buffered.setdefault(run_id, [])
        good = self.metric_keys
        bad: Checked | None = None
        for record in records:
            step = int(record["step"])
            if step in logged:
                continue
            logged.add(step)
            for k, v in record.items():
                if k == "step":
                    continue
                if type(v) in (float, int) and k in good:  # the common case: each key checked once
                    metrics.append((k, float(v), now, step))
                    continue
                bad = bad or Checked(metrics=metrics)  # appends to `metrics` what passes
                bad.add_metric(k, v, now, step)
                if isinstance(k, str) and key_problem("metric", k) is None:
                    good.add(k)
        if bad is not None:
            self._checked(run_id, bad)
        if not metrics:
            del self.buffered[run_id]
            return
        self.buffered_at.setdefault(run_id, time.monotonic())
        if len(metrics) >= MLFLOW_BATCH:
            self._send_buffered(run_id)

    def log_params(self, run_id: str, params: dict[str, object]) -> None:
        """Params known only once a run ends (the N a user's trainer reports), queued like any write."""
        checked = Checked()
        for k, v in params.items():
            checked.add_param(k, str(v))
        self._write_batch(run_id, params=self._checked(run_id, checked).params)

    def log_history(self, run_id: str, history: dict[str, list[float]]) -> None:
        """A trainer's whole history (columns of equal length, one entry per evaluation)."""
        steps = history.get("step", [])
        self.log_records(run_id, [{k: v[i] for k, v in history.items()} for i in range(len(steps))])

    def finish_run(
        self, run_id: str, status: RunStatus | str, reason: str, final: dict[str, float], tags: dict[str, str]
    ) -> None:
        """The run's rest of its curve, final metrics, end tags (its dropped keys among them) and
        end. A run one of whose writes failed for good ends failed, with that failure as its reason."""
        status = RunStatus(status)
        now = int(time.time() * 1000)
        checked = Checked()
        for k, v in final.items():
            if v is not None:
                checked.add_metric(f"{names.FINAL_PREFIX}{k}", v, now, 0)
        # A failure's reason is its traceback, which may quote a credential; tags are scrubbed by
        # value only (a tag named grokscale.flops.per_token is not a token).
        for k, v in tags.items():
            checked.add_tag(k, scrub_text(str(v), self.secrets))
        self._checked(run_id, checked)
        dropped = self.dropped.pop(run_id, {})
        if dropped:
            checked.add_tag(names.TAG_DROPPED_KEYS, json.dumps(dropped, sort_keys=True)[:MAX_TAG_CHARS])
        with self.failing:  # a write failing meanwhile on a writer thread marks the run after these
            failure = self.failed_writes.get(run_id)
            if failure is not None:
                status, reason = RunStatus.FAILED, failure
            end_tags = [
                RunTag(names.TAG_STATUS, status.value),
                RunTag(names.TAG_REASON, scrub_text(reason, self.secrets)[:REASON_CHARS]),
                *checked.tags,
            ]
            # The rest of its curve, its final metrics and its end tags: as few batches as fit.
            self._send_buffered(run_id, checked.metrics, end_tags)
            # end_time is when the run ended, not when the write got through (a server that was down).
            ended = "FINISHED" if status == RunStatus.COMPLETED else "FAILED"
            self._write(self.writes.queued_end(run_id, ended, now), run_id)
        self.logged.pop(run_id, None)  # O(runs in flight): a finished run's steps are not kept
        self.children.pop(self.key_of.pop(run_id, ""), None)

    def close_orphans(self, live_keys: set[str]) -> int:
        """Runs left RUNNING by a dead driver whose trial will not run again: mark them KILLED."""
        closed = 0
        for key, run in self.children.items():
            if key not in live_keys and run.info.status == "RUNNING":
                rid = run.info.run_id
                self._write(
                    lambda rid=rid: self.client.set_terminated(rid, "KILLED"), rid, "set_terminated (orphan)"
                )
                self._write(
                    lambda rid=rid: self.client.set_tag(
                        rid, names.TAG_REASON, "closed on resume: its trial was recorded without it"
                    ),
                    rid,
                    "set_tag reason (orphan)",
                )
                closed += 1
        return closed

    def finish_study(self, status: str = "FINISHED") -> None:
        """The parent run ended, with what the study dropped and lost (`names.TAG_DROPPED_KEYS`,
        `names.TAG_WRITE_FAILURES`) when it did."""
        summary = []
        if self.dropped_keys:
            counts = json.dumps(self.dropped_keys, sort_keys=True)[:MAX_TAG_CHARS]
            summary.append(RunTag(names.TAG_DROPPED_KEYS, counts))
        if self.failed_writes:
            summary.append(RunTag(names.TAG_WRITE_FAILURES, str(len(self.failed_writes))))
        parent = self.parent_id
        if summary:
            self._write(lambda: self.client.log_batch(parent, tags=summary), what="the study's summary tags")
        self._write(lambda: self.client.set_terminated(parent, status), what="set_terminated (the study)")


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
