"""The GPU-grade loop, checked on CPU: precision, micro-batches, batch in tokens, clipping,
throughput and the runtime record, and data parallelism over a real gloo process group."""

import faulthandler
import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from trainers import TrainSpec, train
from trainers.core import THROUGHPUT_KEYS
from trainers.device import PEAK_FLOPS
from trainers.tasks import make_task

# A sequence task with labelled and unlabelled positions (addition) and minibatches.
SEQ = {
    "task": {"name": "addition", "n_digits": 2, "n_train": 256, "n_val": 64},
    "model": {"d_model": 32, "n_head": 4, "n_layer": 1},
    "train": {"steps": 30, "eval_every": 10, "warmup_steps": 5, "batch_size": 32, "weight_decay": 0.1},
    "seed": 1,
}


def spec(**train_updates) -> TrainSpec:
    return TrainSpec.model_validate({**SEQ, "train": {**SEQ["train"], **train_updates}})


def close(a: list[float], b: list[float], rel: float = 1e-4) -> bool:
    return len(a) == len(b) and all(math.isclose(x, y, rel_tol=rel, abs_tol=1e-6) for x, y in zip(a, b))


def test_fp32_on_cpu_is_the_default_and_is_recorded():
    r = train(spec())
    assert (
        r.runtime["precision"] == "fp32" and r.runtime["compiled"] is False and r.runtime["world_size"] == 1
    )
    assert r.runtime["peak_source"].startswith("probe:") and r.runtime["peak_flops"] > 0
    assert r.runtime["determinism"]["threads"] == 1


def test_bf16_runs_on_cpu_and_stays_near_fp32():
    fp32, bf16 = train(spec()), train(spec(precision="bf16"))
    assert bf16.runtime["precision"] == "bf16"
    assert all(math.isfinite(v) for v in bf16.history["train_loss"])
    assert bf16.history["train_loss"] != fp32.history["train_loss"]  # it did compute in bf16
    assert close(bf16.history["train_loss"], fp32.history["train_loss"], rel=0.05)
    assert train(spec(precision="bf16")).history == bf16.history  # still repeatable


def test_fp16_uses_a_grad_scaler_and_trains():
    r = train(spec(precision="fp16"))
    assert r.runtime["precision"] == "fp16" and r.status == "completed"
    assert r.history["train_loss"][-1] < r.history["train_loss"][0]


def test_micro_batches_accumulate_to_the_whole_batch():
    whole, micro = train(spec()), train(spec(micro_batch=8))
    assert close(micro.history["train_loss"], whole.history["train_loss"])
    assert close(micro.history["val_loss"], whole.history["val_loss"])
    # The last micro-batch may be smaller: 32 = 12 + 12 + 8, and the loss is still the batch's.
    assert close(train(spec(micro_batch=12)).history["val_loss"], whole.history["val_loss"])


def test_batch_tokens_is_batch_size_times_seq_len():
    seq_len = make_task(spec().task, 1).seq_len
    assert train(spec(batch_size=None, batch_tokens=32 * seq_len)).history == train(spec()).history
    with pytest.raises(ValueError, match="multiple of the task's sequence length"):
        train(spec(batch_size=None, batch_tokens=32 * seq_len + 1))
    with pytest.raises(ValueError, match="not both"):
        spec(batch_tokens=64)


def test_grad_clip_changes_the_update_only_when_it_binds():
    free = train(spec())
    assert train(spec(grad_clip=1e9)).history == free.history  # a scale of 1.0: the same bits
    assert train(spec(grad_clip=1e-3)).history["train_loss"] != free.history["train_loss"]


def test_every_evaluation_logs_throughput():
    r = train(spec())
    assert set(r.throughput) == set(THROUGHPUT_KEYS)
    assert all(len(v) == len(r.history["step"]) for v in r.throughput.values())
    tokens_per_step = 32 * make_task(spec().task, 1).seq_len
    for tps, st, mfu in zip(*(r.throughput[k] for k in THROUGHPUT_KEYS)):
        assert tps > 0 and st > 0 and 0 < mfu < 2
        assert math.isclose(tps * st, tokens_per_step, rel_tol=1e-6)
    assert not set(THROUGHPUT_KEYS) & set(r.history)  # history stays what a rerun repeats


def test_peak_table_matches_known_cards():
    names = dict(PEAK_FLOPS)
    assert names["H100"]["bf16"] == pytest.approx(989.4e12) and names["A100"]["bf16"] == pytest.approx(312e12)
    # The specific name must win over the family's: "H100 PCIe" before "H100".
    keys = [k for k, _ in PEAK_FLOPS]
    assert keys.index("H100 PCIe") < keys.index("H100")


