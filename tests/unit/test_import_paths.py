"""Tasks and models by import path (trainers/spec.py: the protocol): a user's Copying task and
TinyGRU model (tests/support/usercode) train through the real trainer and validate as a study;
what breaks the protocol is refused naming its field (the CLI cases: tests/unit/broken_configs/
import_*.yaml, each exiting 2 with nothing started)."""

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from orchestrator.cli import main
from orchestrator.study.errors import format_errors
from orchestrator.study.tasks import task_kinds
from trainers import TrainSpec, train
from trainers.flops import flops_for_task
from trainers.models import build_model, count_params, init_weights
from trainers.packed import can_pack
from trainers.tasks import make_task

TASK = "support.usercode.tasks:Copying"
MODEL = "support.usercode.models:TinyGRU"
STUDY = Path(__file__).parent / "broken_configs" / "_valid.yaml"


def spec(**train) -> TrainSpec:
    return TrainSpec.model_validate(
        {
            "task": {"name": TASK, "n_train": 512},
            "model": {"family": MODEL, "width": 32},
            "train": {
                "steps": 120,
                "eval_every": 40,
                "lr": 1e-2,
                "weight_decay": 0.0,
                "batch_size": 64,
                **train,
            },
        }
    )


def problems(data: dict) -> list[str]:
    with pytest.raises(ValidationError) as err:
        TrainSpec.model_validate(data)
    return format_errors(err.value, model=TrainSpec)


def test_the_spec_holds_the_classes_settings_with_their_defaults_and_round_trips():
    s = spec()
    dumped = s.model_dump(mode="json")
    assert dumped["task"] == {"name": TASK, "length": 4, "n_symbols": 6, "n_train": 512, "n_val": 256}
    assert dumped["model"] == {"family": MODEL, "width": 32}
    again = TrainSpec.model_validate_json(s.model_dump_json())  # what a worker receives
    assert again.digest() == s.digest() and again.task.config.n_train == 512
    # The digest names the settings, not how they were written: defaults spelled out change nothing.
    spelled = TrainSpec.model_validate({**s.model_dump(mode="json"), "task": {**dumped["task"]}})
    assert spelled.digest() == s.digest()


def test_parameters_and_flops_are_counted_by_the_convention():
    """TinyGRU, width 32, on Copying (vocabulary 7, 6 outputs, 8 positions), by hand:
    embedding   tok_emb 7 x 32 = 224, unembed 32 x 6 + 6 = 198          -> 422
    non-embed.  GRU: weight_ih + weight_hh 2 x (3*32 x 32), biases 2 x 96  -> 6,336
    FLOPs: N = everything but the lookup, 6,336 + 198 = 6,534; forward 2 N x 8 positions = 104,544,
    backward twice that: 313,632 per example."""
    s = spec()
    data = make_task(s.task, 0)
    model = build_model(s.model, data.vocab_size, data.n_out, data.seq_len)
    assert count_params(model).as_dict() == {"embedding": 422, "non_embedding": 6336, "total": 6758}
    flops = flops_for_task(s.model, data)
    assert (flops.n_matmul, flops.forward, flops.total) == (6534, 104_544, 313_632)


def test_own_task_and_model_learn_through_the_real_trainer_and_repeat_bit_for_bit():
    r1, r2 = train(spec()), train(spec())
    assert r1.status == "completed" and r1.steps == 120
    assert r1.history == r2.history  # seeded: the task's make(seed), the model's own init, the batches
    assert r1.n_params["total"] == 6758
    # Chance is 6^-4 per answer (exact match of 4 symbols); a GRU learns to copy 4 symbols quickly.
    assert r1.history["val_acc"][-1] > 0.3, r1.history["val_acc"]
    assert r1.history["train_loss"][-1] < 0.5 * r1.history["train_loss"][0]
    assert {"val_token_acc", "val_answer_logprob"} <= set(r1.final)  # sequence_metrics


def test_init_scale_multiplies_the_models_own_init():
    s, big = spec(), spec(init_scale=3.0)
    data = make_task(s.task, 0)
    weights = []
    for sp in (s, big):
        torch.manual_seed(0)
        model = build_model(sp.model, data.vocab_size, data.n_out, data.seq_len)
        init_weights(model, sp.train.init_scale)
        weights.append(model.rnn.weight_hh_l0.detach().clone())
    # The GRU's own init (uniform in +-1/sqrt(width)) is kept, not replaced by N(0, 1/fan_in).
    assert weights[0].abs().max() <= 32**-0.5 + 1e-7
    assert torch.allclose(weights[1], 3 * weights[0])


def test_the_study_layer_reads_the_classes_declarations():
    kind = task_kinds()[TASK]
    assert kind.d_fields == ("n_train",) and kind.counts == {"n_train"} and kind.sequence_metrics
    assert TASK not in list(task_kinds())  # listings ("allowed: ...") show the built-ins only
    assert task_kinds().get("no_such.module:X") is None and "no_such.module:X" not in task_kinds()


@pytest.mark.parametrize(
    "data, expected",
    [
        ({"task": {"name": "modular_arith"}}, "task.name: unknown 'modular_arith'; allowed: 'modular'"),
        ({"model": {"family": "rnn"}}, "model.family: unknown 'rnn'; allowed: 'transformer', 'mlp'"),
        ({"task": {"name": "no_such_pkg.tasks:Copying"}}, "task.name: cannot import 'no_such_pkg.tasks'"),
        ({"model": {"family": "support.usercode.models:TinyGRU", "depth": 2}}, "model.depth: unknown key"),
        ({"task": {"name": TASK, "n_val": -1}}, "task.n_val: Input should be greater than 0"),
        (
            {"task": {"name": "support.usercode.broken:MakeTakesTwo"}},
            "task.name: support.usercode.broken:MakeTakesTwo: make must accept (self, seed)",
        ),
    ],
)
def test_the_python_api_names_the_field_too(data, expected):
    lines = problems(data)
    assert any(line.startswith(expected) for line in lines), lines


def test_packing_is_refused_for_a_model_of_the_users():
    assert "the user's own" in can_pack([spec(), spec()])


def test_a_study_of_own_task_and_model_validates(tmp_path, monkeypatch, capsys):
    """`grokscale validate` on the catalog's valid study with the user's task and model: the grid's
    N is the model's hand count and D the task's n_train; nothing is created."""
    text = STUDY.read_text().replace("task: {name: modular, p: 23, op: add}", f"task: {{name: {TASK}}}")
    text = text.replace(
        "model: {family: transformer, n_layer: 1, n_head: 4, layer_norm: false}",
        f"model: {{family: {MODEL}}}",
    )
    text = text.replace("n: [{d_model: 16}]", "n: [{width: 32}, {width: 16}]").replace(
        "d: [0.5]", "d: [256, 512]"
    )
    (tmp_path / "study.yaml").write_text(text)
    monkeypatch.chdir(tmp_path)
    assert main(["validate", "study.yaml"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "4 cells" in out and "N[width=32]_D=256: N = 6,758 (total), D = 256" in out, out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.yaml"]
