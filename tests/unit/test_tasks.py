"""Task data: labels right, splits a pure function of the seed, nothing shared between splits."""

import pytest
import torch
from pydantic import ValidationError

from trainers.spec import AdditionTask, CharLMTask, ModularTask, SparseParityTask, TrainSpec
from trainers.tasks import IGNORE, make_task, modular_labels


@pytest.mark.parametrize("op,a,b,want", [
    ("add", 5, 9, 14 % 11), ("sub", 3, 9, (3 - 9) % 11), ("mul", 4, 6, 24 % 11),
    ("div", 3, 5, 5),  # 5 * 5 = 25 = 3 (mod 11), so 3 / 5 = 5
    ("x2+y2", 3, 4, 25 % 11), ("x2+xy+y2", 3, 4, 37 % 11), ("x3+xy", 3, 4, 39 % 11)])
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
