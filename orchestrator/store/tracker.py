"""All MLflow I/O. Only the driver calls this, so one process writes the store.

Layout: experiment = study; one parent run for the study; one child run per training run
(an Optuna trial under one seed), found again on resume by its run key tag (`names.TAG_RUN_KEY`).
Writes go through a `WriteQueue`: kept in order and retried while the server is away.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from orchestrator.store import names
from orchestrator.store.names import RunStatus, tag_equals
from orchestrator.store.queue import WriteQueue, answer
from orchestrator.store.redact import scrub
from orchestrator.study import Study

PACKAGES = ("grokscale", "torch", "ray", "optuna", "mlflow", "numpy", "scipy", "pydantic")
# MLflow's HTTP client retries a request 7 times with backoff factor 2 and a 120 s timeout, so
# one write to a server that is down holds the driver for minutes. The WriteQueue keeps failed
# writes and tries again itself, so each request gives up in seconds instead (unless the user
# chose these settings).
HTTP_FAIL_FAST = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                  "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
PARAM_MAX_CHARS = 6000  # MLflow's limit on a param value; the whole spec also goes as an artifact


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


class Tracker:
    def __init__(self, study: Study, client: MlflowClient | None = None):
        self.study = study
        if study.tracking.uri.startswith(("http://", "https://")):
            for name, value in HTTP_FAIL_FAST.items():
                os.environ.setdefault(name, value)
        self.client = client or MlflowClient(tracking_uri=study.tracking.uri)
        self.queue = WriteQueue()
        self.experiment_id = ""
        self.parent_id = ""
        self.logged: dict[str, set[int]] = {}  # run id -> steps logged, so none is ever logged twice
        self.children: dict[str, Any] = {}  # run key -> mlflow Run

    @property
    def pending(self):
        """The writes still waiting for the server, oldest first."""
        return self.queue.pending

    def _write(self, fn: Callable[[], None]) -> None:
        self.queue.put(fn)

    def flush(self, force: bool = False) -> bool:
        return self.queue.flush(force)

    def drain(self, timeout_s: float = 120.0) -> bool:
        return self.queue.drain(timeout_s)

    # -- set-up: the experiment, the parent run, the runs of earlier attempts ---------------
    def open(self, config_yaml: str) -> None:
        """The study's experiment and parent run, found or made; retried while the tracking server
        is away (it may drop between the preflight check and here). Every step looks before it
        creates, so a retry after a lost answer never makes a second experiment or parent."""
        answer(lambda: self._open(config_yaml))

    def _open(self, config_yaml: str) -> None:
        self.children = {}
        exp = self.client.get_experiment_by_name(self.study.experiment_name)
        self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(self.study.experiment_name)
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
        for run in self.client.search_runs([self.experiment_id], tag_equals(names.PARENT_RUN, self.parent_id),
                                           max_results=50_000):
            key = run.data.tags.get(names.TAG_RUN_KEY)
            if key:
                self.children[key] = run

    def _create_child(self, key: str, tags: dict[str, str], name: str):
        """create_run, retried while the server is away. A create whose answer was lost may have
        made the run all the same, so a retry first looks for it by its key: one run per key."""
        tried = False

        def create():
            nonlocal tried
            if tried:
                query = f"{tag_equals(names.TAG_RUN_KEY, key)} and {tag_equals(names.PARENT_RUN, self.parent_id)}"
                found = self.client.search_runs([self.experiment_id], query, max_results=1)
                if found:
                    return found[0]
            tried = True
            return self.client.create_run(self.experiment_id, tags=tags, run_name=name)

        return answer(create)

    # -- child runs ---------------------------------------------------------------------------
    def start_run(self, key: str, name: str, params: dict[str, Any], tags: dict[str, str]) -> str:
        """The run of `key`: the one an earlier attempt made (reopened), else a new one."""
        existing = self.children.get(key)
        if existing is not None:
            return self._reopen(existing)
        # attempts counts driver submissions of this run (a resume adds one); Ray's own retries
        # after a dead worker show as names.TAG_RESUMED_FROM_STEP.
        all_tags = {names.PARENT_RUN: self.parent_id, names.TAG_RUN_KEY: key, names.TAG_ATTEMPTS: "1", **tags}
        run = self._create_child(key, all_tags, name)
        run_id = run.info.run_id
        self.children[key] = run
        self.logged[run_id] = set()
        safe = scrub({k: v if isinstance(v, str) else str(v) for k, v in params.items()})
        batch = [Param(k, v[:PARAM_MAX_CHARS]) for k, v in safe.items()]
        self._write(lambda: self.client.log_batch(run_id, params=batch))
        if names.PARAM_SPEC_JSON in safe:  # the whole spec, whatever its length: `grokscale reproduce` reads it
            self._write(lambda: self.client.log_text(run_id, safe[names.PARAM_SPEC_JSON], names.ARTIFACT_SPEC))
        return run_id

    def _reopen(self, run) -> str:
        run_id = run.info.run_id
        attempts = int(run.data.tags.get(names.TAG_ATTEMPTS, "1")) + 1
        self._write(lambda: self.client.update_run(run_id, status="RUNNING"))
        self._write(lambda: self.client.set_tag(run_id, names.TAG_ATTEMPTS, str(attempts)))
        # Even a FINISHED run: its trial may not have reached Optuna, and its result comes back.
        # Every evaluation logs val_acc, so its steps are the steps already logged.
        history = answer(lambda: self.client.get_metric_history(run_id, "val_acc"))
        self.logged[run_id] = {m.step for m in history}
        return run_id

    def log_records(self, run_id: str, records: list[dict[str, float]]) -> None:
        """Evaluation records (each with its `step`) as one batch; steps already logged are
        skipped, so a retried trial that re-reports steps, or a history logged after its live
        reports, never repeats a point."""
        now = int(time.time() * 1000)
        metrics = []
        for record in records:
            step = int(record["step"])
            if step in self.logged.setdefault(run_id, set()):
                continue
            self.logged[run_id].add(step)
            metrics += [Metric(k, float(v), now, step) for k, v in record.items() if k != "step"]
        for i in range(0, len(metrics), 1000):  # MLflow's limit of metrics per batch
            chunk = metrics[i:i + 1000]
            self._write(lambda chunk=chunk: self.client.log_batch(run_id, metrics=chunk))

    def log_params(self, run_id: str, params: dict[str, object]) -> None:
        """Params known only once a run ends (the N a user's trainer reports), queued like any write."""
        from mlflow.entities import Param

        batch = [Param(k, str(v)) for k, v in params.items()]
        self._write(lambda: self.client.log_batch(run_id, params=batch))

    def log_history(self, run_id: str, history: dict[str, list[float]]) -> None:
        """A trainer's whole history (columns of equal length, one entry per evaluation)."""
        steps = history.get("step", [])
        self.log_records(run_id, [{k: v[i] for k, v in history.items()} for i in range(len(steps))])

    def finish_run(self, run_id: str, status: RunStatus | str, reason: str, final: dict[str, float],
                   tags: dict[str, str]) -> None:
        status = RunStatus(status)
        now = int(time.time() * 1000)
        metrics = [Metric(f"{names.FINAL_PREFIX}{k}", float(v), now, 0) for k, v in final.items() if v is not None]
        all_tags = [RunTag(names.TAG_STATUS, status.value), RunTag(names.TAG_REASON, reason[:5000])]
        all_tags += [RunTag(k, str(v)) for k, v in tags.items()]
        mlflow_status = "FINISHED" if status == RunStatus.COMPLETED else "FAILED"
        self._write(lambda: self.client.log_batch(run_id, metrics=metrics, tags=all_tags))
        self._write(lambda: self.client.set_terminated(run_id, mlflow_status))

    def close_orphans(self, live_keys: set[str]) -> int:
        """Runs left RUNNING by a dead driver whose trial will not run again: mark them KILLED."""
        closed = 0
        for key, run in self.children.items():
            if key not in live_keys and run.info.status == "RUNNING":
                self._write(lambda rid=run.info.run_id: self.client.set_terminated(rid, "KILLED"))
                self._write(lambda rid=run.info.run_id: self.client.set_tag(
                    rid, names.TAG_REASON, "closed on resume: its trial was recorded without it"))
                closed += 1
        return closed

    def finish_study(self, status: str = "FINISHED") -> None:
        self._write(lambda: self.client.set_terminated(self.parent_id, status))


def config_yaml(study: Study) -> str:
    """The resolved study as logged with the parent run, credentials redacted (see `scrub`)."""
    return yaml.safe_dump(scrub(study.model_dump(mode="json")), sort_keys=False)
