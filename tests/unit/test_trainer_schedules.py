"""Learning-rate schedules: hand-computed values, validation, and the loop uses them."""

import math
import re
from itertools import pairwise

import pytest
from pydantic import ValidationError

from trainers import TrainSpec, train
from trainers.overrides import apply_overrides
from trainers.schedules import lr_at, lr_factor
from trainers.spec import TrainConfig


def cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"steps": 20, "warmup_steps": 4, "lr": 2.0, "min_lr_fraction": 0.1, **kw})


def test_constant_is_the_old_warmup_then_flat_bit_for_bit():
    for warmup in (0, 1, 10, 100):
        c = TrainConfig(steps=200, warmup_steps=warmup, lr=3e-3)
        # The loop used to set `cfg.lr * lr_factor(step, warmup)`; the float must not change.
        assert [lr_at(c, s) for s in range(200)] == [c.lr * lr_factor(s, warmup) for s in range(200)]
    c = cfg()
    assert [lr_at(c, s) for s in range(5)] == [0.5, 1.0, 1.5, 2.0, 2.0]


def test_cosine_by_hand():
    c = cfg(schedule="cosine")
    # Warmup: p / 4 of lr at position p = step + 1.
    assert [lr_at(c, s) for s in range(4)] == [0.5, 1.0, 1.5, 2.0]
    # Half a cosine over the 16 steps after warmup: at p - w = 8 of 16, half way to the floor.
    assert lr_at(c, 11) == pytest.approx(2.0 * (0.1 + 0.9 * 0.5))
    assert lr_at(c, 7) == pytest.approx(2.0 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4))))
    # The cycle matches the run: its last step is at the floor, exactly.
    assert lr_at(c, 19) == pytest.approx(0.2)
    values = [lr_at(c, s) for s in range(3, 20)]
    assert all(a > b for a, b in pairwise(values))  # strictly decreasing after warmup


def test_cosine_follows_the_run_length():
    short, long = cfg(schedule="cosine", steps=100), cfg(schedule="cosine", steps=1000)
    assert lr_at(short, 99) == pytest.approx(0.2) and lr_at(long, 999) == pytest.approx(0.2)
    assert lr_at(long, 99) > 1.9  # a longer run is still near its peak at step 100


def test_wsd_by_hand():
    c = cfg(schedule="wsd", decay_fraction=0.2)  # 4 decay steps, from p = 17 to 20
    assert [lr_at(c, s) for s in range(4, 16)] == [2.0] * 12  # stable
    assert [lr_at(c, s) for s in range(16, 20)] == pytest.approx(
        [2.0 * (1 - 0.9 * k / 4) for k in (1, 2, 3, 4)]
    )
    assert lr_at(c, 19) == pytest.approx(0.2)


def test_a_zero_floor_and_no_warmup():
    c = cfg(schedule="cosine", warmup_steps=0, min_lr_fraction=0.0)
    # Without warmup the first step is already 1/20 into the cosine.
    assert lr_at(c, 0) == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi / 20)))
    assert lr_at(c, 19) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"schedule": "linear"}, "schedule"),
        ({"min_lr_fraction": 1.5}, "min_lr_fraction"),
        ({"min_lr_fraction": -0.1}, "min_lr_fraction"),
        ({"decay_fraction": 0.0}, "decay_fraction"),
        (
            {"schedule": "wsd", "warmup_steps": 18, "decay_fraction": 0.2},
            "warmup_steps (18) + decay steps (4",
        ),
    ],
)
def test_bad_schedule_fields_are_refused_with_their_name(fields, message):
    with pytest.raises(ValidationError, match=re.escape(message)):
        cfg(**fields)


def test_schedule_fields_take_dotted_overrides():
    # The study's search space and --set name trainer fields by dotted path.
    data = apply_overrides({}, ["train.schedule=cosine", "train.min_lr_fraction=0.05", "train.steps=300"])
    spec = TrainSpec.model_validate(data)
    assert (spec.train.schedule, spec.train.min_lr_fraction) == ("cosine", 0.05)


@pytest.mark.parametrize("schedule", ["cosine", "wsd"])
def test_the_loop_sets_the_scheduled_rate(schedule):
    spec = TrainSpec.model_validate(
        {
            "task": {"p": 23, "train_fraction": 0.5},
            "model": {"d_model": 16, "n_head": 2, "layer_norm": False},
            "train": {"steps": 60, "eval_every": 10, "warmup_steps": 5, "schedule": schedule},
        }
    )
    result = train(spec)
    # The rate recorded at step s is that of the step just taken, index s - 1.
    assert result.history["lr"] == [lr_at(spec.train, s - 1) for s in range(10, 61, 10)]
    assert result.final["lr"] == pytest.approx(spec.train.lr * spec.train.min_lr_fraction)
