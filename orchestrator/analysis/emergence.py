"""Emergence thresholds: where a metric leaves chance as scale (N or D) grows.

Wei et al. (2022, "Emergent Abilities of Large Language Models") call an ability emergent when
it is near chance below some scale and well above chance beyond it. The threshold here is the
midpoint of a sigmoid in log scale,

    y = floor + (ceiling - floor) * sigmoid((log10 x - mid) / width),

with the floor fixed at chance and ceiling, mid and width fitted to the mean (or best) metric
at each measured scale. threshold = 10**mid, in the units of x.

No threshold (None, with a `reason`) when
  - the metric never leaves chance: its best scale is less than `min_jump` above chance
    (default a quarter of the way from chance to the best possible value, `min_rise` = 0.25);
  - it is already high at the smallest scale: that scale is at or above the midpoint level;
  - the fitted midpoint lies outside the measured range of x;
  - fewer than 3 distinct scales were measured.

Sharpness. Two numbers: `width_decades`, the decades of x over which the fitted curve rises
from 10% to 90% of its jump; and `fit_ratio`, the squared error of the best smooth scaling
curve y = c - b x^-a, 0 < a <= 2 (a saturating power law, the shape of smooth scaling-law improvement)
over that of the sigmoid, both fitted to the scale means with three free parameters. A power
law is concave in log x, so it cannot follow a flat start that then accelerates; a sigmoid
can. With Gaussian errors and equal parameter counts, `evidence` = n_scales * ln(fit_ratio)
is the difference in AIC between the two models; `sharp` = a threshold was found and
evidence >= `min_evidence` (default 6: "considerably less support" for the power law in
Burnham & Anderson's reading of AIC differences, 4-7; 10 would be "essentially none", which
three scales can never reach with the width bound below): the data show an S-shaped jump,
not smooth power-law improvement. This is what separates emergence from a mirage (Schaeffer et al.
2023; see `mirage.py`). Measured on 11 scales over 5 decades: a per-token accuracy
1 - 0.5 (N/1e3)^-0.5 has fit_ratio below 0.1 (evidence < -25) and its exact match over 10
tokens 7.7 (evidence 22); a logistic of width 0.3 decades is above 100.

Uncertainty. A bootstrap of the midpoint: when every scale has at least two points (seeds,
trials) the points are resampled with replacement within each scale ("cases"); with one point
per scale the residuals of the fit are resampled instead ("residuals"). The interval is the
central `ci` percentile interval of 10**mid. On a coarse grid the data cannot place the
midpoint more finely than between two measured scales: `bracket` gives those two scales, and
the fitted 10%-90% rise is never narrower than the smallest step between measured scales (so
a clean step between two scales puts the midpoint halfway between them in log x).

Refusals (what the data cannot decide is said, not guessed):
- `sharp` is None, with `sharp_reason`, below MIN_SCALES_SHARPNESS (5) measured scales. The
  test compares two curves of k = 3 free parameters each; AICc (Hurvich & Tsai 1989), the
  small-sample AIC, adds 2k(k+1)/(n-k-1), defined only for n > k + 1 = 4 scales. With 3 scales
  a 3-parameter sigmoid passes through the means exactly and "evidence" measures nothing.
- `censored`: when no measured scale lies inside the rise (every scale mean is within 10% of the
  floor or of the ceiling), the metric steps cleanly from one scale to the next and the midpoint
  can lie anywhere between them. Resampling runs cannot see that gap, so the interval is widened
  to cover the whole bracket, and `censored` says the threshold is known only to that bracket.
- `low_unbounded` / `high_unbounded`: when more than the interval's tail of bootstrap resamples
  put the midpoint outside the measured range (or never leave the floor: no threshold within
  the grid), that side of the interval is unbounded and reported as None.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from scipy.special import expit

from orchestrator.analysis.estimate import jsonable, usable_runs

WIDTH_10_90 = 2 * np.log(9)  # a logistic rises from 10% to 90% over 2 ln 9 of its scale
MAX_FIT_RATIO = 1e6  # reported in place of infinity (a sigmoid that fits exactly)
MAX_EXPONENT = 2.0  # the steepest smooth power law considered, per decade (see _fit_ratio)
N_FREE = 3  # free parameters of each curve the sharpness test compares (sigmoid; power law)
MIN_SCALES_SHARPNESS = N_FREE + 2  # AICc's correction 2k(k+1)/(n-k-1) needs n > k + 1
STEP_BAND = (
    0.1  # a scale mean within this fraction of the jump from floor or ceiling is "not inside the rise"
)


@dataclass(frozen=True)
class EmergenceFit:
    """A sigmoid fitted to a metric over scale; `threshold` is None when there is none (`reason`).

    floor and ceiling are in the metric's units; mid_log10 and width are in decades of x;
    mid_log10 is reported even when it lies outside the measured range.
    """

    threshold: float | None
    low: float | None
    high: float | None
    reason: str | None
    sharp: bool | None  # None: insufficient data to tell a jump from smooth growth (sharp_reason)
    fit_ratio: float | None
    evidence: float | None
    width_decades: float | None
    floor: float
    ceiling: float | None
    mid_log10: float | None
    width: float | None
    bracket: tuple[float, float] | None
    x_min: float
    x_max: float
    n_points: int
    n_scales: int
    n_boot: int
    bootstrap: str | None
    ci: float
    higher_is_better: bool = True
    sharp_reason: str | None = None
    censored: bool = False  # the threshold is known only to lie within `bracket`
    low_unbounded: bool = False
    high_unbounded: bool = False

    def predict(self, x: np.ndarray | float) -> np.ndarray:
        """The fitted curve at x (NaN everywhere when no sigmoid was fitted)."""
        x = np.asarray(x, dtype=float)
        if self.mid_log10 is None or self.ceiling is None:
            return np.full(x.shape, np.nan)
        z = (np.log10(x) - self.mid_log10) / self.width
        return self.floor + (self.ceiling - self.floor) / (1 + np.exp(-z))

    @property
    def midpoint_level(self) -> float | None:
        """The metric value halfway between floor and ceiling: the level of the threshold contour."""
        return None if self.ceiling is None else (self.floor + self.ceiling) / 2

    def to_dict(self) -> dict:
        return jsonable(
            {
                **{k: getattr(self, k) for k in self.__dataclass_fields__},
                "midpoint_level": self.midpoint_level,
            }
        )


@dataclass(frozen=True)
class CriticalSizes:
    """Critical-size lines over an (N, D) grid: D*(N), the threshold over D at each N, and
    N*(D), the threshold over N at each D. Each entry is (the fixed scale, its fit)."""

    metric: str
    n_col: str
    d_col: str
    chance: float
    d_star: tuple[tuple[float, EmergenceFit], ...]
    n_star: tuple[tuple[float, EmergenceFit], ...]

    def to_dict(self) -> dict:
        return jsonable(
            {
                "metric": self.metric,
                "n_col": self.n_col,
                "d_col": self.d_col,
                "chance": self.chance,
                "d_star": [{"n": n, **fit.to_dict()} for n, fit in self.d_star],
                "n_star": [{"d": d, **fit.to_dict()} for d, fit in self.n_star],
            }
        )


def emergence_threshold(
    x: np.ndarray,
    y: np.ndarray,
    *,
    chance: float | None = None,
    best_value: float | None = 1.0,
    min_rise: float = 0.25,
    min_jump: float | None = None,
    agg: Literal["mean", "best"] = "mean",
    higher_is_better: bool = True,
    min_evidence: float = 6.0,
    n_boot: int = 200,
    ci: float = 0.95,
    seed: int = 0,
) -> EmergenceFit:
    """Fit the emergence sigmoid of metric y over scale x (> 0); points at the same x are replicates.

    chance: the floor; default the lowest scale mean (highest when lower is better).
    best_value: the best possible value of the metric (1 for an accuracy, 0 for a log-likelihood
    or a loss), which bounds the ceiling and scales `min_rise`; None for an unbounded metric
    (then give `min_jump`). min_jump: the rise above chance that counts as leaving it, in the
    metric's units; default min_rise * |best_value - chance|.
    agg: how replicates at one scale combine, "mean" or "best" (the best run: the outcome of a
    search over regularization). higher_is_better: False for a loss.
    min_evidence: the AIC difference in favour of the sigmoid over a saturating power law
    that makes the threshold `sharp`.
    """
    if agg not in ("mean", "best"):
        raise ValueError(f"agg must be 'mean' or 'best', got {agg!r}")
    x, y = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    if x.size != y.size:
        raise ValueError(f"x and y must have the same length, got {x.size} and {y.size}")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if np.any(x <= 0):
        raise ValueError("x must be > 0 (the sigmoid is in log10 x)")
    sign = 1.0 if higher_is_better else -1.0
    y = sign * y  # from here on, higher is better
    scales, inverse = np.unique(x, return_inverse=True)
    groups = [y[inverse == i] for i in range(scales.size)]
    means = _aggregate(groups, agg)
    if chance is not None:
        floor = sign * chance
    elif means.size:
        floor = float(means.min())
    else:
        floor = np.nan
    cap = None if best_value is None else sign * best_value
    base = dict(
        low=None,
        high=None,
        sharp=False,
        sharp_reason=None,
        censored=False,
        low_unbounded=False,
        high_unbounded=False,
        fit_ratio=None,
        evidence=None,
        width_decades=None,
        ceiling=None,
        mid_log10=None,
        width=None,
        bracket=None,
        x_min=float(x.min()) if x.size else np.nan,
        x_max=float(x.max()) if x.size else np.nan,
        n_points=int(x.size),
        n_scales=int(scales.size),
        n_boot=0,
        bootstrap=None,
        ci=ci,
        higher_is_better=higher_is_better,
    )

    def result(reason: str | None, **fields) -> EmergenceFit:
        out = {**base, **fields}
        if out["ceiling"] is not None:
            out["ceiling"] = sign * out["ceiling"]
        return EmergenceFit(
            threshold=fields.get("threshold"),
            reason=reason,
            floor=sign * floor,
            **{k: v for k, v in out.items() if k != "threshold"},
        )

    if scales.size < 3:
        return result(f"fewer than 3 distinct scales (got {scales.size})")
    if min_jump is None:
        if cap is None:
            raise ValueError("an unbounded metric (best_value=None) needs min_jump")
        min_jump = min_rise * abs(cap - floor)
    rise = float(means.max() - floor)
    if rise < min_jump:
        return result(
            f"never leaves chance: the best scale is {rise:.4g} above chance {sign * floor:.4g}, "
            f"less than min_jump = {min_jump:.4g}"
        )
    u = np.log10(scales)
    mid, width, amp, sse = _fit_sigmoid(u, means, floor, cap)
    ceiling = floor + amp
    level = floor + amp / 2
    fit_ratio = _fit_ratio(u, means, sse, amp)
    evidence = float(scales.size * np.log(max(fit_ratio, 1e-300)))
    shape = dict(
        ceiling=ceiling,
        mid_log10=mid,
        width=width,
        width_decades=WIDTH_10_90 * width,
        fit_ratio=fit_ratio,
        evidence=evidence,
    )
    if means[0] >= level:
        return result(
            f"already high at the smallest scale: {sign * means[0]:.4g} is past the midpoint "
            f"level {sign * level:.4g}",
            **shape,
        )
    if not u[0] <= mid <= u[-1]:
        return result(
            f"the fitted midpoint x = {10**mid:.4g} lies outside the measured range "
            f"[{scales[0]:.4g}, {scales[-1]:.4g}]",
            **shape,
        )
    above = int(np.clip(np.searchsorted(u, mid, side="right"), 1, u.size - 1))
    bracket = (float(scales[above - 1]), float(scales[above]))  # the measured scales around the midpoint
    mids, method = _bootstrap(
        u,
        groups,
        agg,
        floor,
        cap,
        means - _sigmoid(u, mid, width, floor, amp),
        (mid, width, amp),
        n_boot,
        seed,
    )
    bounds = _bounded_interval(mids, u, ci)
    censored = not np.any((means > floor + STEP_BAND * amp) & (means < floor + (1 - STEP_BAND) * amp))
    if censored:  # a clean step: the midpoint may lie anywhere in the bracket, whatever the resamples say
        bounds["low"] = bracket[0] if bounds["low"] is None else min(bounds["low"], bracket[0])
        bounds["high"] = bracket[1] if bounds["high"] is None else max(bounds["high"], bracket[1])
        bounds["low"] = None if bounds["low_unbounded"] else bounds["low"]
        bounds["high"] = None if bounds["high_unbounded"] else bounds["high"]
    sharp, sharp_reason = bool(evidence >= min_evidence), None
    if scales.size < MIN_SCALES_SHARPNESS:
        sharp, sharp_reason = (
            None,
            (
                f"insufficient data: {scales.size} scales; telling a jump from smooth "
                f"growth compares two {N_FREE}-parameter curves by AICc, which needs at "
                f"least {MIN_SCALES_SHARPNESS} scales"
            ),
        )
    return result(
        None,
        threshold=float(10**mid),
        bracket=bracket,
        sharp=sharp,
        sharp_reason=sharp_reason,
        censored=bool(censored),
        n_boot=int(mids.size),
        bootstrap=method,
        **bounds,
        **shape,
    )


def critical_sizes(
    runs: pd.DataFrame,
    *,
    metric: str = "max_val_acc",
    n_col: str = "n_params",
    d_col: str = "n_train",
    chance: float | None = None,
    agg: Literal["mean", "best"] = "best",
    status_col: str | None = "status",
    statuses: tuple[str, ...] = ("completed", "stopped"),
    **kwargs,
) -> CriticalSizes:
    """D*(N) and N*(D) over a runs table (one row per training run): at each N, the emergence
    threshold of `metric` over D; at each D, over N. Every run of a cell (trials x seeds) is a
    replicate; agg="best" takes the best run of the cell (the outcome of the regularization
    search), and the bootstrap resamples runs within cells. The default chance, shared by every
    line, is the lowest cell value in the table. Other keyword arguments go to
    `emergence_threshold`."""
    table = usable_runs(runs, (metric, n_col, d_col), status_col, statuses)
    table = table[[n_col, d_col, metric]].apply(pd.to_numeric, errors="coerce").dropna()
    higher = kwargs.get("higher_is_better", True)
    if chance is None and len(table):
        cells = table.groupby([n_col, d_col])[metric]
        if agg == "mean":
            values = cells.mean()
        elif higher:
            values = cells.max()
        else:
            values = cells.min()
        chance = float(values.min() if higher else values.max())
    fits = {}
    for fixed, over in ((n_col, d_col), (d_col, n_col)):
        fits[fixed] = tuple(
            (
                float(value),
                emergence_threshold(
                    part[over].to_numpy(), part[metric].to_numpy(), chance=chance, agg=agg, **kwargs
                ),
            )
            for value, part in table.groupby(fixed)
        )
    return CriticalSizes(
        metric=metric,
        n_col=n_col,
        d_col=d_col,
        chance=np.nan if chance is None else chance,
        d_star=fits[n_col],
        n_star=fits[d_col],
    )


def _aggregate(groups: list[np.ndarray], agg: str) -> np.ndarray:
    return np.array([g.mean() if agg == "mean" else g.max() for g in groups])


def _sigmoid(u: np.ndarray, mid, width, floor: float, amp) -> np.ndarray:
    return floor + amp * expit((u - mid) / width)  # expit: no overflow far from the midpoint


def _fit_sigmoid(
    u: np.ndarray, g: np.ndarray, floor: float, cap: float | None
) -> tuple[float, float, float, float]:
    """Least squares of the sigmoid with the floor fixed: for a given (mid, width) the best
    amplitude is linear, so a grid over (mid, log width) with the amplitude in closed form,
    then three rounds of a 10x finer grid around the best point. Global and deterministic.
    Returns (mid, width, amplitude, squared error)."""
    span = u[-1] - u[0]
    target = g - floor
    amp_max = np.inf if cap is None else max(cap - floor, 1e-12)
    # The narrowest rise a grid resolves is one step between measured scales: below that
    # width the midpoint of a step could sit anywhere between the two scales.
    lw_lo, lw_hi = np.log(max(1e-3, np.diff(u).min() / WIDTH_10_90)), np.log(3 * span)
    mid_lo, mid_hi = u[0] - 2 * span, u[-1] + 2 * span

    def evaluate(mids: np.ndarray, log_widths: np.ndarray):
        m, lw = np.meshgrid(mids, log_widths, indexing="ij")
        s = expit((u[None, None, :] - m[..., None]) / np.exp(lw)[..., None])  # (M, W, n)
        amp = np.einsum("mwn,n->mw", s, target) / np.maximum(np.einsum("mwn,mwn->mw", s, s), 1e-300)
        amp = np.clip(amp, 1e-12, amp_max)
        sse = ((target - amp[..., None] * s) ** 2).sum(axis=-1)
        return m.ravel(), lw.ravel(), amp.ravel(), sse.ravel()

    n_mid, n_width = 121, 25
    m, lw, amp, sse = evaluate(
        np.linspace(u[0] - span, u[-1] + span, n_mid), np.linspace(lw_lo, lw_hi, n_width)
    )
    # A step between two scales fits equally well with any midpoint between them: take the
    # middle of the tied midpoints rather than the first.
    tied = np.flatnonzero(sse <= sse.min() + 1e-9 * ((target - target.mean()) ** 2).sum() + 1e-300)
    starts = [tied[np.argsort(m[tied])[len(tied) // 2]]]
    # Refine the best few local minima of the grid, not only the lowest point: with a coarse
    # grid the true basin can start out behind another one (a partial S fitted by a lower ceiling).
    surface = np.pad(sse.reshape(n_mid, n_width), 1, constant_values=np.inf)
    core = surface[1:-1, 1:-1]
    is_min = np.ones_like(core, dtype=bool)
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            if di or dj:
                is_min &= core <= surface[1 + di : 1 + di + n_mid, 1 + dj : 1 + dj + n_width]
    minima = np.flatnonzero(is_min.ravel())
    starts += [i for i in minima[np.argsort(sse[minima])][:4] if i not in starts]
    best_fit = None
    for start in starts:
        mi, lwi, dm, dlw = m[start], lw[start], 2 * span / (n_mid - 1), (lw_hi - lw_lo) / (n_width - 1)
        for _ in range(3):
            mm, ll, aa, ss = evaluate(
                np.clip(mi + np.linspace(-dm, dm, 21), mid_lo, mid_hi),
                np.clip(lwi + np.linspace(-dlw, dlw, 21), lw_lo, lw_hi),
            )
            k = int(np.argmin(ss))
            mi, lwi, dm, dlw = mm[k], ll[k], dm / 10, dlw / 10
        if best_fit is None or ss[k] < best_fit[3] - 1e-15:
            best_fit = (float(mm[k]), float(np.exp(ll[k])), float(aa[k]), float(ss[k]))
    return best_fit


def _fit_ratio(u: np.ndarray, g: np.ndarray, sse_sigmoid: float, amp: float) -> float:
    """Squared error of the best saturating power law g = c - b 10^(-a (u - u0)), b >= 0,
    over that of the sigmoid (both on the scale means). The exponent a is at most 2: the gap
    to the ceiling shrinks at most 100-fold per decade of scale, far steeper than measured
    smooth scaling laws (Kaplan et al. 2020: 0.076 for N; Hoffmann et al. 2022: 0.34, 0.28);
    without a cap a power law can mimic a step from one scale to the next."""
    exps = np.logspace(-3, np.log10(MAX_EXPONENT), 400)
    basis = -(10.0 ** (-exps[:, None] * (u - u[0])[None, :]))  # (A, n)
    bc = basis - basis.mean(axis=1, keepdims=True)
    gc = g - g.mean()
    b = np.clip(np.einsum("an,n->a", bc, gc) / np.maximum((bc * bc).sum(axis=1), 1e-300), 0, None)
    sse_power = float(((gc[None, :] - b[:, None] * bc) ** 2).sum(axis=1).min())
    noise_floor = 1e-12 * max(amp, 1e-12) ** 2 * u.size  # below this both fit exactly
    if sse_sigmoid <= noise_floor:
        return 1.0 if sse_power <= noise_floor else MAX_FIT_RATIO
    return float(min(sse_power / sse_sigmoid, MAX_FIT_RATIO))


def _bounded_interval(mids: np.ndarray, u: np.ndarray, ci: float) -> dict:
    """The percentile interval of 10**mid over the resamples, where a resample with no midpoint
    within the grid (NaN: it never left the floor; or a midpoint beyond the measured scales)
    counts as beyond that end: when more than the tail lies beyond an end, that side is unbounded."""
    tail = (1 - ci) / 2
    n = mids.size
    if n == 0:
        return dict(low=None, high=None, low_unbounded=True, high_unbounded=True)
    below = float(np.sum(mids < u[0])) / n
    above = float(np.sum(np.isnan(mids) | (mids > u[-1]))) / n
    inside = mids[np.isfinite(mids) & (mids >= u[0]) & (mids <= u[-1])]
    low_unbounded, high_unbounded = below > tail, above > tail
    # The interval's ends, as percentiles of all resamples (those beyond an end sort past it).
    ordered = np.sort(np.where(np.isnan(mids), np.inf, mids))
    lo = ordered[min(n - 1, int(np.floor(tail * n)))]
    hi = ordered[max(0, int(np.ceil((1 - tail) * n)) - 1)]
    clip = lambda v: float(10 ** np.clip(v, u[0], u[-1])) if inside.size else None  # noqa: E731
    return dict(
        low=None if low_unbounded else clip(lo),
        high=None if high_unbounded else clip(hi),
        low_unbounded=bool(low_unbounded),
        high_unbounded=bool(high_unbounded),
    )


def _bootstrap(
    u: np.ndarray,
    groups: list[np.ndarray],
    agg: str,
    floor: float,
    cap: float | None,
    residuals: np.ndarray,
    fitted: tuple[float, float, float],
    n_boot: int,
    seed: int,
) -> tuple[np.ndarray, str]:
    rng = np.random.default_rng(seed)
    cases = min(len(gr) for gr in groups) >= 2
    curve = _sigmoid(u, *fitted[:2], floor, fitted[2])
    mids = []
    for _ in range(n_boot):
        if cases:
            g = _aggregate([gr[rng.integers(0, len(gr), len(gr))] for gr in groups], agg)
        else:
            g = curve + residuals[rng.integers(0, len(residuals), len(residuals))]
        if g.max() - floor <= 0:
            mids.append(np.nan)  # never leaves the floor: no midpoint within the grid
            continue
        mids.append(_fit_sigmoid(u, g, floor, cap)[0])
    return np.array(mids), "cases" if cases else "residuals"
