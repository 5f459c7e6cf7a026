"""Faults on a study of the researcher's own trainer (examples/own_trainer, trainers/protocol.py),
on real components: a local Ray, an Optuna journal, an MLflow SQLite store.

- its worker SIGKILLed twice mid-run: Ray retries the task and the function resumes from the
  checkpoint it wrote itself; the curve in MLflow is whole, no step twice, and equals an
  uninterrupted run bit for bit (what `grokscale reproduce` compares);
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
from orchestrator.sweep.user_trainer import RESULT_FILE
from trainers.checkpoint import CHECKPOINT_NAME
from trainers.protocol import RunConfig, UserSpec, grokscale_train
from trainers.spec import TrainSpec

from support.cli import REPO, sqlite_uri
from support.driver import runs, start_driver, wait_driver
from support.processes import kill_tree, train_workers, wait_gone
from support.races import Race, retry_races

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
@retry_races()
def test_worker_killed_twice_the_user_trainer_resumes_from_its_own_checkpoint(tmp_path, monkeypatch):
    steps, every = 100, 10
    study = yaml.safe_load((EXAMPLE / "study.yaml").read_text())
    study.update(name="faults", workdir=str(tmp_path / "runs"), tracking={"uri": sqlite_uri(tmp_path)},
                 ray={"num_cpus": 1, "max_retries": 5})
    # One run of ~5 s of training: 100 full-batch steps, paced so the kills land mid-run.
    study["train"] = {**study["train"], "steps": steps, "eval_every": every, "sleep_per_step": 0.05,
                      "success_stop_evals": None}
    study["grid"] = {"n": [{"width": 32}], "d": [0.5], "seeds": [0]}
    study["search"]["trials_per_cell"] = 1
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    monkeypatch.setenv("PYTHONPATH", f"{EXAMPLE}{os.pathsep}{REPO}")  # as the README runs it
    uri = sqlite_uri(tmp_path)
    driver = start_driver(path, uri)
    kills: list[int] = []  # the checkpoint step each retry resumes from
    try:
        deadline = time.monotonic() + 240
        while len(kills) < 2 and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
            found = list((tmp_path / "runs").rglob(CHECKPOINT))
            if not found or list(found[0].parent.glob(RESULT_FILE)):
                continue
            # Past its first checkpoint, and past the one the last kill left: each kill loses work.
            if _checkpoint_step(found[0]) < (kills[-1] if kills else 0) + 2 * every:
                continue
            workers = train_workers(driver.pid)
            if len(workers) != 1:
                continue
            try:
                os.kill(workers[0], signal.SIGKILL)
            except ProcessLookupError:
                continue
            wait_gone(workers[0])
            if list(found[0].parent.glob(RESULT_FILE)):
                raise Race("the kill came after the run had finished")
            kills.append(_checkpoint_step(found[0]))  # what Ray's retry resumes from
        if len(kills) < 2:
            raise Race(f"the run ended after {len(kills)} kills (driver rc {driver.poll()})")
        counts = wait_driver(driver, path, timeout=240)
    finally:
        if driver.poll() is None:
            kill_tree(driver.pid)
    assert counts["completed"] == 1 and counts["failed"] == 0, counts
    assert 0 < kills[0] < kills[1] < steps, kills

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
    report = reproduce(run.info.run_id, uri, trust_recorded_code=True)
    assert report.match, report.table()
    assert {r.metric for r in report.rows} >= {"val_acc", "train_loss", "final.val_acc", "final.n_params_total"}
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
        spec = TrainSpec.model_validate({"task": {"name": "modular", "p": 23}, "train": {**cfg, "lr": 3e-3},
                                         "model": {"n_layer": 1, "n_head": 4, "d_model": 16, "layer_norm": False}})
        return spec.model_dump_json(), CHECKPOINT_NAME
    config = RunConfig(n={"width": 32}, d=0.5, seed=0, steps=60, eval_every=10, task={"p": 23},
                       model={"d_embed": 16}, train=cfg)
    spec = UserSpec(trainer="mytrainer.train:run", sys_path=[str(EXAMPLE)], config=config.to_dict(),
                    train=grokscale_train(cfg))
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
@pytest.mark.parametrize(("trainer", "how"), [("own", "pruned"), ("own", "success-stopped"), ("built-in", "pruned")])
def test_a_finished_run_asked_again_keeps_its_status_reason_and_stop_kind(tmp_path, local_ray, trainer, how):
    from orchestrator.sweep.launcher import Inbox
    from orchestrator.sweep.worker import train_task

    if how == "pruned":  # the objective rule: not generalized by step 20, so it cannot beat the cell's best
        (spec, ckpt), rules = _spec(trainer, val_threshold=0.99), (
            StopRule(StopKind.OBJECTIVE, "pruned: no val by step 20", min_step=20, event="val"),)
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
        assert first["status"] == "completed" and "success-stop" in first["reason"] and "stop_kind" not in first
