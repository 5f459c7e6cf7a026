"""A `grokscale run` driver in the background, and what it wrote: the Optuna trials of its
journal and the MLflow runs of its experiment."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import optuna
from mlflow.tracking import MlflowClient

from orchestrator.store.hold import HOLD_STUDY_PREFIX

from support.cli import GROKSCALE
from support.processes import kill_tree

RAY_ENV = {"RAY_AUTH_MODE": "disabled"}  # no token to share between the nodes and the driver


def start_driver(path: Path, uri: str, *args: str, log: str = "driver.log") -> subprocess.Popen:
    """`grokscale run` in its own session; stdout (the counts) to `log`.out, stderr to `log`."""
    return subprocess.Popen(
        [*GROKSCALE, "run", str(path), "--quiet", "--json", "--tracking-uri", uri, *args],
        cwd=path.parent,
        stdout=open(path.parent / f"{log}.out", "wb"),
        stderr=open(path.parent / log, "ab"),
        start_new_session=True,
        env={**os.environ, **RAY_ENV},
    )


def wait_driver(driver: subprocess.Popen, path: Path, timeout: float, log: str = "driver.log") -> dict:
    try:
        rc = driver.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(driver.pid)
        driver.wait()
        raise AssertionError(
            f"the driver ran past {timeout} s:\n{(path.parent / log).read_text()[-3000:]}"
        ) from None
    assert rc == 0, f"the driver exited {rc}:\n{(path.parent / log).read_text()[-3000:]}"
    lines = (path.parent / f"{log}.out").read_text().splitlines()  # Ray prints (raylet) notes here too
    return json.loads(next(line for line in reversed(lines) if line.startswith("{")))


def runs(uri: str, experiment: str = "faults") -> tuple[list, list]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    found = client.search_runs([exp.experiment_id], max_results=5000)
    parents = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
    return parents, [r for r in found if "mlflow.parentRunId" in r.data.tags]


def trials(tmp_path: Path, study: str = "faults") -> dict[str, list[optuna.trial.FrozenTrial]]:
    """Cell key -> its Optuna trials, read from the journal the driver writes."""
    from orchestrator.sweep.search import open_storage

    journal = tmp_path / "runs" / study / "optuna.journal"
    if not journal.exists():
        return {}
    storage = open_storage(str(journal))
    return {
        s.study_name.split("/", 1)[1]: optuna.load_study(
            study_name=s.study_name, storage=storage
        ).get_trials()
        for s in optuna.get_all_study_summaries(storage)
        if not s.study_name.startswith(HOLD_STUDY_PREFIX)
    }
