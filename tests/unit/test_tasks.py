"""Task data: labels right, splits a pure function of the seed, nothing shared between splits."""

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from orchestrator.study.tasks import task_kinds
from trainers import train
from trainers.models import MODELS
from trainers.own_code import model_problem, task_problem
from trainers.spec import TrainSpec
from trainers.tasks import IGNORE, builtin_tasks, make_task
from trainers.tasks.addition import AdditionTask
from trainers.tasks.charlm import CharLMTask
from trainers.tasks.copy import CopyTask
from trainers.tasks.modular import ModularTask, modular_labels
from trainers.tasks.sparse_parity import SparseParityTask

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "op,a,b,want",
    [
        ("add", 5, 9, 14 % 11),
        ("sub", 3, 9, (3 - 9) % 11),
        ("mul", 4, 6, 24 % 11),
        ("div", 3, 5, 5),  # 5 * 5 = 25 = 3 (mod 11), so 3 / 5 = 5
        ("x2+y2", 3, 4, 25 % 11),
        ("x2+xy+y2", 3, 4, 37 % 11),
        ("x3+xy", 3, 4, 39 % 11),
    ],
)
def test_modular_ops(op, a, b, want):
    assert modular_labels(torch.tensor([a]), torch.tensor([b]), 11, op).item() == want


def test_modular_split_is_a_pure_function_of_seed():
    task = ModularTask(p=23, train_fraction=0.4)
    a, b, c = make_task(task, 1), make_task(task, 1), make_task(task, 2)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_val, b.y_val)
    assert not torch.equal(a.x_train, c.x_train)
    assert a.n_train == round(0.4 * 23 * 23) and len(a.x_val) == 23 * 23 - a.n_train
    pairs = lambda x: {tuple(r) for r in x[:, :2].tolist()}  # noqa: E731
    assert not pairs(a.x_train) & pairs(a.x_val)
    assert len(pairs(a.x_train) | pairs(a.x_val)) == 23 * 23


def test_modular_div_excludes_zero_and_counts():
    data = make_task(ModularTask(p=13, op="div", n_train=50), 0)
    x = torch.cat([data.x_train, data.x_val])
    y = torch.cat([data.y_train, data.y_val])
    assert (x[:, 1] != 0).all() and len(x) == 13 * 12 and data.n_train == 50
    assert ((y * x[:, 1]) % 13 == x[:, 0]).all()


def test_modular_div_needs_prime_p():
    with pytest.raises(ValidationError, match="prime"):
        ModularTask(p=12, op="div")


def test_sparse_parity_labels_and_fresh_validation():
    task = SparseParityTask(n_bits=12, k=3, n_train=64, n_val=500)
    data = make_task(task, 4)
    support = data.info["support"]
    assert len(support) == 3
    assert torch.equal(data.y_train, data.x_train[:, support].sum(1) % 2)
    bigger = make_task(task.model_copy(update={"n_train": 128}), 4)
    assert torch.equal(bigger.x_val, data.x_val)  # validation does not depend on D
    assert 0.4 < data.y_val.float().mean() < 0.6


def test_addition_sequences_decode_to_the_sum():
    data = make_task(AdditionTask(n_digits=3, n_train=200, n_val=50), 0)
    x, y = data.x_train, data.y_train
    assert x.shape == (200, 11)  # a(3) + b(3) + answer(4) + "+" "=" - 1 (shifted)
    seq = torch.cat([x, y[:, -1:]], dim=1)
    for row in seq[:20].tolist():
        a = int("".join(map(str, row[0:3])))
        b = int("".join(map(str, row[4:7])))
        answer = int("".join(map(str, row[8:12]))[::-1])  # written least significant first
        assert row[3] == 10 and row[7] == 11 and a + b == answer
    assert (y[:, :7] == IGNORE).all() and (y[:, 7:] != IGNORE).all()
    train_pairs = {tuple(r[:7]) for r in x.tolist()}
    assert not train_pairs & {tuple(r[:7]) for r in data.x_val.tolist()}


def test_charlm_reads_the_standard_library():
    data = make_task(CharLMTask(n_train_tokens=10_000, n_val_tokens=2_000, seq_len=50), 0)
    assert data.x_train.shape == (199, 50) and data.vocab_size == 256
    assert torch.equal(data.x_train[:, 1:], data.y_train[:, :-1])
    text = bytes(data.x_train[0].tolist()).decode("utf-8", errors="replace")
    assert text.isprintable() or "\n" in text
    assert data.info["corpus_tokens"] > 1_000_000
    with pytest.raises(ValueError, match="exceeds the corpus"):
        make_task(CharLMTask(n_train_tokens=10**9), 0)


def test_mlp_cannot_read_sequences():
    with pytest.raises(ValidationError, match="needs model.family 'transformer'"):
        TrainSpec.model_validate({"task": {"name": "addition"}, "model": {"family": "mlp"}})


# ---- copy: the task added as one file (trainers/tasks/copy.py; README "Add a built-in task") ----


