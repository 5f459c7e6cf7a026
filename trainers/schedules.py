"""Learning-rate schedules: the learning rate of each optimizer step, one pure function.

`lr_at(train, step)` is the absolute learning rate of the optimizer step at 0-based index
`step`. Both training loops set it before each step, and the pruning rule's decay clock
(sum over steps of lr x weight_decay) sums it, so all three agree by construction.

Every schedule is a multiplier of `train.lr` evaluated at the step's end, position
p = step + 1 of `train.steps`:
- warmup (all schedules): p / warmup_steps while p <= warmup_steps, linear to the full rate;
- `constant`: 1 after warmup (Nanda et al. 2023's grokking set-up, the default);
- `cosine`: half a cosine from 1 to `min_lr_fraction` over the steps after warmup, ending
  exactly at the run's last step: Hoffmann et al. (2022) found the cycle must match the run;
- `wsd`: warmup-stable-decay (Hägele et al. 2024): 1, then a linear decay to
  `min_lr_fraction` over the last `decay_fraction` of the steps.
"""

from __future__ import annotations

import math

from trainers.spec import TrainConfig

SCHEDULES = ("constant", "cosine", "wsd")


def lr_factor(step: int, warmup_steps: int) -> float:
    """The warmup multiplier alone: linear warmup to the full rate, then 1 (Nanda et al. 2023)."""
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0


def lr_at(train: TrainConfig, step: int) -> float:
    """The learning rate of the optimizer step at 0-based index `step` (the float the loops set)."""
    return train.lr * lr_multiplier(train, step)


def lr_multiplier(train: TrainConfig, step: int) -> float:
    """`lr_at` / `train.lr`: a number in [min_lr_fraction, 1] after warmup."""
    p = step + 1  # position at the step's end: the last step of a run has p == steps
    w = train.warmup_steps
    if p <= w or train.schedule == "constant":
        # Exactly the old `lr_factor`, so constant runs are bit-for-bit what they were.
        return lr_factor(step, w)
    floor = train.min_lr_fraction
    if train.schedule == "cosine":
        t = min(1.0, (p - w) / (train.steps - w))  # in (0, 1]; 1 at the last step
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))
    if train.schedule == "wsd":
        n_decay = train.decay_steps
        start = train.steps - n_decay  # the last step before the decay is at full rate
        if p <= start:
            return 1.0
        t = min(1.0, (p - start) / n_decay)
        return 1.0 - (1.0 - floor) * t
    raise ValueError(f"unknown schedule {train.schedule!r}; expected one of {SCHEDULES}")
