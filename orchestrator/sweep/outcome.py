"""What a finished run and trial amount to: the run's summary metrics and the trial's values."""

from __future__ import annotations

import math

STEP_METRICS = ("generalization_step", "memorization_step", "grokking_delay")
STOP_KIND = "stop_kind"  # in a stopped run's result: the StopKind value of the rule that fired


def summarize(result: dict) -> dict[str, float | None]:
    """The run's final metrics plus what the objectives and the analysis read."""
    history = result.get("history") or {}
    events = result.get("events") or {}
    out: dict[str, float | None] = {k: v for k, v in (result.get("final") or {}).items() if k != "step"}
    out["max_val_acc"] = max(_finite(history.get("val_acc", [])), default=None)
    out["min_val_loss"] = min(_finite(history.get("val_loss", [])), default=None)
    mem, gen = events.get("memorization_step"), events.get("generalization_step")
    out["memorization_step"], out["generalization_step"] = mem, gen
    out["grokking_delay"] = gen - mem if mem is not None and gen is not None else None
    out["steps"] = result.get("steps")
    out["diverged_step"] = events.get("diverged_step")
    return out


def _finite(xs: list[float]) -> list[float]:
    return [x for x in xs if math.isfinite(x)]


def objective_value(metric: str, summary: dict, budget: int, eval_every: int) -> float:
    value = summary.get(metric)
    if value is None and metric in STEP_METRICS:
        # Never reached within the budget: censored just past it, so any run that got there ranks better.
        return float(budget + eval_every)
    return float("nan") if value is None else float(value)


def trial_values(
    metrics: list[str], runs: list[tuple[dict, dict, tuple[int, int]]], stopped: bool
) -> list[float]:
    """Each objective's value for a trial: the mean over its runs (one per seed), each given as
    (result, summary, (steps budget, eval_every)). A stopped run's step objective is censored
    where it stopped: a bound, not a value."""
    values = []
    for metric in metrics:
        vals = [
            objective_value(metric, summary, result.get("steps") or budget[0], budget[1])
            if stopped
            else objective_value(metric, summary, *budget)
            for result, summary, budget in runs
        ]
        values.append(sum(vals) / len(vals))
    return values
