"""Pure measures the claims share, over a page's per-run records (`page_runs`) and one run's curve.

A record is a dict with at least: run_id, status, n (parameters), d (training examples),
d_value (the grid's d: a training fraction for modular tasks), weight_decay, lr, max_val_acc,
val_threshold, memorization_step, generalization_step, phase, last_step, eval_every,
plateau_end and reach_step (see `curve_rise`). Missing values are None.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

USABLE = (
    "completed",
    "stopped",
)  # orchestrator/store/names.py USABLE_STATUSES: runs whose metrics mean what they say
ALPHA = 0.05  # a trend or difference is "measured" when a one-sided test gives p below this
CHANCE_BAND = 0.1  # "still at chance": within a tenth of the way from chance to perfect accuracy


def usable(records: Iterable[dict]) -> list[dict]:
    return [r for r in records if r.get("status") in USABLE]


def number(value) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def generalized(r: dict) -> bool:
    """The run generalized: its trainer recorded a generalization step, or its best validation
    accuracy reached its own threshold (as orchestrator/report/prediction_section.py decides)."""
    if number(r.get("generalization_step")) is not None:
        return True
    best, threshold = number(r.get("max_val_acc")), number(r.get("val_threshold"))
    return best is not None and threshold is not None and best >= threshold


def curve_rise(steps, val_acc, *, chance: float, threshold: float) -> tuple[float | None, float | None]:
    """(plateau_end, reach_step) of one validation curve: reach_step is the first evaluation at
    or above `threshold`; plateau_end the last evaluation before it still within CHANCE_BAND of
    chance (None: it had left chance by its first evaluation, or never reached the threshold).
    The rise from chance to threshold took at most reach_step - plateau_end steps."""
    steps, val = np.asarray(steps, dtype=float), np.asarray(val_acc, dtype=float)
    order = np.argsort(steps, kind="stable")
    steps, val = steps[order], val[order]
    hits = np.flatnonzero(val >= threshold)
    if not hits.size:
        return None, None
    reach = float(steps[hits[0]])
    near = np.flatnonzero(val[: hits[0]] <= chance + CHANCE_BAND * (1.0 - chance))
    return (float(steps[near[-1]]) if near.size else None), reach


def trend(x: list[float], y: list[float]) -> tuple[float | None, float | None, float | None]:
    """Spearman's rank correlation of y with x and its two one-sided p-values
    (rho, p that rho < 0, p that rho > 0); None when fewer than 4 points or a constant side."""
    from scipy.stats import spearmanr

    if len(x) < 4 or len(set(x)) < 2 or len(set(y)) < 2:
        return None, None, None
    rho = float(spearmanr(x, y).statistic)
    less = float(spearmanr(x, y, alternative="less").pvalue)
    greater = float(spearmanr(x, y, alternative="greater").pvalue)
    return rho, less, greater


def rate(records: list[dict]) -> str:
    """ "k of n" generalized."""
    return f"{sum(generalized(r) for r in records)} of {len(records)}"


def rate_difference(high: list[dict], low: list[dict]) -> tuple[float | None, float | None]:
    """Fisher's exact test that runs in `high` generalize more often than those in `low`:
    (p that high > low, p that high < low); None when a group is empty."""
    from scipy.stats import fisher_exact

    if not high or not low:
        return None, None
    hh, lh = sum(map(generalized, high)), sum(map(generalized, low))
    table = [[hh, len(high) - hh], [lh, len(low) - lh]]
    return float(fisher_exact(table, alternative="greater").pvalue), float(
        fisher_exact(table, alternative="less").pvalue
    )


def medians_by(records: list[dict], key: str, value: str) -> dict[float, float]:
    """The median of `value` over the records at each value of `key` (records without either skipped)."""
    groups: dict[float, list[float]] = {}
    for r in records:
        k, v = number(r.get(key)), number(r.get(value))
        if k is not None and v is not None:
            groups.setdefault(k, []).append(v)
    return {k: float(np.median(v)) for k, v in sorted(groups.items())}


def fmt(value, spec: str = ".3g") -> str:
    return "n/a" if value is None else format(value, spec)


def listing(mapping: dict[float, float], key_spec: str = "g", value_spec: str = ",.0f") -> str:
    return ", ".join(f"{format(k, key_spec)}: {format(v, value_spec)}" for k, v in mapping.items()) or "none"


def median(values: list[float]) -> float | None:
    return float(np.median(values)) if values else None
