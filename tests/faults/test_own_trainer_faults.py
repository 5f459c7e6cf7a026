"""Faults on a study of the researcher's own trainer (examples/own_trainer, trainers/protocol.py),
on real components: a local Ray, an Optuna journal, an MLflow SQLite store.

- its worker SIGKILLed twice mid-run: Ray retries the task and the function resumes from the
  checkpoint it wrote itself; the curve in MLflow is whole, no step twice, and equals an
  uninterrupted run bit for bit (what `grokscale reproduce` compares). Each kill lands while the
  run waits at a gate the test opens afterwards (tests/support/gates.py: the example's function
  run with its report gated), never at a moment guessed from its speed;
- a run that already ended (success-stopped, or pruned by a stopping rule) asked again, as a
  rerun of a study whose driver died before recording it asks it: its result comes back whole,
  status, reason and stop kind, without calling the function again (a built-in run too).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest
import ray
import torch
import yaml
from mlflow.tracking import MlflowClient

from orchestrator.report.reproduce import reproduce
from orchestrator.store import names
from orchestrator.store.names import StopKind
from orchestrator.sweep.stopping import StopRule
from trainers.checkpoint import CHECKPOINT_NAME
from trainers.protocol import RunConfig, UserSpec, grokscale_train
from trainers.spec import TrainSpec

from support.cli import REPO, sqlite_uri
from support.driver import runs, start_driver, wait_driver
from support.gates import TESTS, Gates
from support.processes import kill_tree, wait_gone

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

EXAMPLE = REPO / "examples" / "own_trainer"
CHECKPOINT = "mytrainer.pt"  # the example's own checkpoint (mytrainer/train.py)


def _checkpoint_step(path: Path) -> int:
    """The step of the example's checkpoint; 0 when there is none yet (it is written by rename,
    so never half)."""
    try:
        return int(torch.load(path, weights_only=True)["step"])
    except (OSError, EOFError, RuntimeError):
        return 0


@pytest.mark.slow
def test_worker_killed_twice_the_user_trainer_resumes_from_its_own_checkpoint(tmp_path, monkeypatch):
    steps, every, at = 100, 10, (30, 70)
    gates = Gates(tmp_path / "runs" / "checkpoints", tmp_path / "gates")  # the study's workdir: runs/
    study = yaml.safe_load((EXAMPLE / "study.yaml").read_text())
    study.update(
        name="faults",
        workdir=str(tmp_path / "runs"),
        tracking={"uri": sqlite_uri(tmp_path)},
        ray={"num_cpus": 1, "max_retries": 5},
        trainer="support.gates:wrapped",
    )
    # One run of the example's function, its report gated: it waits before it reports step 30
    # (its checkpoint that of step 20), then step 70 (60); each kill lands there.
    study["train"] = {
        **study["train"],
        "steps": steps,
        "eval_every": every,
        "success_stop_evals": None,
        "gated_trainer": "mytrainer.train:run",
        **gates.train(*at),
    }
    study["grid"] = {"n": [{"width": 32}], "d": [0.5], "seeds": [0]}
    study["search"]["trials_per_cell"] = 1
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(EXAMPLE), TESTS, str(REPO)])
    )  # as the README runs it
    monkeypatch.syspath_prepend(str(EXAMPLE))  # reproduce() below runs the recorded function here
    uri = sqlite_uri(tmp_path)
    driver = start_driver(path, uri)
    kills: list[int] = []  # the checkpoint step each retry resumes from
    try:
        for gate in at:  # the first attempt waits at 30; its retry passes 30 (opened) and waits at 70
            ((key, waiting),) = gates.wait_for(
                f"the run at its gate of step {gate}",
                lambda gate=gate: [(k, g) for k, g in gates.waiting().items() if g["step"] == gate],
                alive=lambda: driver.poll() is None,
                log=tmp_path / "driver.log",
            )
            os.kill(waiting["pid"], signal.SIGKILL)
            wait_gone(waiting["pid"])
            kills.append(_checkpoint_step(gates.runs / key / CHECKPOINT))  # what Ray's retry resumes from
            gates.open(key, gate)
        counts = wait_driver(driver, path, timeout=240)
    finally:
        if driver.poll() is None:
            kill_tree(driver.pid)
    assert counts["completed"] == 1 and counts["failed"] == 0, counts
    assert kills == [gate - every for gate in at], kills  # each past a checkpoint, short of the end

    _, children = runs(uri)
    assert len(children) == 1
    run = children[0]
    assert run.data.tags[names.TAG_STATUS] == "completed", run.data.tags.get(names.TAG_REASON)
    assert run.data.tags[names.TAG_ATTEMPTS] == "1"  # Ray's retries, not the driver's
    # The last retry's first report came right after the checkpoint it loaded: it did not start
    # from step 0 (it would have reported step 10 first, and this would read 0).
    assert int(run.data.tags[names.TAG_RESUMED_FROM_STEP]) == kills[-1]
    client = MlflowClient(uri)
    for metric in ("val_acc", "train_loss"):
        logged = [m.step for m in client.get_metric_history(run.info.run_id, metric)]
        assert sorted(logged) == list(range(every, steps + 1, every)), (metric, logged)  # whole, none twice
    assert run.data.metrics[f"{names.FINAL_PREFIX}steps"] == steps

    # Resumed twice, it equals one uninterrupted run bit for bit: its checkpoint held all of its
    # state (`grokscale reproduce`'s own function, here: the command is tested in test_reproduce.py).
    gates.open_all()  # the replay runs the recorded spec, gates and all
    report = reproduce(run.info.run_id, uri, trust_recorded_code=True)
    assert report.match, report.table()
    assert {r.metric for r in report.rows} >= {
        "val_acc",
        "train_loss",
        "final.val_acc",
        "final.n_params_total",
    }
    print(f"\ncheckpoint steps the retries resumed from: {kills}")


# ------------------------------------------------------------------------------ a rerun of a finished run


@pytest.fixture(scope="module")
def local_ray():
    """A real local Ray for this module's tasks; its workers import the example through the
    spec's sys_path, as they do under `grokscale run`."""
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _spec(trainer: str, **train) -> tuple[str, str]:
    """A 60-step run of the example (own) or of the built-in trainer, as the JSON a worker gets,
    and the name of the checkpoint it writes."""
    cfg = {"steps": 60, "eval_every": 10, **train}
    if trainer == "built-in":
        spec = TrainSpec.model_validate(
            {
                "task": {"name": "modular", "p": 23},
                "train": {**cfg, "lr": 3e-3},
                "model": {"n_layer": 1, "n_head": 4, "d_model": 16, "layer_norm": False},
            }
        )
        return spec.model_dump_json(), CHECKPOINT_NAME
    config = RunConfig(
        n={"width": 32},
        d=0.5,
        seed=0,
        steps=60,
        eval_every=10,
        task={"p": 23},
        model={"d_embed": 16},
        train=cfg,
    )
    spec = UserSpec(
        trainer="mytrainer.train:run",
        sys_path=[str(EXAMPLE)],
        config=config.to_dict(),
        train=grokscale_train(cfg),
    )
    return spec.model_dump_json(), CHECKPOINT


