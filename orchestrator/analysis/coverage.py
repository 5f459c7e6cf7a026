"""Do the intervals grokscale reports hold as often as they claim? Coverage of each kind of
extrapolation interval over backtests whose truth is known (a size or budget held out, predicted
from the rest, then compared with what was trained).

Per kind: how many backtests, how many intervals held the truth, the rate with its exact
(Clopper-Pearson) 95% interval, and a calibration factor: the factor by which every interval,
widened about its point estimate, would have to grow for NOMINAL (90%) of the truths to fall in it
(the 90th percentile, an order statistic, of |truth - estimate| / the interval's half-width on the
truth's side; in log scale
for quantities that are, N and D). A kind that covers less than FLAG_BELOW (70%) is flagged, with
that factor as the stated widening. With a handful of backtests the rate's own interval is wide,
and the page says so rather than calling an interval calibrated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import beta

from orchestrator.analysis.estimate import jsonable

NOMINAL = 0.9
FLAG_BELOW = 0.7


@dataclass(frozen=True)
class Check:
    """One backtest: the truth, the point estimate and its interval (None: open on that side)."""

    truth: float
    estimate: float
    low: float | None
    high: float | None
    log: bool = False  # compare in log scale (N, D, steps)
    source: str = ""

    def _t(self, x: float) -> float:
        return math.log(x) if self.log else x

    @property
    def held(self) -> bool:
        return (self.low is None or self.low <= self.truth) and (self.high is None or self.truth <= self.high)

    @property
    def scale(self) -> float:
        """|truth - estimate| over the half-width on the truth's side (0 when it is the estimate;
        inf when that side's half-width is 0)."""
        gap = self._t(self.truth) - self._t(self.estimate)
        bound = self.high if gap > 0 else self.low
        if gap == 0 or bound is None:
            return 0.0
        half = abs(self._t(bound) - self._t(self.estimate))
        return abs(gap) / half if half > 0 else math.inf


@dataclass(frozen=True)
class Coverage:
    kind: str
    n: int
    held: int
    rate: float | None
    rate_low: float | None
    rate_high: float | None
    factor: float | None  # widen every interval by this to cover NOMINAL of the backtests
    flagged: bool
    sources: tuple[str, ...]

    def to_dict(self) -> dict:
        return jsonable(
            {
                k: getattr(self, k)
                for k in ("kind", "n", "held", "rate", "rate_low", "rate_high", "factor", "flagged")
            }
            | {"sources": list(self.sources)}
        )


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    a = (1 - level) / 2
    low = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return low, high


def coverage(kind: str, checks: list[Check]) -> Coverage:
    if not checks:
        return Coverage(kind, 0, 0, None, None, None, None, False, ())
    held = sum(c.held for c in checks)
    rate = held / len(checks)
    low, high = clopper_pearson(held, len(checks))
    # The smallest factor that puts at least NOMINAL of the truths inside: an order statistic,
    # not an interpolation between two (with 2 backtests, 90% means both).
    factor = float(np.quantile([c.scale for c in checks], NOMINAL, method="higher"))
    return Coverage(
        kind,
        len(checks),
        held,
        rate,
        low,
        high,
        factor,
        rate < FLAG_BELOW,
        tuple(sorted({c.source for c in checks})),
    )
