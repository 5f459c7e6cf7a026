"""What a run reports it consumed: examples, tokens, epochs and training FLOPs, per evaluation."""

import pytest

from trainers import TrainSpec, train
from trainers.flops import flops_per_example
from trainers.packed import train_packed
from trainers.tasks import make_task

MODULAR = {
    "task": {"p": 23, "train_fraction": 0.5},
    "model": {"d_model": 32, "n_head": 4, "layer_norm": False},
    "train": {"steps": 60, "eval_every": 20, "warmup_steps": 5},
}


def test_full_batch_accounting_by_hand():
    spec = TrainSpec.model_validate(MODULAR)
    result = train(spec)
    n = result.n_train  # round(0.5 * 23 * 23) = 264 pairs, each a 3-token example
    assert n == 264
    flops = flops_per_example(spec.model, 24, 23, 3, last_only=True)
    assert result.history["examples"] == [20 * n, 40 * n, 60 * n]
    assert result.history["tokens"] == [3 * 20 * n, 3 * 40 * n, 3 * 60 * n]
    assert result.history["epochs"] == [20.0, 40.0, 60.0]
    assert result.history["flops"] == [20 * n * flops.total, 40 * n * flops.total, 60 * n * flops.total]
    assert result.final["flops"] == 60 * n * flops.total
    assert result.flops["per_example"] == flops.total
    assert result.flops["per_token"] == pytest.approx(flops.total / 3)


def test_minibatch_sequence_accounting_counts_batches_and_tokens():
    spec = TrainSpec.model_validate(
        {
            "task": {"name": "addition", "n_digits": 2, "n_train": 256, "n_val": 64},
            "model": {"d_model": 32, "n_head": 4},
            "train": {"steps": 24, "eval_every": 8, "batch_size": 64},
        }
    )
    result = train(spec)
    data = make_task(spec.task, spec.seed)
    flops = flops_per_example(spec.model, data.vocab_size, data.n_out, data.seq_len, last_only=False)
    assert result.history["examples"] == [8 * 64, 16 * 64, 24 * 64]
    assert result.history["epochs"] == [2.0, 4.0, 6.0]  # 256 examples, 4 batches an epoch
    assert result.history["tokens"] == [e * data.seq_len for e in result.history["examples"]]
    assert result.final["flops"] == 24 * 64 * flops.total


@pytest.mark.filterwarnings("ignore:There is a performance drop")
def test_packed_runs_report_the_same_accounting():
    specs = [TrainSpec.model_validate({**MODULAR, "seed": s}) for s in (0, 1)]
    for packed, s in zip(train_packed(specs), specs):
        alone = train(s)
        for key in ("examples", "tokens", "epochs", "flops"):
            assert packed.history[key] == alone.history[key]
        assert packed.flops == alone.flops
