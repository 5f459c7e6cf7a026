"""Grokking per run: when it memorizes, when it generalizes, and its learning phase.

Memorization step: the first evaluation with training accuracy >= train_threshold (0.99);
generalization step: the first with validation accuracy >= val_threshold (0.95), the same
defaults as the trainer's own events (trainers/spec.py). Delay = generalization - memorization
steps; ratio = generalization / memorization step (None when either is missing).

Phases, after Liu et al. (2022, "Towards Understanding Grokking: An Effective Theory of
Representation Learning", phase diagrams of Sec. 4 and 5):
  comprehension  generalizes, and not much later than it memorizes;
  grokking       memorizes, then generalizes much later;
  memorization   memorizes but does not generalize within the budget;
  confusion      does not even memorize within the budget.
Liu et al. time both events at 90% accuracy and separate grokking from comprehension by how
long generalization lags memorization; their toy-model diagrams draw that line at a lag of
about 10^3 steps, a number tied to their budget and learning rates. Budgets differ from study
to study here, so the default rule is scale-free: grokking when generalization comes at least
`min_ratio` = 10 times later than memorization (one decade on the log-step axis, where the
classic grokking curves of Power et al. 2022 show the gap); `min_delay` adds an absolute lag
in steps (e.g. 1000 for Liu et al.'s rule). A run that generalizes without reaching the
stricter training threshold counts as comprehension: it generalized.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from orchestrator.analysis.estimate import jsonable

Phase = Literal["comprehension", "grokking", "memorization", "confusion"]
PHASES: tuple[Phase, ...] = ("comprehension", "grokking", "memorization", "confusion")
TRAIN_THRESHOLD = 0.99  # trainers/spec.py: the memorization event
VAL_THRESHOLD = 0.95  # trainers/spec.py: the generalization event
MIN_RATIO = 10.0  # generalization >= 10x the memorization step: one decade later


@dataclass(frozen=True)
class GrokkingEvents:
    """The events of one run; steps are None when the threshold was never reached."""

    memorization_step: int | None
    generalization_step: int | None
    delay: int | None
    ratio: float | None
    phase: Phase
    last_step: int | None  # the budget the run had: the last evaluated step

    def to_dict(self) -> dict:
        return jsonable(self)


def grokking_events(
    steps: np.ndarray,
    train_acc: np.ndarray,
    val_acc: np.ndarray,
    *,
    train_threshold: float = TRAIN_THRESHOLD,
    val_threshold: float = VAL_THRESHOLD,
    min_ratio: float = MIN_RATIO,
    min_delay: int | None = None,
) -> GrokkingEvents:
    """Events and phase from one run's evaluation curve (arrays over evaluations, any order;
    NaN accuracies count as below threshold)."""
    steps, train_acc, val_acc = (np.asarray(a, dtype=float).ravel() for a in (steps, train_acc, val_acc))
    if not steps.size == train_acc.size == val_acc.size:
        raise ValueError(
            f"steps, train_acc and val_acc must have the same length, got "
            f"{steps.size}, {train_acc.size}, {val_acc.size}"
        )
    order = np.argsort(steps, kind="stable")
    steps, train_acc, val_acc = steps[order], train_acc[order], val_acc[order]
    mem = _first(steps, train_acc >= train_threshold)
    gen = _first(steps, val_acc >= val_threshold)
    delay, ratio = _delay_ratio(mem, gen)
    return GrokkingEvents(
        memorization_step=mem,
        generalization_step=gen,
        delay=delay,
        ratio=ratio,
        phase=grokking_phase(mem, gen, min_ratio=min_ratio, min_delay=min_delay),
        last_step=int(steps[-1]) if steps.size else None,
    )


def grokking_phase(
    memorization_step: float | None,
    generalization_step: float | None,
    *,
    min_ratio: float = MIN_RATIO,
    min_delay: int | None = None,
) -> Phase:
    """The phase from the two event steps (None or NaN: not reached within the budget)."""
    mem, gen = _step(memorization_step), _step(generalization_step)
    if gen is None:
        return "memorization" if mem is not None else "confusion"
    if mem is None:
        return "comprehension"
    late = gen >= min_ratio * mem if mem > 0 else gen > 0
    if min_delay is not None:
        late = late and gen - mem >= min_delay
    return "grokking" if late else "comprehension"


def grokking_phases(
    runs: pd.DataFrame,
    *,
    mem_col: str = "memorization_step",
    gen_col: str = "generalization_step",
    status_col: str | None = "status",
    min_ratio: float = MIN_RATIO,
    min_delay: int | None = None,
) -> pd.DataFrame:
    """A copy of a runs table with `grokking_ratio` and `phase` columns from its event columns.
    Runs that did not finish (failed, diverged) get phase "confusion" if they diverged and
    None if they failed, since a failed run says nothing about learning."""
    for col in (mem_col, gen_col):
        if col not in runs.columns:
            raise ValueError(f"the runs table has no column {col!r}")
    out = runs.copy()
    mem = pd.to_numeric(out[mem_col], errors="coerce")
    gen = pd.to_numeric(out[gen_col], errors="coerce")
    out["grokking_ratio"] = [_delay_ratio(_step(m), _step(g))[1] for m, g in zip(mem, gen)]
    phases = [grokking_phase(m, g, min_ratio=min_ratio, min_delay=min_delay) for m, g in zip(mem, gen)]
    if status_col is not None and status_col in out.columns:
        phases = [_phase_given_status(p, s) for p, s in zip(phases, out[status_col])]
    out["phase"] = phases
    return out


def _phase_given_status(phase: Phase | None, status) -> Phase | None:
    """A failed run has no phase (it says nothing about learning), a diverged one is in
    confusion; any other run keeps the phase of its event steps."""
    if status == "failed":
        return None
    if status == "diverged":
        return "confusion"
    return phase


def curve_events(
    curves: pd.DataFrame,
    *,
    run_col: str = "run_id",
    step_col: str = "step",
    train_col: str = "train_acc",
    val_col: str = "val_acc",
    **kwargs,
) -> pd.DataFrame:
    """Events per run from a long table of curves (one row per run and evaluation): one row per
    run with memorization_step, generalization_step, delay, ratio, phase and last_step."""
    for col in (run_col, step_col, train_col, val_col):
        if col not in curves.columns:
            raise ValueError(f"the curves table has no column {col!r}")
    rows = []
    for run, part in curves.groupby(run_col, sort=False):
        ev = grokking_events(
            part[step_col].to_numpy(), part[train_col].to_numpy(), part[val_col].to_numpy(), **kwargs
        )
        rows.append({run_col: run, **ev.to_dict()})
    return pd.DataFrame(
        rows,
        columns=[run_col, "memorization_step", "generalization_step", "delay", "ratio", "phase", "last_step"],
    )


def _first(steps: np.ndarray, reached: np.ndarray) -> int | None:
    hits = np.flatnonzero(reached)
    return int(steps[hits[0]]) if hits.size else None


def _step(value) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def _delay_ratio(mem: float | None, gen: float | None) -> tuple[int | None, float | None]:
    if mem is None or gen is None:
        return None, None
    return int(gen - mem), (float(gen / mem) if mem > 0 else None)
