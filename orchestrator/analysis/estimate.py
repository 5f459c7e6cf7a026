"""A value with its bootstrap interval, the JSON-safe conversion every result uses, and the
rows of a runs table an analysis may read."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Estimate:
    """A point estimate and its bootstrap percentile interval (None where no resample fitted)."""

    value: float
    low: float | None = None
    high: float | None = None


def usable_runs(
    runs: pd.DataFrame, columns: tuple[str, ...], status_col: str | None, statuses: tuple[str, ...]
) -> pd.DataFrame:
    """The runs whose status is one of `statuses` (all runs when there is no status column);
    a ValueError names the first of `columns` the table lacks."""
    for col in columns:
        if col not in runs.columns:
            raise ValueError(f"the runs table has no column {col!r}")
    if status_col is not None and status_col in runs.columns:
        return runs[runs[status_col].isin(statuses)]
    return runs


def interval(samples: np.ndarray, ci: float) -> tuple[float | None, float | None]:
    """The central `ci` percentile interval of the finite bootstrap samples; (None, None) if none."""
    samples = np.asarray(samples, dtype=float)
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return None, None
    tail = 100 * (1 - ci) / 2
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)


def jsonable(value: Any) -> Any:
    """Plain Python for json.dumps: numpy scalars to float/int, NaN and inf to None, tuples to lists,
    dataclasses to dicts."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value
