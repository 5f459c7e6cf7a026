"""The critical data size D*(N): the least data from which a model of size N generalizes, as a
power law in N, predicted at a model size before it is trained, and backtested.

Per model size, D* is bracketed by the grid: it lies above the largest grid D that did not
generalize and at or below the smallest D from which every larger grid D generalized (a cell
generalizes when any of its runs did: each cell is tuned, and D* is the least data with which
the task can be learned at all). The grid cannot say more, so D* stays a bracket:
  interval  (low, high]: generalizes at `high`, not at `low`, the next grid value below;
  left      D* <= high: it generalized at the smallest D of the grid (left-censored);
  right     D* > low: it never generalized, even at the largest D (right-censored).

The law log10 D* = a + b log10 N. Its point estimate is least squares through the geometric
midpoints of the two-sided brackets (at least MIN_BRACKETED = 2: a line through fewer is not
determined). Honest about censoring, its interval is the set of all lines that pass through
every bracket, one-sided ones included (a linear program): the range of b over that set says
whether D* grows or shrinks with N, and the range of a + b log10 N' at a new size N' is the
prediction's interval. If no line passes through every bracket, D*(N) is not a power law on
this grid, and the law is refused with that reason.

Which way to expect: Varma et al. (2023, "Explaining grokking through circuit efficiency")
define D_crit as the data size at which memorizing and generalizing circuits are equally
efficient (memorizing gets less efficient as D grows; generalizing does not) and study it
over D and weight decay, not over N. Huang et al. (2024, "Unified view of grokking, double
descent and emergent abilities", Fig. 1) extend that picture to model size and draw D_crit
*decreasing* as models grow (larger models find the efficient circuit with less data); Zhu et
al. (2024, "Critical data size of language models from a grokking perspective") measure the
opposite, a critical size that grows with the model. So the sign of b is measured, not assumed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from orchestrator.analysis.estimate import Estimate, jsonable

Censoring = Literal["interval", "left", "right"]
MIN_BRACKETED = 2


@dataclass(frozen=True)
class CriticalData:
    """D* at one model size, bracketed by the grid (see the module's docstring)."""

    n: float
    low: float | None  # the largest grid D below D* that did not generalize (None: left-censored)
    high: float | None  # the smallest grid D from which every larger one generalized (None: right-censored)
    censoring: Censoring
    n_values: int  # grid D values measured at this N
    note: str | None = None

    @property
    def value(self) -> float | None:
        """The geometric midpoint of a two-sided bracket; None when censored."""
        return float(np.sqrt(self.low * self.high)) if self.censoring == "interval" else None

    def to_dict(self) -> dict:
        return jsonable(
            {
                **{k: getattr(self, k) for k in ("n", "low", "high", "censoring", "n_values", "note")},
                "value": self.value,
            }
        )


@dataclass(frozen=True)
class CriticalDataLaw:
    """log10 D* = log10_prefactor + exponent x log10 N, with the ranges over every line that
    passes through all brackets (None: unbounded on that side, or no fit: see `reason`)."""

    exponent: Estimate | None
    log10_prefactor: float | None
    direction: (
        Literal["grows", "shrinks", "undecided"] | None
    )  # D* as N grows, decided by the exponent's range
    n_sizes: int
    n_bracketed: int
    sizes: tuple[float, ...]
    reason: str | None = None
    brackets: tuple[
        tuple[float, float, float], ...
    ] = ()  # per size: log10 N, log10 low (or -inf), log10 high (or inf)

    def predict(self, n: float) -> Estimate | None:
        """D* at model size n: the law's value and the range of every line through all brackets."""
        if self.exponent is None or self.log10_prefactor is None:
            return None
        x = float(np.log10(n))
        lo, hi = _line_range(self.brackets, x)
        value = 10 ** (self.log10_prefactor + self.exponent.value * x)
        return Estimate(
            float(value), None if lo is None else float(10**lo), None if hi is None else float(10**hi)
        )

    def to_dict(self) -> dict:
        exp = self.exponent
        return jsonable(
            {
                "exponent": None if exp is None else exp.value,
                "exponent_low": None if exp is None else exp.low,
                "exponent_high": None if exp is None else exp.high,
                "log10_prefactor": self.log10_prefactor,
                "direction": self.direction,
                "n_sizes": self.n_sizes,
                "n_bracketed": self.n_bracketed,
                "sizes": self.sizes,
                "reason": self.reason,
            }
        )


@dataclass(frozen=True)
class CriticalDataBacktest:
    """D* at the held-out size `n`, predicted from the smaller sizes only, against what its grid
    measured. `error` = predicted / observed midpoint - 1 (None when the outcome is censored);
    `agrees`: the predicted interval meets the observed bracket."""

    n: float
    fitted_sizes: tuple[float, ...]
    predicted: Estimate | None
    observed: CriticalData
    error: float | None
    within_bracket: bool | None  # the predicted value lies inside the observed bracket
    agrees: bool | None
    reason: str | None = None

    def to_dict(self) -> dict:
        p = self.predicted
        return jsonable(
            {
                "n": self.n,
                "fitted_sizes": self.fitted_sizes,
                "predicted": None if p is None else p.value,
                "predicted_low": None if p is None else p.low,
                "predicted_high": None if p is None else p.high,
                "observed": self.observed.to_dict(),
                "error": self.error,
                "within_bracket": self.within_bracket,
                "agrees": self.agrees,
                "reason": self.reason,
            }
        )


def critical_data_sizes(n: np.ndarray, d: np.ndarray, generalized: np.ndarray) -> tuple[CriticalData, ...]:
    """D* per model size from one row per run: its N, its D and whether it generalized."""
    n, d = np.asarray(n, dtype=float).ravel(), np.asarray(d, dtype=float).ravel()
    generalized = np.asarray(generalized, dtype=bool).ravel()
    if not n.size == d.size == generalized.size:
        raise ValueError(
            f"n, d and generalized must have the same length, got {n.size}, {d.size}, {generalized.size}"
        )
    ok = np.isfinite(n) & np.isfinite(d) & (n > 0) & (d > 0)
    out = []
    for size in np.unique(n[ok]):
        mine = ok & (n == size)
        ds = np.unique(d[mine])
        cell = np.array([generalized[mine & (d == v)].any() for v in ds])
        # The smallest D from which every larger grid D generalized.
        first = ds.size - int(np.argmax(~cell[::-1])) if not cell.all() else 0
        note = None
        if first < ds.size and cell[:first].any():
            below = ", ".join(f"{v:g}" for v in ds[:first][cell[:first]])
            note = f"also generalized at D = {below}, below a D that did not: not monotone in D"
        if first == ds.size:
            out.append(CriticalData(float(size), float(ds[-1]), None, "right", int(ds.size), note))
        elif first == 0:
            out.append(CriticalData(float(size), None, float(ds[0]), "left", int(ds.size), note))
        else:
            out.append(
                CriticalData(
                    float(size), float(ds[first - 1]), float(ds[first]), "interval", int(ds.size), note
                )
            )
    return tuple(out)


def fit_critical_data(
    points: Sequence[CriticalData], *, min_bracketed: int = MIN_BRACKETED
) -> CriticalDataLaw:
    """The power law D*(N) through the brackets of `points` (see the module's docstring)."""
    points = sorted(points, key=lambda p: p.n)
    sizes = tuple(p.n for p in points)
    two_sided = [p for p in points if p.censoring == "interval"]
    base = dict(n_sizes=len(points), n_bracketed=len(two_sided), sizes=sizes)
    none = dict(exponent=None, log10_prefactor=None, direction=None)
    if len({p.n for p in two_sided}) < min_bracketed:
        censored = ", ".join(
            f"N = {p.n:g}: D* {'<=' if p.censoring == 'left' else '>'} "
            f"{p.high if p.censoring == 'left' else p.low:g}"
            for p in points
            if p.censoring != "interval"
        )
        return CriticalDataLaw(
            **none,
            **base,
            reason=(
                f"insufficient data: {len(two_sided)} model size(s) with D* bracketed on both sides, the law "
                f"needs {min_bracketed}" + (f"; censored: {censored}" if censored else "")
            ),
        )
    brackets = tuple(
        (
            float(np.log10(p.n)),
            -np.inf if p.low is None else float(np.log10(p.low)),
            np.inf if p.high is None else float(np.log10(p.high)),
        )
        for p in points
    )
    if not _feasible(brackets):
        return CriticalDataLaw(
            **none,
            **base,
            reason="no power law passes through every bracket: D*(N) is not a "
            "power law on this grid (or one size is an outlier)",
        )
    x = np.log10([p.n for p in two_sided])
    y = np.log10([p.value for p in two_sided])
    b, a = np.polyfit(x, y, 1)
    b_lo, b_hi = _slope_range(brackets)
    if b_lo is not None and b_lo > 0:
        direction = "grows"
    elif b_hi is not None and b_hi < 0:
        direction = "shrinks"
    else:
        direction = "undecided"
    return CriticalDataLaw(
        exponent=Estimate(float(b), b_lo, b_hi),
        log10_prefactor=float(a),
        direction=direction,
        **base,
        brackets=brackets,
    )


def critical_data_backtest(
    points: Sequence[CriticalData], *, min_sizes: int = MIN_BRACKETED
) -> tuple[CriticalDataBacktest, ...]:
    """Each model size from the (min_sizes + 1)-th on, predicted from the smaller sizes alone (the
    last one is the leave-last-out backtest: D* at the largest N before it was trained)."""
    points = sorted(points, key=lambda p: p.n)
    out = []
    for j in range(min_sizes, len(points)):
        held = points[j]
        law = fit_critical_data(points[:j], min_bracketed=min_sizes)
        pred = law.predict(held.n)
        if pred is None:
            out.append(
                CriticalDataBacktest(
                    held.n,
                    law.sizes,
                    None,
                    held,
                    None,
                    None,
                    None,
                    reason=f"no law on the smaller sizes: {law.reason}",
                )
            )
            continue
        lo = -np.inf if held.low is None else held.low
        hi = np.inf if held.high is None else held.high
        error = pred.value / held.value - 1 if held.value is not None else None
        p_lo = 0.0 if pred.low is None else pred.low
        p_hi = np.inf if pred.high is None else pred.high
        out.append(
            CriticalDataBacktest(
                held.n,
                law.sizes,
                pred,
                held,
                None if error is None else float(error),
                bool(lo < pred.value <= hi),
                bool(p_lo <= hi and p_hi > lo),
            )
        )
    return tuple(out)


def _linprog(c: np.ndarray, brackets) -> float | None:
    """min c . (a, b) subject to low_i <= a + b x_i <= high_i; None when unbounded, nan when infeasible."""
    from scipy.optimize import linprog

    rows, rhs = [], []
    for x, lo, hi in brackets:
        if np.isfinite(hi):
            rows.append([1.0, x])
            rhs.append(hi)
        if np.isfinite(lo):
            rows.append([-1.0, -x])
            rhs.append(-lo)
    res = linprog(
        c, A_ub=np.array(rows), b_ub=np.array(rhs), bounds=[(None, None), (None, None)], method="highs"
    )
    if res.status == 3:
        return None
    return float(res.fun) if res.status == 0 else float("nan")


def _feasible(brackets) -> bool:
    value = _linprog(np.zeros(2), brackets)
    return value is None or np.isfinite(value)


def _slope_range(brackets) -> tuple[float | None, float | None]:
    lo = _linprog(np.array([0.0, 1.0]), brackets)
    hi = _linprog(np.array([0.0, -1.0]), brackets)
    return lo, None if hi is None else -hi


def _line_range(brackets, x: float) -> tuple[float | None, float | None]:
    if not brackets:
        return None, None
    lo = _linprog(np.array([1.0, x]), brackets)
    hi = _linprog(np.array([-1.0, -x]), brackets)
    return lo, None if hi is None else -hi
