"""A task and a model of the user's, named by import path (trainers/spec.py: the protocol), through
a real `grokscale run` on a local Ray, Optuna journal and MLflow store in tmp_path: the workers
import tests/support/usercode from PYTHONPATH, as a user's package is found."""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import pytest
import yaml
from mlflow.tracking import MlflowClient

from orchestrator.store import names

from support.cli import REPO, grokscale, sqlite_uri


@pytest.fixture
def ray_tmp():
    path = tempfile.mkdtemp(prefix="gs-", dir="/tmp")  # Ray's socket paths must stay short
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
def test_own_task_and_model_run_as_a_study(tmp_path, ray_tmp):
    study = {
        "name": "own_code",
        "task": {"name": "support.usercode.tasks:Copying", "length": 4},
        "model": {"family": "support.usercode.models:TinyGRU"},
        "train": {"steps": 60, "eval_every": 20, "batch_size": 64, "lr": 1e-2, "weight_decay": 0.0},
        "grid": {"n": [{"width": 32}], "d": [512], "seeds": [0]},
        "search": {"trials_per_cell": 1},
        "workdir": str(tmp_path / "runs"),
        "tracking": {"uri": sqlite_uri(tmp_path)},
        "ray": {"num_cpus": 2},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'tests'}{os.pathsep}{REPO}", "RAY_TMPDIR": ray_tmp}
    out = grokscale("run", path, "--quiet", "--no-report", cwd=tmp_path, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]

    client = MlflowClient(sqlite_uri(tmp_path))
    exp = client.get_experiment_by_name("own_code")
    children = [r for r in client.search_runs([exp.experiment_id]) if names.PARENT_RUN in r.data.tags]
    assert len(children) == 1
    run = children[0]
    assert run.data.tags[names.TAG_STATUS] == "completed", run.data.tags.get(names.TAG_REASON)
    assert (
        float(run.data.params[names.PARAM_N_PARAMS]) == 6758
    )  # the hand count (tests/unit/test_import_paths.py)
    assert int(run.data.params[names.PARAM_N_TRAIN]) == 512
    spec = json.loads(run.data.params[names.PARAM_SPEC_JSON])
    assert spec["task"] == {
        "name": "support.usercode.tasks:Copying",
        "length": 4,
        "n_symbols": 6,
        "n_train": 512,
        "n_val": 256,
    }
    curve = client.get_metric_history(run.info.run_id, "val_acc")
    assert [m.step for m in curve] == [20, 40, 60]
    assert curve[-1].value > 0.05  # chance is 6^-4 = 0.0008 an answer
