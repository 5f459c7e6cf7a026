"""The gpt family (trainers/gpt.py): counts by hand and against the model, FLOPs against torch's
counter, the model protocol, the depth ladder, and training through the real loop and a study.

Parameters of GPTModel(n_layer=1, aspect=8, head_dim=4), vocab_size 10, n_out 7, worked by hand
(d_model = 8 x 1 = 8, two heads of 4, gelu MLP of 4 x 8 = 32):
    embedding:     tok_emb 10 x 8 = 80, unembed 8 x 7 = 56                          -> 136
    one block:     norm1 8 + qkv 3 x 8 x 8 = 192 + proj 8 x 8 = 64 + norm2 8
                   + up 8 x 32 = 256 + down 32 x 8 = 256                             -> 784
    final norm:    8                                                  non_embedding -> 792
    total 928. Tied (vocab_size = n_out = 10): embedding 80 (one matrix), total 872.
    swiglu: hidden 8/3 x 8 = 21.3 up to a multiple of 64 = 64; MLP 3 x 8 x 64 = 1,536,
    so non_embedding = 8 + 192 + 64 + 8 + 1,536 + 8 = 1,816.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from pydantic import ValidationError
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from orchestrator.study import StudyError, format_errors, load_study
from orchestrator.study.grid import build_cells
from trainers import TrainSpec, train
from trainers.flops import flops_for_task, flops_per_example
from trainers.gpt import param_counts, rotary_tables, rotate
from trainers.models import build_model, count_params, init_weights, resolve_shape, shape_counts
from trainers.packed import train_packed
from trainers.spec import GPTModel
from trainers.tasks import make_task
from trainers.tasks.addition import AdditionTask
from trainers.tasks.charlm import CharLMTask
from trainers.tasks.modular import ModularTask

HAND = GPTModel(n_layer=1, aspect=8, head_dim=4)
SMALL = {"aspect": 16, "head_dim": 16}  # d_model 16 x n_layer


def random_model(cfg: GPTModel, vocab_size: int, n_out: int, seq_len: int) -> nn.Module:
    """A model with every parameter random, so that no output is zero by construction (the
    untied readout starts at zero)."""
    torch.manual_seed(0)
    model = build_model(cfg, vocab_size, n_out, seq_len)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.3)
    return model.eval()


def test_counts_by_hand():
    assert (HAND.width, HAND.n_head, HAND.mlp_width) == (8, 2, 32)
    assert count_params(build_model(HAND, 10, 7, 5)).as_dict() == {
        "embedding": 136,
        "non_embedding": 792,
        "total": 928,
    }
    tied = HAND.model_copy(update={"tie_embeddings": True})
    assert count_params(build_model(tied, 10, 10, 5)).as_dict() == {
        "embedding": 80,
        "non_embedding": 792,
        "total": 872,
    }
    swiglu = HAND.model_copy(update={"mlp": "swiglu"})
    assert swiglu.mlp_width == 64 and count_params(build_model(swiglu, 10, 7, 5)).non_embedding == 1816


@pytest.mark.parametrize(
    "cfg",
    [
        HAND,
        GPTModel(n_layer=3, aspect=20, head_dim=8),  # 60 rounds up to d_model 64
        GPTModel(n_layer=2, d_model=48, head_dim=16, mlp="swiglu"),
        GPTModel(n_layer=2, aspect=32, head_dim=16, mlp="swiglu", mlp_ratio=3.0, tie_embeddings=True),
        GPTModel(n_layer=4, aspect=8, head_dim=8, mlp_ratio=2.5),
    ],
)
def test_formula_equals_the_model(cfg):
    vocab, n_out = 13, (13 if cfg.tie_embeddings else 5)
    model = build_model(cfg, vocab, n_out, 9)
    assert count_params(model).as_dict() == param_counts(cfg, vocab, n_out)
    assert sum(p.numel() for p in model.parameters()) == param_counts(cfg, vocab, n_out)["total"]


def test_tied_readout_is_the_embedding():
    model = build_model(HAND.model_copy(update={"tie_embeddings": True}), 10, 10, 5)
    assert model.unembed.weight is model.tok_emb.weight
    init_weights(model, 1.0)
    assert model.unembed.weight.abs().sum() > 0  # a tied readout is not zeroed: it would never move


def test_no_position_table():
    model = build_model(GPTModel(n_layer=2, **SMALL), 11, 11, 8)
    names = [name for name, _ in model.named_parameters()]
    assert not any("pos" in name for name in names)
    assert not any(p.shape[0] == 8 for p in model.parameters())  # nothing sized by seq_len
    assert "cos" not in model.state_dict()  # the rotary tables are not state


def test_rotary_scores_depend_on_relative_position_only():
    # Su et al. (2021): <R_t q, R_s k> is a function of t - s.
    cos, sin = rotary_tables(12, 8)
    q, k = torch.randn(1, 1, 1, 8).expand(1, 1, 12, 8), torch.randn(1, 1, 1, 8).expand(1, 1, 12, 8)
    rq, rk = rotate(q, cos, sin)[0, 0], rotate(k, cos, sin)[0, 0]  # (12, 8): q and k at every position
    torch.testing.assert_close(rq[5] @ rk[2], rq[9] @ rk[6])
    torch.testing.assert_close(rq[3].norm(), q[0, 0, 0].norm())  # a rotation keeps the norm
    assert not torch.allclose(rq[5] @ rk[2], rq[5] @ rk[4])


def test_positions_matter_without_a_table():
    # Without positions a causal model's last output would not see the order of the earlier tokens.
    model = random_model(GPTModel(n_layer=2, **SMALL), 11, 11, 6)
    x = torch.tensor([[1, 2, 3, 4, 5, 6]])
    swapped = torch.tensor([[2, 1, 3, 4, 5, 6]])
    assert not torch.allclose(model(x, last_only=True), model(swapped, last_only=True))


@pytest.mark.parametrize("mlp", ["gelu", "swiglu"])
@pytest.mark.parametrize("tied", [False, True])
def test_last_only_and_causality(mlp, tied):
    model = random_model(GPTModel(n_layer=2, mlp=mlp, tie_embeddings=tied, **SMALL), 11, 11, 7)
    x = torch.randint(0, 11, (4, 7), generator=torch.Generator().manual_seed(1))
    full = model(x)
    assert full.shape == (4, 7, 11) and model(x, last_only=True).shape == (4, 11)
    torch.testing.assert_close(model(x, last_only=True), full[:, -1])
    future = x.clone()
    future[:, 4] = (future[:, 4] + 1) % 11
    changed = model(future)
    torch.testing.assert_close(changed[:, :4], full[:, :4])  # earlier positions do not see position 4
    assert not torch.allclose(changed[:, 4:], full[:, 4:])


def test_init():
    cfg = GPTModel(n_layer=2, **SMALL)
    torch.manual_seed(0)
    model = build_model(cfg, 256, 256, 16)
    init_weights(model, 2.0)
    x = torch.randint(0, 256, (3, 16))
    assert model(x).abs().max() == 0  # a zero readout: the first loss is ln n_out
    assert model.tok_emb.weight.std().item() == pytest.approx(2.0, rel=0.05)  # N(0, 1) x init_scale
    std = model.blocks[0].attn.proj.weight.std().item()
    assert std == pytest.approx(2.0 / 32**0.5 / 2, rel=0.1)  # 1/sqrt(fan_in) / sqrt(2 n_layer) x 2


def test_bad_configs_name_their_field():
    def problems(model: dict) -> list[str]:
        with pytest.raises(ValidationError) as info:
            TrainSpec.model_validate({"model": {"family": "gpt", **model}})
        return format_errors(info.value, model=TrainSpec)

    assert problems({"head_dim": 5}) == [
        "model.head_dim: head_dim must be even (rotary embeddings rotate channel pairs), got 5"
    ]
    assert problems({"d_model": 100, "head_dim": 64}) == [
        "model.d_model: d_model (100) must be a multiple of head_dim (64)"
    ]
    assert problems({"n_head": 4})[0].startswith("model.n_head: ")  # derived, not a field
    assert problems({"mlp": "relu"})[0].startswith("model.mlp: ")
    # Tying needs the readout to predict the task's own tokens: modular has p + 1 inputs, p classes.
    spec = TrainSpec.model_validate({"task": {"p": 23}, "model": {"family": "gpt", "tie_embeddings": True}})
    with pytest.raises(ValueError, match="tie_embeddings.*n_out == vocab_size.*vocab_size 24 and n_out 23"):
        train(spec)


# FlopCounterMode counts every matmul of the gpt (no elementwise attention path here), so the
# formula must match it exactly; the counter runs under the MATH backend (tests/unit/test_flops.py
# says why: its CPU flash kernel has no FLOP rule).
FLOP_CASES = {
    "charlm_gelu": (
        CharLMTask(n_train_tokens=2000, n_val_tokens=1000, seq_len=32),
        GPTModel(n_layer=2, aspect=16, head_dim=16),
    ),
    "charlm_swiglu_tied": (
        CharLMTask(n_train_tokens=2000, n_val_tokens=1000, seq_len=32),
        GPTModel(n_layer=2, aspect=24, head_dim=16, mlp="swiglu", tie_embeddings=True),
    ),
    "modular_last_only": (ModularTask(p=23), GPTModel(n_layer=3, aspect=8, head_dim=8, mlp_ratio=2.0)),
    "addition": (AdditionTask(n_digits=3, n_train=8, n_val=8), GPTModel(n_layer=1, d_model=32, head_dim=8)),
}


@pytest.mark.parametrize("name", FLOP_CASES)
def test_flops_match_torch_flop_counter(name):
    task, cfg = FLOP_CASES[name]
    data = make_task(task, seed=0)
    last_only = data.target == "last"
    model = random_model(cfg, data.vocab_size, data.n_out, data.seq_len).train()
    x = data.x_train[:2]
    flops = flops_for_task(cfg, data)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as forward:
        model(x, last_only=last_only)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as total:
        model(x, last_only=last_only).sum().backward()
    assert forward.get_total_flops() / 2 == flops.forward
    assert total.get_total_flops() / 2 == flops.total
    assert flops.n_matmul == sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))


def test_flops_by_hand():
    # HAND, T = 3, n_out 7: block weights qkv 192 + proj 64 + MLP 512 = 768; N = 768 + 56 = 824.
    # matmul 2 x 3 x 768 = 4,608; attention 2 x (2 x 3 x 3 x 8) = 288; unembed 2 x 8 x 7 x 3 = 336.
    f = flops_per_example(HAND, vocab_size=10, n_out=7, seq_len=3, last_only=False)
    assert (f.n_matmul, f.matmul, f.attention, f.unembed, f.forward) == (824, 4608, 288, 336, 5232)
    assert f.per_token == 6 * f.n_matmul + 12 * 1 * 3 * 8  # Kaplan's 6N, full score matrix
    # last_only: every block on all positions, the readout on one: 2 x 8 x 7 = 112.
    f = flops_per_example(HAND, vocab_size=10, n_out=7, seq_len=3, last_only=True)
    assert (f.matmul, f.attention, f.unembed, f.forward) == (4608, 288, 112, 5008)


def test_resolve_shape_walks_the_depth_ladder():
    base = GPTModel(**SMALL)
    io = (256, 256, 16)
    ladder = [shape_counts(base.model_copy(update={"n_layer": k}), *io).total for k in range(1, 9)]
    assert all(a < b for a, b in zip(ladder, ladder[1:]))  # monotone in n_layer
    for k, n in enumerate(ladder, start=1):
        r = resolve_shape(base, round(n * 1.04), *io)
        assert r.shape == {"n_layer": k} and r.model.width == 16 * k and r.relative_error <= 0.10
        assert r.n_params == count_params(build_model(r.model, *io))
    # Halfway between two rungs of N ~ n_layer^3 is further than 10% from both.
    with pytest.raises(ValueError, match="no gpt n_layer lands within 10%.*at n_layer 3"):
        resolve_shape(base, (ladder[2] + ladder[3]) // 2, *io)
    # An explicit d_model stays: N is a depth at that width.
    r = resolve_shape(GPTModel(d_model=32, head_dim=16), 100_000, *io)
    assert r.model.width == 32 and r.shape == {"n_layer": r.model.n_layer} and r.relative_error <= 0.10


TRAIN = {
    "task": {"name": "charlm", "n_train_tokens": 3000, "n_val_tokens": 1000, "seq_len": 16},
    "model": {"family": "gpt", "n_layer": 2, "aspect": 16, "head_dim": 16},
    "train": {
        "steps": 20,
        "eval_every": 10,
        "batch_size": 16,
        "lr": 3e-3,
        "warmup_steps": 2,
        "weight_decay": 0.0,
    },
}


def test_trains_through_the_real_loop_bitwise_reproducibly():
    spec = TrainSpec.model_validate(TRAIN)
    a, b = train(spec), train(spec)
    loss = a.history["val_loss"]
    assert loss[-1] < loss[0] < 5.55  # ln 256 = 5.55 is the zero readout's loss at step 0
    assert a.history == b.history


# vmap has no batching rule for CPU flash attention and loops over the runs (trainers/packed.py).
@pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")
def test_packs_like_single_runs():
    specs = [TrainSpec.model_validate({**TRAIN, "seed": s}) for s in (0, 1)]
    packed = train_packed(specs)
    assert [r.history["val_loss"] for r in packed] == [train(s).history["val_loss"] for s in specs]


def test_a_study_resolves_target_counts_to_depths(tmp_path: Path):
    io = (256, 256, 16)  # byte-level charlm at 16 positions
    targets = [shape_counts(GPTModel(n_layer=k, **SMALL), *io).total for k in (1, 2)]
    study = {
        "name": "gpt",
        "task": {"name": "charlm", "level": "byte", "seq_len": 16, "n_val_tokens": 2000},
        "model": {"family": "gpt", **SMALL},
        "train": {"steps": 20, "eval_every": 10, "warmup_steps": 2, "batch_size": 8},
        "grid": {"n": targets, "d": [1601]},
        "objectives": [{"metric": "min_val_loss", "direction": "minimize"}],
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    cells = build_cells(load_study(path))
    assert [c.shape for c in cells] == [{"n_layer": 1}, {"n_layer": 2}]
    assert [c.n_params.total for c in cells] == targets
    path.write_text(yaml.safe_dump({**study, "grid": {"n": [(targets[0] + targets[1]) // 2], "d": [1601]}}))
    with pytest.raises(StudyError, match="grid.n.0. x grid.d.0.: no gpt n_layer lands within 10%"):
        build_cells(load_study(path))
