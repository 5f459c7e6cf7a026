"""A full disk while checkpointing: the run fails as data with a clear reason, its
last whole checkpoint is left as it was, and the study goes on. The disk is real: a tmpfs of a
few kilobytes mounted for the test (skipped where this machine does not let us mount one)."""

from __future__ import annotations

import subprocess
import uuid

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from support.cli import grokscale, sqlite_uri, write_study

STUDY = {
    "name": "fulldisk",
    "task": {"name": "modular", "p": 23},
    "model": {"family": "transformer", "n_layer": 1, "n_head": 4, "d_model": 32, "layer_norm": False},
    "train": {"steps": 60, "eval_every": 20, "checkpoint_every": 20},
    "grid": {"n": [{"d_model": 32}], "d": [0.3, 0.5], "seeds": [0]},
    "search": {
        "sampler": "random",
        "trials_per_cell": 1,
        "space": {"train.weight_decay": {"type": "float", "low": 0.1, "high": 3.0, "log": True}},
    },
    "objectives": [{"metric": "max_val_acc", "direction": "maximize"}],
    "pack": {"mode": "off"},
    "ray": {"num_cpus": 2},
}


@pytest.fixture
def tiny_disk(tmp_path):
    mount = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
def test_a_full_disk_fails_the_run_as_data_and_the_study_goes_on(tmp_path, tiny_disk):
    study = write_study(tmp_path, STUDY, checkpoints=str(tiny_disk))
    out = grokscale("run", study, "--quiet", "--no-report", cwd=tmp_path, timeout=600)
    assert out.returncode == 1, (out.stdout + out.stderr)[-3000:]  # trials failed: exit 1, not a crash
    assert "2 failed" in out.stdout and "Traceback" not in out.stderr
    client = MlflowClient(sqlite_uri(tmp_path))
    everything = client.search_runs([client.get_experiment_by_name("fulldisk").experiment_id])
    runs = [r for r in everything if "grokscale.run_key" in r.data.tags]
    assert len(runs) == 2
    for run in runs:
        assert run.data.tags["grokscale.status"] == "failed"
        assert "No space left on device" in run.data.tags["grokscale.reason"]
        assert "could not write the checkpoint" in run.data.tags["grokscale.reason"]
    assert not list(tiny_disk.rglob("*.tmp"))  # no partial checkpoint left behind
    # The study goes on: with room again, the next trials of both cells train and complete.
    out = grokscale(
        "run",
        study,
        "--quiet",
        "--no-report",
        "--set",
        "search.trials_per_cell=2",
        "--set",
        f"checkpoints={tmp_path / 'room'}",
        cwd=tmp_path,
        timeout=600,
    )
    assert out.returncode == 0 and "2 completed" in out.stdout, (out.stdout + out.stderr)[-3000:]
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "runs" / "fulldisk" / "optuna.journal")))
    states = sorted(
        t.state.name
        for s in optuna.get_all_study_summaries(storage)
        if not s.study_name.startswith("grokscale.hold")
        for t in optuna.load_study(study_name=s.study_name, storage=storage).trials
    )
    assert states == ["COMPLETE", "COMPLETE", "FAIL", "FAIL"]
