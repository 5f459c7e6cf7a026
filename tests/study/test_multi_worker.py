"""A run that spans several workers, through `grokscale run` on a real local Ray: Ray Train's
TorchTrainer with two CPU workers over gloo, the same code path a multi-GPU run takes.

  - a 2-worker run and a 1-worker run of the same spec and global batch give the same curve to
    float tolerance;
  - a worker SIGKILLed mid-run: Ray Train restarts the group, which resumes from rank 0's last
    checkpoint, and no step is logged twice.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from support import cli
from support.cli import GROKSCALE

pytestmark = pytest.mark.slow

STUDY = {
    "name": "mw",
    "task": {"name": "modular", "p": 23},
    "model": {"family": "transformer", "n_layer": 1, "n_head": 4, "layer_norm": False},
    "train": {"steps": 200, "eval_every": 50, "lr": 3e-3, "batch_size": 64, "checkpoint_every": 50},
    "grid": {"n": [{"d_model": 32}], "d": [0.5], "seeds": [0]},
    "search": {
        "sampler": "random",
        "trials_per_cell": 1,
        "space": {"train.weight_decay": {"type": "categorical", "choices": [0.5]}},
    },
    "objectives": [{"metric": "max_val_acc", "direction": "maximize"}],
    "ray": {"num_cpus": 2},
}


def the_run(where: Path):
    client = MlflowClient(cli.sqlite_uri(where))
    exp = client.get_experiment_by_name(STUDY["name"])
    runs = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
    assert len(runs) == 1
    return client, runs[0]


def run_study(where: Path, **sections) -> None:
    path = cli.write_study(where, cli.merged(STUDY, **sections))
    out = cli.grokscale("run", str(path), "--quiet", "--json", "--no-report", cwd=where, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1])["completed"] == 1


def test_two_workers_give_the_one_worker_curve(tmp_path):
    curves = {}
    for workers in (1, 2):
        where = tmp_path / f"w{workers}"
        where.mkdir()
        run_study(where, resources={"cpus": 1, "workers": workers})
        client, run = the_run(where)
        assert run.data.tags["grokscale.runtime.world_size"] == str(workers)
        curves[workers] = {
            k: [m.value for m in client.get_metric_history(run.info.run_id, k)]
            for k in ("train_loss", "val_loss", "val_acc")
        }
        assert len(client.get_metric_history(run.info.run_id, "tokens_per_s")) == 4  # every evaluation
    for key, one in curves[1].items():
        two = curves[2][key]
        assert len(one) == len(two) == 4
        assert all(math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6) for a, b in zip(one, two)), key


def _train_workers() -> list[int]:
    """The pids of Ray Train's worker processes on this machine (their process title says so)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if b"RayTrainWorker" in cmdline:
                pids.append(int(entry.name))
    return sorted(pids)


def _checkpoint_step(where: Path) -> int:
    import torch

    for path in where.glob("runs/mw/checkpoints/**/checkpoint.pt"):
        try:
            return int(torch.load(path, weights_only=False)["step"])
        except Exception:  # noqa: BLE001 - mid-rename: read it at the next look
            return 0
    return 0


def test_a_killed_worker_restarts_the_group_from_its_checkpoint(tmp_path):
    # Long enough that the kill lands mid-run: it is sent once the step-200 checkpoint exists.
    path = cli.write_study(
        tmp_path,
        cli.merged(
            STUDY,
            resources={"cpus": 1, "workers": 2},
            train={"steps": 3000, "eval_every": 100, "checkpoint_every": 100},
        ),
    )
    driver = subprocess.Popen(
        [*GROKSCALE, "run", str(path), "--quiet", "--json", "--no-report"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while _checkpoint_step(tmp_path) < 200:
            assert driver.poll() is None, driver.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no checkpoint in 300 s"
            time.sleep(0.2)
        workers = _train_workers()
        assert len(workers) == 2, workers
        os.kill(workers[-1], signal.SIGKILL)
        killed_at = _checkpoint_step(tmp_path)
        assert killed_at < 3000, "the run ended before the kill"
        out, err = driver.communicate(timeout=600)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, err[-3000:]
    assert json.loads(out.strip().splitlines()[-1])["completed"] == 1
    client, run = the_run(tmp_path)
    assert run.data.tags["grokscale.status"] == "completed"
    assert int(run.data.tags["grokscale.resumed_from_step"]) >= 200  # it resumed, not restarted
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")]
    assert steps == list(range(100, 3001, 100))  # every evaluation once: no step twice, none lost