def _streamed(inbox, n: int, timeout_s: float = 30.0) -> list[int]:
    """The steps posted to the inbox, once `n` have arrived or after `timeout_s` (a worker's posts
    are fire and forget: they may land after its task has returned)."""
    steps: list[int] = []
    deadline = time.monotonic() + timeout_s
    while len(steps) < n and time.monotonic() < deadline:
        steps += [int(record["step"]) for _, record in ray.get(inbox.take.remote())]
        time.sleep(0.1)
    return steps


@pytest.mark.slow
@pytest.mark.parametrize(
    ("trainer", "how"), [("own", "pruned"), ("own", "success-stopped"), ("built-in", "pruned")]
)
def test_a_finished_run_asked_again_keeps_its_status_reason_and_stop_kind(tmp_path, local_ray, trainer, how):
    from orchestrator.sweep.launcher import Inbox
    from orchestrator.sweep.worker import train_task

    if how == "pruned":  # the objective rule: not generalized by step 20, so it cannot beat the cell's best
        (spec, ckpt), rules = (
            _spec(trainer, val_threshold=0.99),
            (StopRule(StopKind.OBJECTIVE, "pruned: no val by step 20", min_step=20, event="val"),),
        )
    else:  # two evaluations at or above a threshold every run reaches: success-stop at step 20
        (spec, ckpt), rules = _spec(trainer, val_threshold=0.001, success_stop_evals=2), ()
    inbox = Inbox.remote()
    first = ray.get(train_task.remote(spec, str(tmp_path), inbox, "run", rules), timeout=300)
    assert first["steps"] == 20, first.get("reason")
    # Streamed live as it trained (the success-stopping evaluation is not: as the built-in loop).
    assert _streamed(inbox, 2 if how == "pruned" else 1) == ([10, 20] if how == "pruned" else [10])
    trained = (tmp_path / ckpt).stat().st_mtime_ns

    # The driver died before recording it; the rerun asks the same run again, with no rules yet.
    again = ray.get(train_task.remote(spec, str(tmp_path), inbox, "run", ()), timeout=300)
    assert _streamed(inbox, 1, timeout_s=2.0) == [] and (tmp_path / ckpt).stat().st_mtime_ns == trained
    for key in ("status", "reason", "steps", "history", "events", "n_params", "stop_kind"):
        assert again.get(key) == first.get(key), key
    if how == "pruned":
        assert first["status"] == "stopped" and first["stop_kind"] == StopKind.OBJECTIVE.value
        assert first["reason"] == "pruned: no val by step 20 (stopped at step 20)"
    else:
        assert (
            first["status"] == "completed" and "success-stop" in first["reason"] and "stop_kind" not in first
        )
