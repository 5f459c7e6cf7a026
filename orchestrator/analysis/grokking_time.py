"""When will a run generalize? Predicted from the first part of its curve, at the step it
memorized, by its decay clock; backtested leave-one-out on the runs that did generalize.

The decay clock of a run is sum over steps of lr_t x weight decay: the log of the factor by
which AdamW's decoupled decay alone shrinks the weights (orchestrator/sweep/stopping/clock.py).
Grokking time scales as 1 / (lr x weight decay) (Lyu et al. 2024, "Dichotomy of early and late
phase implicit biases", Thm. 3.3; Liu et al. 2023, "Omnigrok"): after memorizing, a run needs a
set amount of decay, Δ (in e-folds), before the generalizing solution wins. So:
  learn     Δ_r = clock(generalization step) - clock(memorization step) of every other run that
            memorized and then generalized: from the first of `pools` (columns: its cell, then
            its D, as D sets the decay needed: Power et al. 2022, Fig. 1) in which MIN_POOL = 2
            other runs did, else from the whole study;
  predict   at a run's memorization step m (all it needs of its curve), the first step at which
            its clock reaches clock(m) + median Δ; the interval is that of the pool's smallest and
            largest Δ. A target beyond the run's budget predicts "does not generalize in time".
The outcome is measured at the evaluation grid, so errors under eval_every / step are noise.
The baseline is the pool's median generalization step, ignoring the clock: if the clock does
not beat it, it explains nothing. A run that generalized at the evaluation at which it memorized
(comprehension, no delay) is scored too, but the clock's "now" is then trivially right and
flatters the median: the errors are also given over the runs that generalized later (`late_*`).

Where it fails, by construction: a run that never memorizes gets no prediction (it has no
memorization step); a run without weight decay has a clock that never moves (no prediction);
a run that generalizes before it memorizes (comprehension at the stricter training threshold)
has nothing to predict. Runs whose budget ran out or that got stuck ("memorization" phase) are
scored as predicted-and-missed when the clock said they would generalize within their budget.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from orchestrator.analysis.estimate import jsonable

MIN_POOL = 2


@dataclass(frozen=True)
class StepPrediction:
    """One run's generalization step as predicted at its memorization step, and what happened.
    predicted None with `reason`: no prediction; predicted None without one: the clock says it
    does not generalize within its budget (`within_budget` False)."""

    run_id: str
    group: str  # its value of the first pool column (its cell)
    memorization_step: float | None
    predicted: float | None
    low: float | None
    high: float | None
    within_budget: bool | None  # the prediction: generalizes before the run's last step
    observed: float | None  # the generalization step; None: not within the budget
    error: float | None  # predicted / observed - 1
    baseline: float | None  # the pool's median generalization step
    baseline_error: float | None
    pool: str | None  # the pool column whose runs Δ was learned from, or "study"
    n_pool: int
    reason: str | None = None

    def to_dict(self) -> dict:
        return jsonable(self)


@dataclass(frozen=True)
class StepBacktest:
    """Leave-one-out over every run that memorized. Errors are over the runs that generalized
    and got a prediction; `missed`: predicted to generalize within the budget, never did;
    `surprised`: predicted not to, and did."""

    predictions: tuple[StepPrediction, ...]
    n_scored: int
    median_abs_error: float | None
    baseline_median_abs_error: float | None
    within_interval: float | None  # share of scored runs whose outcome lies in the predicted interval
    missed: int
    surprised: int
    reason: str | None = None
    n_immediate: int = 0  # scored runs that generalized at their memorization step (no delay to predict)
    late_median_abs_error: float | None = None  # over the scored runs that generalized after memorizing
    late_baseline_median_abs_error: float | None = None

    def to_dict(self) -> dict:
        return jsonable(
            {
                k: getattr(self, k)
                for k in (
                    "n_scored",
                    "median_abs_error",
                    "baseline_median_abs_error",
                    "within_interval",
                    "missed",
                    "surprised",
                    "reason",
                    "n_immediate",
                    "late_median_abs_error",
                    "late_baseline_median_abs_error",
                )
            }
            | {"predictions": [p.to_dict() for p in self.predictions]}
        )


def generalization_backtest(
    runs: pd.DataFrame,
    clocks: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    run_col: str = "run_id",
    pools: tuple[str, ...] = ("cell",),
    mem_col: str = "memorization_step",
    gen_col: str = "generalization_step",
    min_pool: int = MIN_POOL,
) -> StepBacktest:
    """Backtest the clock's prediction on `runs` (one row per run with its memorization and
    generalization steps, NaN: not reached). `clocks[run_id]` = (steps, decay clock at those
    steps), increasing, over the run's whole budget (its last step is the budget)."""
    if not pools:
        raise ValueError("pools must name at least one column (e.g. the cell)")
    for col in (run_col, *pools, mem_col, gen_col):
        if col not in runs.columns:
            raise ValueError(f"the runs table has no column {col!r}")
    rows = []
    for _, r in runs.iterrows():
        steps, clock = clocks.get(r[run_col], (np.array([]), np.array([])))
        steps, clock = np.asarray(steps, dtype=float), np.asarray(clock, dtype=float)
        if steps.size != clock.size:
            raise ValueError(f"run {r[run_col]!r}: {steps.size} clock steps but {clock.size} clock values")
        rows.append(
            (
                str(r[run_col]),
                tuple(str(r[c]) for c in pools),
                _num(r[mem_col]),
                _num(r[gen_col]),
                steps,
                clock,
            )
        )
    deltas = {}
    for run, _, mem, gen, steps, clock in rows:  # what each run teaches: the decay it needed
        if mem is not None and gen is not None and gen >= mem and steps.size and clock[-1] > clock[0]:
            deltas[run] = float(np.interp(gen, steps, clock) - np.interp(mem, steps, clock))
    gen_steps = {run: gen for run, _, _, gen, _, _ in rows}
    teachers: dict[tuple[int, str], list[str]] = {}  # (pool index, its value) -> runs that taught a Δ
    for run, keys, *_ in rows:
        if run in deltas:
            for i, key in enumerate(keys):
                teachers.setdefault((i, key), []).append(run)
    predictions = [
        _predict(row, pools, teachers, deltas, gen_steps, min_pool) for row in rows if row[2] is not None
    ]
    scored = [p for p in predictions if p.error is not None]
    if not predictions:
        reason = "no run memorized: there is no memorization step to predict from"
    elif not scored:
        reason = (
            f"insufficient data: no run that generalized got a prediction (each needs {min_pool} other runs "
            f"that memorized, then generalized)"
        )
    else:
        reason = None
    late = [p for p in scored if p.observed != p.memorization_step]
    inside = [p.low <= p.observed <= p.high for p in scored if p.low is not None and p.high is not None]
    return StepBacktest(
        predictions=tuple(predictions),
        n_scored=len(scored),
        median_abs_error=_median_abs([p.error for p in scored]),
        baseline_median_abs_error=_median_abs([p.baseline_error for p in scored]),
        within_interval=float(np.mean(inside)) if inside else None,
        missed=sum(p.within_budget is True and p.observed is None for p in predictions),
        surprised=sum(p.within_budget is False and p.observed is not None for p in predictions),
        reason=reason,
        n_immediate=len(scored) - len(late),
        late_median_abs_error=_median_abs([p.error for p in late]),
        late_baseline_median_abs_error=_median_abs([p.baseline_error for p in late]),
    )


