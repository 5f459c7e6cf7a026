"""μP (trainers/mup.py): sp unchanged, mup equal to sp at base_width, its init and param groups by
hand, a bitwise resume, and the coordinate check of Yang et al. (2022) across a 16x width range.

By hand, a mup transformer of d_model 256, base_width 64, n_head 4 (m = 256 / 64 = 4):
    tok_emb, pos_emb std 1/sqrt(64) = 0.125 (sp's at base; sp would draw 1/16); unembed zero;
    qkv, proj, fc_in std 1/sqrt(256) = 0.0625 and fc_out 1/sqrt(1024) = 0.03125 (as sp);
    readout multiplier 64 / 256 = 0.25;
    attention scale 1/d_head x sqrt(d_head at base) = (1/64) x sqrt(16) = 0.0625 (sp: 1/8);
    hidden matrices at lr / 4 and weight decay x 4, everything else at lr and wd.
"""

import pytest
import torch

from trainers import TrainSpec, train
from trainers.checkpoint import CHECKPOINT_NAME
from trainers.checkpoint import load as load_checkpoint
from trainers.core import build_run
from trainers.device import optimizer
from trainers.models import build_model, init_weights
from trainers.mup import coordinates, slopes
from trainers.packed import can_pack
from trainers.schedules import lr_at
from trainers.spec import GPTModel, TransformerModel

ADDITION = {"name": "addition", "n_digits": 2, "n_train": 200, "n_val": 50}
RUNS = {  # the last-position path (modular), whole sequences, the gpt untied and tied
    "transformer_modular": {
        "task": {"p": 23, "train_fraction": 0.5},
        "model": {"d_model": 32, "n_head": 4, "layer_norm": False},
        "train": {"steps": 30, "eval_every": 10, "batch_size": 64},
    },
    "transformer_addition": {
        "task": ADDITION,
        "model": {"d_model": 32, "n_head": 4, "n_layer": 2},
        "train": {"steps": 30, "eval_every": 10, "batch_size": 32, "weight_decay": 0.1},
    },
    "gpt": {
        "task": ADDITION,
        "model": {"family": "gpt", "n_layer": 2, "aspect": 16, "head_dim": 8},
        "train": {"steps": 30, "eval_every": 10, "batch_size": 32},
    },
    "gpt_tied": {
        "task": {"name": "charlm", "n_train_tokens": 3000, "n_val_tokens": 1000, "seq_len": 16},
        "model": {"family": "gpt", "n_layer": 1, "aspect": 32, "head_dim": 8, "tie_embeddings": True},
        "train": {"steps": 20, "eval_every": 10, "batch_size": 16},
    },
}


def spec(name: str, **model) -> TrainSpec:
    data = RUNS[name]
    return TrainSpec.model_validate({**data, "model": {**data["model"], **model}})


def test_sp_is_the_default_and_trains_as_before():
    unset, sp = spec("transformer_addition"), spec("transformer_addition", parametrization="sp")
    assert unset.model.parametrization == "sp" and unset.model.width_mult is None
    assert train(unset).history == train(sp).history
    # sp's optimizer is what it always was: one group of every parameter, no lr_scale.
    _, model = build_run(sp, torch.device("cpu"))
    (group,) = optimizer(model, sp.train, torch.device("cpu")).param_groups
    assert group["params"] == list(model.parameters()) and "lr_scale" not in group
    assert model.readout_mult is None and all(b.attn_scale is None for b in model.blocks)


@pytest.mark.parametrize("name", list(RUNS))
def test_mup_at_base_width_is_sp(name):
    """At width == base_width the one difference is the transformer's readout, which mup starts
    at zero: every other parameter is drawn bitwise as in sp, the attention scale and readout
    multiplier are sp's, and the param groups hold sp's lr and wd, so a gpt (untied: its readout
    is zero in sp too; tied) trains bit for bit as in sp, param groups and all."""
    sp = spec(name)
    mup = spec(name, parametrization="mup", base_width=sp.model.width if name.startswith("gpt") else 32)
    assert mup.model.width_mult == 1.0
    cpu = torch.device("cpu")
    (data, a), (_, b) = build_run(sp, cpu), build_run(mup, cpu)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    differ = {k for k in sa if not torch.equal(sa[k], sb[k])}
    x = data.x_train[:8]
    if name.startswith("gpt"):
        assert not differ
        assert torch.equal(a(x), b(x)) and torch.equal(a(x, last_only=True), b(x, last_only=True))
        assert train(sp).history == train(mup).history
    else:
        assert differ == {"unembed.weight"} and not sb["unembed.weight"].any()
        with torch.no_grad():
            b.unembed.weight.copy_(a.unembed.weight)  # then the forward is sp's, bit for bit
        assert torch.equal(a(x), b(x)) and torch.equal(a(x, last_only=True), b(x, last_only=True))


def test_mup_init_and_multipliers_by_hand():
    cfg = TransformerModel(d_model=256, n_head=4, base_width=64, parametrization="mup")
    torch.manual_seed(0)
    model = build_model(cfg, 97, 97, 50)
    init_weights(model, 1.0)
    std = {name: p.std().item() for name, p in model.named_parameters()}
    for name, want in [
        ("tok_emb.weight", 0.125),
        ("pos_emb.weight", 0.125),
        ("unembed.weight", 0.0),
        ("blocks.0.qkv.weight", 0.0625),
        ("blocks.0.fc_in.weight", 0.0625),
        ("blocks.0.fc_out.weight", 0.03125),
    ]:
        assert std[name] == pytest.approx(want, rel=0.05), name
    assert model.readout_mult == 0.25 and model.blocks[0].attn_scale == 0.0625
    # A tied gpt's shared matrix is drawn at its sp std of base_width, 1/sqrt(64), at width 256.
    tied = GPTModel(d_model=256, head_dim=32, tie_embeddings=True, base_width=64, parametrization="mup")
    gpt = build_model(tied, 97, 97, 50)
    init_weights(gpt, 1.0)
    assert gpt.tok_emb.weight.std().item() == pytest.approx(0.125, rel=0.05)
    assert gpt.readout_mult == 0.25 and gpt.unembed.weight is gpt.tok_emb.weight


