"""All MLflow I/O. Only the driver calls this, so one process writes the store.

Layout: experiment = study; one parent run for the study; one child run per training run
(an Optuna trial under one seed), found again on resume by its `grokscale.run_key` tag.
Writes that fail (a tracking server that dropped out) are kept in order and retried, so
nothing is lost while the server is away.
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

import yaml
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from orchestrator.config import Study

PARENT_TAG = "mlflow.parentRunId"
PACKAGES = ("grokscale", "torch", "ray", "optuna", "mlflow", "numpy", "scipy", "pydantic")
# Values that look like credentials are never written to MLflow.
SECRET = re.compile(r"(token|secret|password|passwd|api[_-]?key|credential|private[_-]?key)", re.I)


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


def scrub(values: dict[str, Any]) -> dict[str, Any]:
    return {k: ("<redacted>" if SECRET.search(k) else v) for k, v in values.items()}


class Tracker:
    def __init__(self, study: Study, client: MlflowClient | None = None):
        self.study = study
        self.client = client or MlflowClient(tracking_uri=study.tracking.uri)
        self.pending: deque[Callable[[], None]] = deque()  # writes waiting for the server
        self.experiment_id = ""
        self.parent_id = ""
        self.last_step: dict[str, int] = {}  # run id -> last step logged, so a resume never repeats one
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

    def flush(self) -> bool:
        """Send waiting writes in order; keep them if the server is away. True when all sent."""
        while self.pending:
            try:
                self.pending[0]()
            except Exception:  # noqa: BLE001 - any transport error: keep the write, retry later
                return False
            self.pending.popleft()
        return True

    def drain(self, timeout_s: float = 120.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while not self.flush():
            if time.monotonic() > deadline:
                return False
            time.sleep(1.0)
        return True

    # -- child runs ---------------------------------------------------------------------------
    def start_run(self, key: str, name: str, params: dict[str, Any], tags: dict[str, str]) -> str:
        """The run of `key`: the one an earlier attempt made (reopened), else a new one."""
        existing = self.children.get(key)
        if existing is not None:
            run_id = existing.info.run_id
            attempts = int(existing.data.tags.get("grokscale.attempts", "1")) + 1
            self._write(lambda: self.client.update_run(run_id, status="RUNNING"))
            self._write(lambda: self.client.set_tag(run_id, "grokscale.attempts", str(attempts)))
            history = self.client.get_metric_history(run_id, "val_acc") if existing.info.status != "FINISHED" else []
            self.last_step[run_id] = max((m.step for m in history), default=0)
            return run_id
        # attempts counts driver submissions of this run (a resume adds one); Ray's own retries
        # after a dead worker show as grokscale.resumed_from_step.
        all_tags = {PARENT_TAG: self.parent_id, "grokscale.run_key": key, "grokscale.attempts": "1", **tags}
        run = self.client.create_run(self.experiment_id, tags=all_tags, run_name=name)
        run_id = run.info.run_id
        self.children[key] = run
        self.last_step[run_id] = 0
        safe = scrub(params)
        batch = [Param(k, str(v)[:6000]) for k, v in safe.items()]
        self._write(lambda: self.client.log_batch(run_id, params=batch))
        return run_id

    def log_records(self, run_id: str, records: list[dict[str, float]]) -> None:
        """Evaluation records (each with its `step`) as one batch; steps already logged are
        skipped, so a retried trial that re-reports steps, or a history logged after its live
        reports, never repeats a point."""
        now = int(time.time() * 1000)
        metrics = []
        for record in records:
            step = int(record["step"])
            if step <= self.last_step.get(run_id, 0):
                continue
            self.last_step[run_id] = step
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
    return yaml.safe_dump(study.model_dump(mode="json"), sort_keys=False)