def _die_at_step_30(record: dict) -> None:
    if record["step"] == 30:
        os._exit(17)  # as a killed worker: the step-20 checkpoint is the last one


def _rank(
    rank: int,
    size: int,
    init: str,
    train_json: str,
    out: str,
    checkpoint_dir: str | None = None,
    die: bool = False,
) -> None:
    faulthandler.enable()  # a rank that aborts (SIGABRT in gloo, seen once under load) shows where
    os.environ["LOCAL_RANK"] = str(rank)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=size)
    try:
        report = _die_at_step_30 if die else None
        result = train(
            TrainSpec.model_validate_json(train_json), report=report, checkpoint_dir=checkpoint_dir
        )
        if rank == 0:
            torch.save(result.to_dict(), out)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(("micro_batch", "shard"), [(None, False), (6, False), (6, True)])
def test_two_gloo_workers_follow_the_one_worker_curve(tmp_path, micro_batch, shard):
    """The same spec and global batch on one process and on a process group of two (shares of 16
    examples, optionally in micro-batches, replicated by DDP or sharded by FSDP2): the same curve
    to float tolerance."""
    s = spec(micro_batch=micro_batch, shard=shard)
    alone = train(spec())
    out = tmp_path / "rank0.pt"
    mp.spawn(
        _rank, args=(2, f"file://{tmp_path / 'store'}", s.model_dump_json(), str(out)), nprocs=2, join=True
    )
    group = torch.load(out, weights_only=False)
    assert group["runtime"]["world_size"] == 2
    assert group["history"]["step"] == alone.history["step"]
    for key in ("train_loss", "val_loss", "val_acc", "weight_norm"):
        assert close(group["history"][key], alone.history[key]), key


@pytest.mark.parametrize("shard", [False, True])
def test_a_group_killed_mid_run_resumes_from_its_checkpoint(tmp_path, shard):
    """Rank 0 dies after the step-20 checkpoint; the group started again resumes there (a sharded
    run's checkpoint is gathered whole, then sharded again) and ends where an uninterrupted
    group ends."""
    s = spec(micro_batch=8, shard=shard, checkpoint_every=10, steps=40).model_dump_json()
    whole = tmp_path / "whole.pt"
    mp.spawn(_rank, args=(2, f"file://{tmp_path / 's1'}", s, str(whole)), nprocs=2, join=True)
    ckpt, out = tmp_path / "ckpt", tmp_path / "resumed.pt"
    with pytest.raises(mp.ProcessExitedException):
        mp.spawn(
            _rank, args=(2, f"file://{tmp_path / 's2'}", s, str(out), str(ckpt), True), nprocs=2, join=True
        )
    assert not out.exists()
    mp.spawn(_rank, args=(2, f"file://{tmp_path / 's3'}", s, str(out), str(ckpt)), nprocs=2, join=True)
    resumed, whole = torch.load(out, weights_only=False), torch.load(whole, weights_only=False)
    assert resumed["resumed_from_step"] == 20
    assert resumed["history"]["step"] == whole["history"]["step"] == [10, 20, 30, 40]
    for key in ("train_loss", "val_loss", "weight_norm"):
        assert close(resumed["history"][key], whole["history"][key]), key


@pytest.mark.slow
def test_compile_on_gives_the_eager_curve():
    """torch.compile (inductor, a C++ compiler on CPU: ~45 s here) changes kernels, not the math."""
    eager, compiled = train(spec()), train(spec(compile="on"))
    assert compiled.runtime["compiled"] is True and eager.runtime["compiled"] is False
    assert close(compiled.history["val_loss"], eager.history["val_loss"], rel=1e-5)


def test_the_packed_loop_takes_batch_tokens_and_bf16_and_refuses_what_it_cannot_do():
    from trainers.packed import can_pack, train_packed

    seq_len = make_task(spec().task, 1).seq_len
    specs = [spec(weight_decay=w) for w in (0.1, 0.3)]
    by_tokens = [spec(weight_decay=w, batch_size=None, batch_tokens=32 * seq_len) for w in (0.1, 0.3)]
    assert [r.history for r in train_packed(by_tokens)] == [r.history for r in train_packed(specs)]
    bf16 = train_packed([spec(weight_decay=w, precision="bf16") for w in (0.1, 0.3)])
    alone = train(spec(weight_decay=0.1, precision="bf16"))
    assert close(bf16[0].history["val_loss"], alone.history["val_loss"], rel=0.02)
    for bad in ({"micro_batch": 8}, {"grad_clip": 1.0}, {"precision": "fp16"}):
        assert can_pack([spec(**bad), spec(**bad)]) is not None