def _median_abs(errors: list[float | None]) -> float | None:
    kept = [abs(e) for e in errors if e is not None]
    return float(np.median(kept)) if kept else None


def _predict(
    row, pools: tuple[str, ...], teachers: dict, deltas: dict, gen_steps: dict, min_pool: int
) -> StepPrediction:
    run, keys, mem, gen, steps, clock = row
    base = dict(run_id=run, group=keys[0], memorization_step=mem, observed=gen)
    none = dict(
        predicted=None,
        low=None,
        high=None,
        within_budget=None,
        error=None,
        baseline=None,
        baseline_error=None,
    )
    if gen is not None and gen < mem:
        return StepPrediction(
            **base,
            **none,
            pool=None,
            n_pool=0,
            reason="generalized before it memorized: nothing left to predict",
        )
    if steps.size < 2 or not clock[-1] > clock[0]:
        return StepPrediction(
            **base,
            **none,
            pool=None,
            n_pool=0,
            reason="its decay clock does not move (no weight decay, or no schedule given)",
        )
    candidates = [(name, teachers.get((i, key), [])) for i, (name, key) in enumerate(zip(pools, keys))]
    options = [
        (name, [o for o in members if o != run]) for name, members in [*candidates, ("study", list(deltas))]
    ]
    pool_name, pool = next((o for o in options if len(o[1]) >= min_pool), options[-1])
    if len(pool) < min_pool:
        return StepPrediction(
            **base,
            **none,
            pool=None,
            n_pool=len(pool),
            reason=f"{len(pool)} other run(s) memorized and then generalized; needs {min_pool}",
        )
    needed = np.array([deltas[o] for o in pool])
    start = float(np.interp(mem, steps, clock))
    predicted, low, high = (
        _reach(steps, clock, start + v) for v in (np.median(needed), needed.min(), needed.max())
    )
    baseline = float(np.median([gen_steps[o] for o in pool]))
    return StepPrediction(
        **base,
        predicted=predicted,
        low=low,
        high=high,
        within_budget=predicted is not None,
        error=None if predicted is None or gen is None else predicted / gen - 1,
        baseline=baseline,
        baseline_error=None if gen is None else baseline / gen - 1,
        pool=pool_name,
        n_pool=len(pool),
    )


def _reach(steps: np.ndarray, clock: np.ndarray, target: float) -> float | None:
    """The first step at which the clock reaches target (linear between samples); None: not within
    the steps."""
    if target > clock[-1]:
        return None
    i = int(np.searchsorted(clock, target, side="left"))
    if i == 0:
        return float(steps[0])
    c0, c1 = clock[i - 1], clock[i]
    return float(steps[i - 1] + (steps[i] - steps[i - 1]) * ((target - c0) / (c1 - c0) if c1 > c0 else 1.0))


def _num(value) -> float | None:
    return None if value is None or pd.isna(value) else float(value)
