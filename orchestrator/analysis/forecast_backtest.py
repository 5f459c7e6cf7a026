"""Backtests of the downstream forecast (downstream.py) on a study's own runs: each of the largest
model sizes predicted from the smaller ones only, the truth set against the 90% interval; and the
baseline it must beat, a sigmoid of the metric fitted directly over log N on the same small runs
(what one does without the loss: Wei et al. 2022's plots, read as a curve to extend).

A holdout of h sizes fits both steps on the runs of every other (smaller) size and predicts each
held-out run at its own (N, D). Holdouts go from 1 up to half the sizes (at least 3 must remain to
fit on). `covered` is counted over the predictions the small runs called predictable; every
prediction is listed with its reason when it was not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import curve_fit
from scipy.special import expit

from orchestrator.analysis.downstream import Evaluations, Prediction, forecast_downstream
from orchestrator.analysis.estimate import jsonable

MIN_FIT_SIZES = 3


@dataclass(frozen=True)
class HeldOut:
    """One held-out run: the chained forecast, the direct baseline's, and what it reached."""

    prediction: Prediction
    actual: float
    direct: float | None  # the direct sigmoid over log N at this N; None when it could not be fitted

    @property
    def covered(self) -> bool:
        m = self.prediction.metric
        return m.low is not None and m.high is not None and m.low <= self.actual <= m.high

    def to_dict(self) -> dict:
        return jsonable(
            {
                **self.prediction.to_dict(),
                "actual": self.actual,
                "covered": self.covered,
                "error": self.prediction.metric.value - self.actual,
                "direct": self.direct,
                "direct_error": None if self.direct is None else self.direct - self.actual,
            }
        )


@dataclass(frozen=True)
class Backtest:
    holdout: int  # the largest sizes held out
    fit_sizes: tuple[float, ...]
    held_out: tuple[HeldOut, ...]

    def to_dict(self) -> dict:
        trusted = [h for h in self.held_out if h.prediction.predictable]
        return jsonable(
            {
                "holdout": self.holdout,
                "fit_sizes": list(self.fit_sizes),
                "predictions": [h.to_dict() for h in self.held_out],
                "predictable": len(trusted),
                "covered": sum(h.covered for h in trusted),
                "covered_all": sum(h.covered for h in self.held_out),
            }
        )


def direct_sigmoid(n: np.ndarray, metric: np.ndarray, chance: float | None):
    """metric = b + a expit(k (log N - log N0)) fitted to the runs' final metrics, b fixed at
    chance when given; a function of N, or None when it cannot be fitted."""
    x, y = np.log(np.asarray(n, float)), np.asarray(metric, float)
    b0 = 0.0 if chance is None else chance

    def f(x, a, k, x0):
        return b0 + a * expit(k * (x - x0))

    try:
        (a, k, x0), _ = curve_fit(
            f,
            x,
            y,
            p0=[max(y.max() - b0, 1e-3), 2.0, np.median(x)],
            bounds=([0, 0, x.min() - 10], [1 - b0, 50, x.max() + 10]),
            maxfev=20000,
        )
    except (RuntimeError, ValueError):
        return None
    return lambda n_new: float(f(np.log(n_new), a, k, x0))


def backtest_forecasts(
    n: np.ndarray,
    d: np.ndarray,
    loss: np.ndarray,
    metric: np.ndarray,
    evaluations: Evaluations,
    *,
    chance: float | None = None,
    n_boot: int = 200,
    seed: int = 0,
    max_holdout: int | None = None,
) -> list[Backtest]:
    """Runs (final loss and metric, one row each) and their evaluations: a Backtest per holdout,
    from 1 to `max_holdout` (default half the sizes) largest sizes held out."""
    n, d, loss, metric = (np.asarray(v, float) for v in (n, d, loss, metric))
    sizes = np.unique(n)
    out = []
    for h in range(1, (len(sizes) // 2 if max_holdout is None else max_holdout) + 1):
        if len(sizes) - h < MIN_FIT_SIZES:
            break
        cut = sizes[-h - 1]
        small, big = n <= cut, n > cut
        keep = evaluations.n <= cut
        ev = Evaluations(
            evaluations.n[keep],
            evaluations.d[keep],
            evaluations.loss[keep],
            evaluations.metric[keep],
            None if evaluations.step is None else evaluations.step[keep],
        )
        targets = list(zip(n[big], d[big]))
        fc = forecast_downstream(
            n[small], d[small], loss[small], ev, targets, chance=chance, n_boot=n_boot, seed=seed
        )
        direct = direct_sigmoid(n[small], metric[small], chance)
        held = tuple(
            HeldOut(p, float(a), None if direct is None else direct(p.n))
            for p, a in zip(fc.predictions, metric[big])
        )
        out.append(Backtest(h, tuple(float(s) for s in sizes[sizes <= cut]), held))
    return out
