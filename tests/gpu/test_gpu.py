"""The loop on a real GPU: skipped on a machine without CUDA (every CI machine); run by
benchmarks/gpu_checks.sh on a GPU machine. The CPU tests of the same code paths are in
tests/unit/test_loop_scale.py."""

import math

import pytest
import torch

from trainers import TrainSpec, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")

GPT = {
    "task": {"name": "addition", "n_digits": 3, "n_train": 2048, "n_val": 256},
    "model": {"family": "gpt", "n_layer": 2, "aspect": 64, "head_dim": 32},
    "train": {"steps": 60, "eval_every": 20, "batch_size": 128, "warmup_steps": 5, "lr": 3e-3},
    "device": "cuda",
    "seed": 0,
}


def spec(**train) -> TrainSpec:
    return TrainSpec.model_validate({**GPT, "train": {**GPT["train"], **train}})


def test_auto_is_bf16_with_tf32_and_a_table_peak():
    r = train(spec())
    assert r.runtime["precision"] == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")
    assert r.runtime["determinism"]["tf32_matmul"] is True
    assert r.runtime["device_name"] == torch.cuda.get_device_name()
    assert r.history["train_loss"][-1] < r.history["train_loss"][0]
    assert all(0 < m < 1 for m in r.throughput["mfu"])


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_every_precision_trains(precision):
    r = train(spec(precision=precision))
    assert r.status == "completed" and all(math.isfinite(v) for v in r.history["val_loss"])


def test_repeatable_to_float_tolerance():
    a, b = train(spec()), train(spec())
    assert all(math.isclose(x, y, rel_tol=1e-3) for x, y in zip(a.history["val_loss"], b.history["val_loss"]))


def test_micro_batches_match_the_whole_batch():
    a, b = train(spec(precision="fp32")), train(spec(precision="fp32", micro_batch=32))
    assert all(math.isclose(x, y, rel_tol=1e-3) for x, y in zip(a.history["val_loss"], b.history["val_loss"]))


def test_compile_on():
    r = train(spec(compile="on"))
    assert r.runtime["compiled"] is True and r.status == "completed"
