"""The training loop: bitwise reproducibility, resume, divergence, success-stop, the hook."""

import json
import subprocess
import sys

import pytest

from trainers import TrainSpec, train

TINY = {
    "task": {"p": 23, "train_fraction": 0.5},
    "model": {"d_model": 32, "n_head": 4, "layer_norm": False},
    "train": {"steps": 120, "eval_every": 20, "warmup_steps": 10},
    "seed": 3,
}
# Minibatches, dropout and Grokfast: every source of state a checkpoint has to carry.
STATEFUL = {
    **TINY,
    "model": {**TINY["model"], "dropout": 0.1},
    "train": {**TINY["train"], "batch_size": 64, "grokfast": True, "checkpoint_every": 40},
}


def spec(data: dict, **train_updates) -> TrainSpec:
    return TrainSpec.model_validate({**data, "train": {**data["train"], **train_updates}})


def test_same_spec_same_history_bitwise():
    a, b = train(spec(STATEFUL)), train(spec(STATEFUL))
    assert a.history == b.history and a.steps == 120
    other_seed = train(TrainSpec.model_validate({**STATEFUL, "seed": 4}))
    assert other_seed.history["val_loss"] != a.history["val_loss"]


def test_same_history_in_a_separate_process():
    here = train(spec(STATEFUL))
    flags = [
        "--seed",
        "3",
        "--task.p",
        "23",
        "--task.train_fraction",
        "0.5",
        "--model.d_model",
        "32",
        "--model.n_head",
        "4",
        "--model.layer_norm",
        "false",
        "--model.dropout",
        "0.1",
        "--train.steps",
        "120",
        "--train.eval_every",
        "20",
        "--train.warmup_steps",
        "10",
        "--train.batch_size",
        "64",
        "--train.grokfast",
        "true",
        "--train.checkpoint_every",
        "40",
    ]
    out = subprocess.run(
        [sys.executable, "-m", "trainers", *flags, "--json", "--quiet"],
        capture_output=True,
        text=True,
        check=True,
    )
    there = json.loads(out.stdout)
    assert there["history"] == here.history
    assert TrainSpec.model_validate(there["spec"]) == spec(STATEFUL)


class Crash(Exception):
    pass


def test_resumed_run_equals_uninterrupted(tmp_path):
    whole = train(spec(STATEFUL))

    def crash_at_100(record):
        if record["step"] == 100:
            raise Crash  # as if the process died: the last checkpoint is step 80

    with pytest.raises(Crash):
        train(spec(STATEFUL), report=crash_at_100, checkpoint_dir=tmp_path)
    resumed = train(spec(STATEFUL), checkpoint_dir=tmp_path)
    assert resumed.resumed_from_step == 80
    assert resumed.history == whole.history
    assert resumed.events == whole.events


def test_finished_run_is_not_trained_again(tmp_path):
    first = train(spec(TINY, success_stop_evals=1, val_threshold=0.01), checkpoint_dir=tmp_path)
    again = train(spec(TINY, success_stop_evals=1, val_threshold=0.01), checkpoint_dir=tmp_path)
    assert first.steps == 20 and again.resumed_from_step == 20 and again.steps == 20
    assert again.history == first.history and again.reason == first.reason


def test_checkpoint_of_another_spec_is_ignored(tmp_path):
    train(spec(STATEFUL), checkpoint_dir=tmp_path)
    other = train(spec(STATEFUL, lr=2e-3), checkpoint_dir=tmp_path)
    assert other.resumed_from_step == 0 and other.steps == 120


def test_divergence_is_a_status_not_an_exception():
    # A learning rate of 1e5 overflows the training loss to inf on the second step (measured).
    result = train(spec(TINY, lr=1e5, warmup_steps=0, eval_every=1))
    assert result.status == "diverged" and result.events.diverged_step == 2 and result.steps == 2
    assert "inf" in result.reason or "nan" in result.reason
    assert result.history["step"] == [1]  # what came before is kept


def test_success_stop_and_events():
    # A threshold of 0.01 is reached at the first evaluation: stop after 2 evaluations above it.
    result = train(spec(TINY, val_threshold=0.01, success_stop_evals=2))
    assert result.status == "completed" and "success-stop" in result.reason
    assert result.events.generalization_step == 20 and result.steps == 40


def test_report_hook_sees_every_evaluation_and_can_stop():
    seen = []
    result = train(spec(TINY), report=lambda r: seen.append(r["step"]) or r["step"] >= 60)
    assert seen == [20, 40, 60] and result.status == "stopped" and result.steps == 60
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "weight_norm", "step"):
        assert len(result.history[key]) == 3


def test_sequence_task_reports_continuous_metrics():
    result = train(
        TrainSpec.model_validate(
            {
                "task": {"name": "addition", "n_digits": 2, "n_train": 256, "n_val": 128},
                "model": {"d_model": 32, "n_head": 4},
                "train": {"steps": 20, "eval_every": 10, "batch_size": 64},
            }
        )
    )
    final = result.final
    assert 0 <= final["val_acc"] <= final["val_token_acc"] <= 1  # exact match never beats per-digit
    assert final["val_answer_logprob"] < 0
    assert result.n_params["total"] == result.n_params["embedding"] + result.n_params["non_embedding"]


def test_cli_rejects_bad_fields():
    out = subprocess.run(
        [sys.executable, "-m", "trainers", "--task.p", "12", "--task.op", "div"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "task" in out.stderr and "prime" in out.stderr