@pytest.mark.parametrize(
    "cfg, hidden",
    [
        (
            TransformerModel(d_model=256, n_head=4, n_layer=2, base_width=64, parametrization="mup"),
            {f"blocks.{i}.{n}.weight" for i in range(2) for n in ("qkv", "proj", "fc_in", "fc_out")},
        ),
        (
            GPTModel(
                d_model=256,
                head_dim=32,
                n_layer=1,
                mlp="swiglu",
                tie_embeddings=True,
                base_width=64,
                parametrization="mup",
            ),
            {f"blocks.0.{n}.weight" for n in ("attn.qkv", "attn.proj", "mlp.up", "mlp.gate", "mlp.down")},
        ),
    ],
)
def test_param_groups_as_designed(cfg, hidden):
    spec = TrainSpec.model_validate({"model": cfg.model_dump(), "train": {"lr": 2e-3, "weight_decay": 0.5}})
    model = build_model(spec.model, 97, 97, 3)
    matrices, rest = optimizer(model, spec.train, torch.device("cpu")).param_groups
    names = {p: n for n, p in model.named_parameters()}
    assert {names[p] for p in matrices["params"]} == hidden
    assert {names[p] for p in rest["params"]} == set(names.values()) - hidden  # embeddings, readout, vectors
    assert (matrices["lr"], matrices["lr_scale"], matrices["weight_decay"]) == (2e-3 / 4, 0.25, 0.5 * 4)
    assert (rest["lr"], rest["lr_scale"], rest["weight_decay"]) == (2e-3, 1.0, 0.5)
    # Decoupled decay shrinks p by lr x wd a step: sp's, in every group.
    assert matrices["lr"] * matrices["weight_decay"] == pytest.approx(2e-3 * 0.5)


class Crash(Exception):
    pass


def test_a_resumed_mup_run_equals_an_uninterrupted_one(tmp_path):
    def run(**train_updates) -> TrainSpec:
        return TrainSpec.model_validate(
            {
                "task": {"p": 23, "train_fraction": 0.5},
                "model": {"d_model": 64, "n_head": 4, "base_width": 16, "parametrization": "mup"},
                "train": {
                    "steps": 60,
                    "eval_every": 10,
                    "warmup_steps": 10,
                    "batch_size": 64,
                    "schedule": "cosine",
                    "checkpoint_every": 20,
                    **train_updates,
                },
            }
        )

    def crash_at_50(record):
        if record["step"] == 50:
            raise Crash  # the last checkpoint is at step 40

    whole = train(run())
    with pytest.raises(Crash):
        train(run(), report=crash_at_50, checkpoint_dir=tmp_path)
    saved, _ = load_checkpoint(tmp_path / CHECKPOINT_NAME, run().digest())
    matrices, rest = saved.optimizer["param_groups"]
    # The loop set each group's rate to the schedule's times its lr_scale (step 40 ran at lr_at(39)).
    assert matrices["lr_scale"] == 0.25 and matrices["lr"] == lr_at(run().train, 39) * 0.25
    assert rest["lr"] == lr_at(run().train, 39)
    resumed = train(run(), checkpoint_dir=tmp_path)
    assert resumed.resumed_from_step == 40 and resumed.history == whole.history
    assert (
        whole.history
        != train(
            run().model_copy(update={"model": run().model.model_copy(update={"parametrization": "sp"})})
        ).history
    )  # mup really trains differently off its base


def test_packing_refuses_mup_runs():
    mup = spec("transformer_modular", parametrization="mup")
    assert "parametrization is 'mup'" in can_pack([mup, mup.model_copy(update={"seed": 1})])
    assert can_pack([spec("transformer_modular")] * 2) is None


WIDTHS = [32, 64, 128, 256, 512]  # 16x


@pytest.mark.parametrize("base", [TransformerModel(n_layer=2, n_head=4), GPTModel(n_layer=1, head_dim=16)])
def test_coordinate_check(base):
    """After 3 AdamW steps at lr 1e-2, every activation's mean |x| is flat in width under mup
    (log-log slope within 0.2 of 0; measured -0.15 to +0.02) while under sp the logits grow
    (slope > 0.4; measured 0.52 for the transformer, 0.75 for the gpt) and so does the last
    block's output (1.03, 0.50). Yang et al. (2022) show the same picture for GPT-style models."""
    steps = 3
    got = {}
    for parametrization in ("sp", "mup"):
        cfg = base.model_copy(update={"parametrization": parametrization})
        got.update(slopes(coordinates(cfg, WIDTHS, steps=steps, lr=1e-2, seeds=(0,), batch_size=4)))
    sites = {site for _, site, _ in got}
    assert sites == {"embedding", "logits"} | {f"block.{i}" for i in range(base.n_layer)}
    for site in sites:
        assert abs(got["mup", site, steps]) < 0.2, (site, got["mup", site, steps])
    assert got["sp", "logits", steps] > 0.4
    assert got["sp", f"block.{base.n_layer - 1}", steps] > 0.4
