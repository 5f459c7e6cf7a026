"""All MLflow I/O. Only the driver calls this, so one process writes the store.

Layout: experiment = study; one parent run for the study; one child run per training run
(an Optuna trial under one seed), found again on resume by its `grokscale.run_key` tag.
Writes that fail (a tracking server that dropped out) are kept in order and retried, so
nothing is lost while the server is away.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import re
import subprocess
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

import yaml
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from orchestrator.study import Study, redact_url

PARENT_TAG = "mlflow.parentRunId"
PACKAGES = ("grokscale", "torch", "ray", "optuna", "mlflow", "numpy", "scipy", "pydantic")
# Names that hold credentials (DB_PASSWORD, AWS_SECRET_ACCESS_KEY, MLFLOW_TRACKING_TOKEN, ...); their
# values are never written to MLflow. n_train_tokens and val_token_acc are not such names.
SECRET = re.compile(r"secret|passw(or)?d|credential|api[_-]?key|access[_-]?key|private[_-]?key|token$|(^|_)auth$",
                    re.I)
REDACTED = "<redacted>"


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def secret_values() -> list[str]:
    """The values of this process's environment variables named like credentials, longest first
    (values under 8 characters are too common to redact inside other text)."""
    return sorted({v for k, v in os.environ.items() if SECRET.search(k) and len(v) >= 8}, key=len, reverse=True)


def scrub(values: Any) -> Any:
    """`values` (nested dicts, lists, strings) fit to log: the value of a key named like a credential,
    the password of a URL (`user:<redacted>@host`) and any credential from the environment,
    wherever it appears in a string, become <redacted>."""
    secrets = secret_values()

    def clean(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: REDACTED if isinstance(k, str) and SECRET.search(k) else clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, str):
            v = redact_url(v)
            for secret in secrets:
                v = v.replace(secret, REDACTED)
        return v

    return clean(values)


log = logging.getLogger(__name__)
# MLflow's HTTP client retries a request 7 times with backoff factor 2 and a 120 s timeout, so
# one write to a server that is down holds the driver for minutes. The Tracker keeps failed
# writes and tries again itself, so each request gives up in seconds instead (unless the user
# chose these settings).
HTTP_FAIL_FAST = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                  "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
RETRY_S = 2.0  # after a failed write, the next try waits this long: the driver's loop runs on
ANSWER_TIMEOUT_S = 90.0  # how long a call whose answer the driver needs (a new run's id) is retried


def refused(err: Exception) -> bool:
    """The server answered and refused (HTTP 4xx but 429): sending the same write again would fail
    again. Anything else (no connection, a timeout, 5xx, a locked SQLite file) may pass later."""
    if not isinstance(err, MlflowException):
        return False
    code = err.get_http_status_code()
    return 400 <= code < 500 and code != 429


class Tracker:
    def __init__(self, study: Study, client: MlflowClient | None = None):
        self.study = study
        if study.tracking.uri.startswith(("http://", "https://")):
            for name, value in HTTP_FAIL_FAST.items():
                os.environ.setdefault(name, value)
        self.client = client or MlflowClient(tracking_uri=study.tracking.uri)
        self.pending: deque[Callable[[], None]] = deque()  # writes waiting for the server
        self.retry_at = 0.0  # monotonic time before which waiting writes are not tried again
        self.experiment_id = ""
        self.parent_id = ""
        self.logged: dict[str, set[int]] = {}  # run id -> steps logged, so none is ever logged twice
        self.children: dict[str, Any] = {}  # run key -> mlflow Run

    # -- set-up: the experiment, the parent run, the runs of earlier attempts ---------------
    def open(self, config_yaml: str) -> None:
        exp = self.client.get_experiment_by_name(self.study.experiment_name)
        self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(self.study.experiment_name)
        parents = self.client.search_runs([self.experiment_id],
                                          f"tags.`grokscale.role` = 'study' and tags.`grokscale.study` = '{self.study.name}'")
        tags = {"grokscale.role": "study", "grokscale.study": self.study.name,
                "grokscale.config_hash": self.study.digest(), "grokscale.git_commit": git_commit() or "none",
                **{f"grokscale.version.{k}": v for k, v in package_versions().items()}}
        if parents:
            self.parent_id = parents[0].info.run_id
            self.client.update_run(self.parent_id, status="RUNNING")
            for k, v in tags.items():
                self.client.set_tag(self.parent_id, k, v)
        else:
            run = self.client.create_run(self.experiment_id, tags=tags, run_name=self.study.name)
            self.parent_id = run.info.run_id
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "study.yaml"
            path.write_text(config_yaml)
            self.client.log_artifact(self.parent_id, str(path))
        for run in self.client.search_runs([self.experiment_id], f"tags.`{PARENT_TAG}` = '{self.parent_id}'",
                                           max_results=50_000):
            key = run.data.tags.get("grokscale.run_key")
            if key:
                self.children[key] = run

    # -- writes, buffered ---------------------------------------------------------------------
    def _write(self, fn: Callable[[], None]) -> None:
        self.pending.append(fn)
        self.flush()

    def flush(self, force: bool = False) -> bool:
        """Send waiting writes in order; keep them if the server is away. True when all sent.
        After a failure nothing is tried for RETRY_S (unless `force`): new writes queue behind."""
        if self.pending and not force and time.monotonic() < self.retry_at:
            return False
        while self.pending:
            try:
                self.pending[0]()
            except Exception as err:  # noqa: BLE001 - any transport error: keep the write, retry later
                if not refused(err):
                    self.retry_at = time.monotonic() + RETRY_S
                    return False
                # Retried, it would fail for ever and hold back every write behind it.
                log.warning("MLflow refused a write, dropped: %s", err)
            self.pending.popleft()
        return True

    def drain(self, timeout_s: float = 120.0) -> bool:
        """Flush until every waiting write is sent; False if the server stays away `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while not self.flush(force=True):
            if time.monotonic() > deadline:
                return False
            time.sleep(1.0)
        return True

    def _answer(self, call: Callable[[], Any], timeout_s: float = ANSWER_TIMEOUT_S) -> Any:
        """A call whose result the driver needs now, retried while the server is away; after
        `timeout_s`, or when the server refuses it, its error is raised."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return call()
            except Exception as err:  # noqa: BLE001 - as in flush
                if refused(err) or time.monotonic() > deadline:
                    raise
                time.sleep(1.0)

    def _create_child(self, key: str, tags: dict[str, str], name: str):
        """create_run, retried while the server is away. A create whose answer was lost may have
        made the run all the same, so a retry first looks for it by its key: one run per key."""
        tried = False

        def create():
            nonlocal tried
            if tried:
                query = f"tags.`grokscale.run_key` = '{key}' and tags.`{PARENT_TAG}` = '{self.parent_id}'"
                found = self.client.search_runs([self.experiment_id], query, max_results=1)
                if found:
                    return found[0]
            tried = True
            return self.client.create_run(self.experiment_id, tags=tags, run_name=name)

        return self._answer(create)

    # -- child runs ---------------------------------------------------------------------------
    def start_run(self, key: str, name: str, params: dict[str, Any], tags: dict[str, str]) -> str:
        """The run of `key`: the one an earlier attempt made (reopened), else a new one."""
        existing = self.children.get(key)
        if existing is not None:
            run_id = existing.info.run_id
            attempts = int(existing.data.tags.get("grokscale.attempts", "1")) + 1
            self._write(lambda: self.client.update_run(run_id, status="RUNNING"))
            self._write(lambda: self.client.set_tag(run_id, "grokscale.attempts", str(attempts)))
            # Even a FINISHED run: its trial may not have reached Optuna, and its result comes back.
            history = self._answer(lambda: self.client.get_metric_history(run_id, "val_acc"))
            self.logged[run_id] = {m.step for m in history}
            return run_id
        # attempts counts driver submissions of this run (a resume adds one); Ray's own retries
        # after a dead worker show as grokscale.resumed_from_step.
        all_tags = {PARENT_TAG: self.parent_id, "grokscale.run_key": key, "grokscale.attempts": "1", **tags}
        run = self._create_child(key, all_tags, name)
        run_id = run.info.run_id
        self.children[key] = run
        self.logged[run_id] = set()
        safe = scrub({k: v if isinstance(v, str) else str(v) for k, v in params.items()})
        batch = [Param(k, v[:6000]) for k, v in safe.items()]
        self._write(lambda: self.client.log_batch(run_id, params=batch))
        if "spec_json" in safe:  # the whole spec, whatever its length: `grokscale reproduce` reads it
            self._write(lambda: self.client.log_text(run_id, safe["spec_json"], "spec.json"))
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

    def log_history(self, run_id: str, history: dict[str, list[float]]) -> None:
        """A trainer's whole history (columns of equal length, one entry per evaluation)."""
        steps = history.get("step", [])
        self.log_records(run_id, [{k: v[i] for k, v in history.items()} for i in range(len(steps))])

    def finish_run(self, run_id: str, status: str, reason: str, final: dict[str, float],
                   tags: dict[str, str]) -> None:
        now = int(time.time() * 1000)
        metrics = [Metric(f"final.{k}", float(v), now, 0) for k, v in final.items() if v is not None]
        all_tags = [RunTag("grokscale.status", status), RunTag("grokscale.reason", reason[:5000])]
        all_tags += [RunTag(k, str(v)) for k, v in tags.items()]
        mlflow_status = "FINISHED" if status == "completed" else "FAILED"
        self._write(lambda: self.client.log_batch(run_id, metrics=metrics, tags=all_tags))
        self._write(lambda: self.client.set_terminated(run_id, mlflow_status))

    def close_orphans(self, live_keys: set[str]) -> int:
        """Runs left RUNNING by a dead driver whose trial will not run again: mark them KILLED."""
        closed = 0
        for key, run in self.children.items():
            if key not in live_keys and run.info.status == "RUNNING":
                self._write(lambda rid=run.info.run_id: self.client.set_terminated(rid, "KILLED"))
                self._write(lambda rid=run.info.run_id: self.client.set_tag(
                    rid, "grokscale.reason", "closed on resume: its trial was recorded without it"))
                closed += 1
        return closed

    def finish_study(self, status: str = "FINISHED") -> None:
        self._write(lambda: self.client.set_terminated(self.parent_id, status))


def config_yaml(study: Study) -> str:
    """The resolved study as logged with the parent run, credentials redacted (see `scrub`)."""
    return yaml.safe_dump(scrub(study.model_dump(mode="json")), sort_keys=False)