def test_copy_writes_the_string_again_after_the_separator():
    task = CopyTask(length=5, n_symbols=7, n_train=300, n_val=40)
    data = make_task(task, 0)
    assert data.x_train.shape == data.y_train.shape == (300, 10)  # string (5), separator, copy (5) - 1
    assert (data.vocab_size, data.n_out, data.target, data.accuracy, data.n_train) == (
        8,
        7,
        "sequence",
        "exact",
        300,
    )
    x, y = data.x_train, data.y_train
    assert (x[:, 5] == 7).all() and (x[:, :5] < 7).all()  # token 7 is the separator
    assert (y[:, :5] == IGNORE).all()  # the random string (and the separator) are not scored...
    assert torch.equal(y[:, 5:], x[:, :5])  # ...the copy is, from the separator on
    assert torch.equal(x[:, 6:], x[:, :4])  # the copy, fed back in
    assert task.chance_level == 7.0**-5


def test_copy_is_a_pure_function_of_the_seed_and_validation_does_not_depend_on_d():
    task = CopyTask(n_train=64, n_val=32)
    a, b, c = make_task(task, 1), make_task(task, 1), make_task(task, 2)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_val, b.y_val)
    assert not torch.equal(a.x_train, c.x_train)
    bigger = make_task(task.model_copy(update={"n_train": 128}), 1)
    assert torch.equal(bigger.x_val, a.x_val) and torch.equal(bigger.x_train[:64], a.x_train)


def test_copy_is_known_to_the_spec_and_the_study_layer_by_its_file_alone():
    spec = TrainSpec.model_validate({"task": {"name": "copy", "length": 3}})
    assert isinstance(spec.task, CopyTask) and spec.task.length == 3
    kind = task_kinds()["copy"]
    assert (kind.d_field, kind.counts, kind.sequence_metrics, kind.language_model) == (
        "n_train",
        {"n_train"},
        True,
        False,
    )
    with pytest.raises(ValidationError, match="task 'copy' needs model.family 'transformer'"):
        TrainSpec.model_validate({"task": {"name": "copy"}, "model": {"family": "mlp"}})


def test_copy_trains_through_the_real_trainer_with_its_sequence_metrics():
    spec = TrainSpec.model_validate(
        {
            "task": {"name": "copy", "length": 3, "n_symbols": 4, "n_train": 256, "n_val": 64},
            "model": {"d_model": 32, "n_head": 4},
            "train": {"steps": 60, "eval_every": 30, "lr": 3e-3, "weight_decay": 0.0, "batch_size": 64},
        }
    )
    r1, r2 = train(spec), train(spec)
    assert r1.status == "completed" and r1.history == r2.history
    assert {"val_token_acc", "val_answer_logprob"} <= set(r1.final)
    assert r1.history["train_loss"][-1] < r1.history["train_loss"][0]


# ---- the registry: every built-in keeps the protocol a user's class keeps (trainers/own_code.py) ----


def test_every_built_in_task_and_model_keeps_the_users_protocol():
    tasks = builtin_tasks()
    assert list(tasks)[0] == "modular" and set(tasks) == {
        "modular",
        "sparse_parity",
        "addition",
        "charlm",
        "corpus",
        "copy",
    }
    for name, cls in tasks.items():
        assert task_problem(cls, builtin=True) is None, name
        assert cls.model_fields["name"].default == name and cls.__module__ == f"trainers.tasks.{name}"
        assert "must not declare a field 'name'" in task_problem(cls)  # a user's class names none
    assert list(MODELS) == ["transformer", "mlp", "gpt"]
    for family, cls in MODELS.items():
        assert (
            model_problem(cls, builtin=True) is None and cls.Config.model_fields["family"].default == family
        )


def test_the_spec_reads_its_tasks_and_models_from_the_registries():
    for name, cls in builtin_tasks().items():
        task = {"name": name, "source": "x"} if name == "corpus" else {"name": name}  # corpus: a source
        assert type(TrainSpec.model_validate({"task": task, "train": {"batch_size": 8}}).task) is cls
    for family, cls in MODELS.items():
        assert type(TrainSpec.model_validate({"model": {"family": family}}).model) is cls.Config
    with pytest.raises(ValidationError) as err:
        TrainSpec.model_validate({"task": {"name": "copying"}})
    allowed = ", ".join(repr(n) for n in builtin_tasks())
    assert f"unknown 'copying'; allowed: {allowed}, or your own class as 'package.module:Class'" in str(
        err.value
    )


def test_the_readmes_how_to_shows_copy_py_as_it_is():
    readme = (REPO / "README.md").read_text()
    shown = readme.split("### Add a built-in task", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    source = (REPO / "trainers" / "tasks" / "copy.py").read_text()
    body = source.split('"""', 2)[2].replace("from __future__ import annotations\n", "").strip()
    assert shown.strip() == body


def test_the_reports_chance_level_is_the_task_classes():
    from orchestrator.report.document import chance_level  # the report layer: pandas, plotting

    level = lambda task: chance_level({"task": task})  # noqa: E731
    assert level({"name": "modular", "p": 23}) == 1 / 23 and level({"name": "modular"}) == 1 / 97
    assert level({"name": "sparse_parity"}) == 0.5 and level({"name": "addition", "n_digits": 2}) == 1e-3
    assert level({"name": "copy", "length": 2, "n_symbols": 4}) == 1 / 16
    assert level({"name": "charlm"}) is None  # an LM's token accuracy: the analysis takes its own
    assert level({"name": "support.usercode.tasks:Copying"}) is None  # declares none
    assert level({"name": "nope"}) is None and chance_level({}) is None
