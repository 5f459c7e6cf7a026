"""The decay clock: sum over steps of lr_t x weight decay, the log of the factor by which AdamW's
decoupled weight decay alone shrinks the weights (Loshchilov and Hutter 2019).

The phase rule (phase.py) compares runs on it, and bisects it (`clock_step`) for every run whose
rule it posts, so it must stay cheap for budgets of 100k steps: the constant schedule keeps its
closed form (warmup ramp + constant), the others a cumulative sum cached per schedule shape
(steps, warmup, schedule, floor, decay fraction), which lr and weight decay only scale.
"""

from __future__ import annotations

from array import array
from functools import lru_cache
from itertools import accumulate
from typing import Any

from trainers.schedules import lr_at
from trainers.spec import TrainConfig

# Searched fields that only move the decay clock: runs differing in these alone compare.
CLOCK_PARAMS = frozenset({"train.weight_decay", "train.lr", "train.warmup_steps"})


def clock_group(n_index: int, params: dict[str, Any]) -> tuple:
    """Runs whose decay clocks compare: the same N and the same searched values other than the
    clock's own fields."""
    return (n_index, tuple(sorted((k, repr(v)) for k, v in params.items() if k not in CLOCK_PARAMS)))


def decay_rate(train: TrainConfig) -> float:
    """lr x weight decay: how fast a run's decay clock runs at its full learning rate."""
    return train.lr * train.weight_decay


def decay_clock(train: TrainConfig, steps: int) -> float:
    """sum over the first `steps` optimizer steps of lr_t x weight decay."""
    scale = train.lr * train.weight_decay
    if train.schedule == "constant":
        warm = min(steps, train.warmup_steps)
        return scale * (_ramp(_shape(train), warm) + max(0, steps - warm))
    cum = _cumulative(_shape(train))
    if steps < len(cum):
        return scale * cum[steps]
    # Past the budget (never asked by the rules, which stop at it): the last rate goes on.
    return scale * (cum[-1] + (steps - train.steps) * lr_at(_unit(_shape(train)), train.steps - 1))


def clock_step(train: TrainConfig, efolds: float) -> int | None:
    """The first step at which decay_clock reaches `efolds` (None: not within the budget)."""
    if train.lr * train.weight_decay <= 0 or decay_clock(train, train.steps) < efolds:
        return None
    lo, hi = 0, train.steps  # decay_clock grows with the step: bisect
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if decay_clock(train, mid) < efolds else (lo, mid)
    return lo


def _shape(train: TrainConfig) -> tuple:
    """What the learning-rate multiplier of each step depends on (not lr, not weight decay)."""
    return (train.steps, train.warmup_steps, train.schedule, train.min_lr_fraction, train.decay_fraction)


@lru_cache(maxsize=256)
def _unit(shape: tuple) -> TrainConfig:
    """The schedule at lr 1: lr_at of it is the multiplier of `train.lr`."""
    steps, warmup, schedule, floor, fraction = shape
    return TrainConfig(
        steps=steps,
        warmup_steps=warmup,
        schedule=schedule,
        min_lr_fraction=floor,
        decay_fraction=fraction,
        lr=1.0,
    )


@lru_cache(maxsize=1024)
def _ramp(shape: tuple, warm: int) -> float:
    """The warmup steps' multipliers summed, in order (the closed form's only sum)."""
    unit = _unit(shape)
    return sum(lr_at(unit, s) for s in range(warm))


@lru_cache(maxsize=64)
def _cumulative(shape: tuple) -> array:
    """cum[s] = the multipliers of the first s steps summed (cum[0] = 0): one pass per shape,
    8 bytes a step."""
    unit = _unit(shape)
    return array("d", accumulate((lr_at(unit, s) for s in range(unit.steps)), initial=0.0))
