"""Does a fitted scaling law describe its data? A law that does not is rejected, with reasons,
and its numbers are neither logged as metrics nor drawn as if they held.

On a grokking study the L(N, D) fit once printed E = 7.5e-156 and alpha = 10.9, with an
interval for E of [0, 8.6e-71]: the optimizer had driven E to its bound and an exponent far past
anything a scaling law has shown, and the numbers were logged where a reader could quote them.
Three tests, each a reason on its own:

- residuals: the law must explain the variation of log-loss across runs: R^2 of the log-loss
  >= MIN_R2 (0.8). A law in N and D fitted to losses set by something else (regularization,
  grokking) explains little of them.
- parameters at their bounds: an exponent above MAX_EXPONENT (2.5: the initialization grid of
  Hoffmann et al. 2022 stops at 2, and measured exponents are 0.05-0.5: Kaplan et al. 2020;
  Hoffmann et al. 2022) or below MIN_EXPONENT (0.01: a flat term, whose coefficient then trades
  off against E without bound); or E collapsed to zero (below MIN_E_FRACTION of the smallest
  loss: no irreducible loss at all, the bound of E = exp(e)).
- intervals that span decades: a coefficient (E, A, B) whose bootstrap interval covers more than
  MAX_DECADES (2) decades or touches 0 or infinity, or an exponent whose interval is wider than
  MAX_EXPONENT_WIDTH (1.0): the data do not pin the law down.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from orchestrator.analysis.estimate import jsonable
from orchestrator.analysis.scaling import ScalingLawFit

MIN_R2 = 0.8
MAX_EXPONENT = 2.5
MIN_EXPONENT = 0.01
MIN_E_FRACTION = 1e-3
MAX_DECADES = 2.0
MAX_EXPONENT_WIDTH = 1.0


@dataclass(frozen=True)
class FitCheck:
    accepted: bool
    reasons: tuple[str, ...]  # why it was rejected (empty when accepted)
    r2_log: float | None  # share of the log-loss variance the law explains

    @property
    def reason(self) -> str | None:
        return "; ".join(self.reasons) or None

    def to_dict(self) -> dict:
        return jsonable({"accepted": self.accepted, "reasons": list(self.reasons), "r2_log": self.r2_log})


def check_fit(fit: ScalingLawFit, n: np.ndarray | None, d: np.ndarray | None, loss: np.ndarray) -> FitCheck:
    """Accept or reject `fit` against the (n, d, loss) it was fitted to."""
    loss = np.asarray(loss, dtype=float)
    reasons: list[str] = []
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        predicted = fit.predict(None if fit.A is None else n, None if fit.B is None else d)
        resid = np.log(predicted) - np.log(loss)
    spread = float(np.sum((np.log(loss) - np.log(loss).mean()) ** 2))
    r2 = None
    if np.all(np.isfinite(resid)) and spread > 0:
        r2 = 1.0 - float(np.sum(resid**2)) / spread
        if r2 < MIN_R2:
            reasons.append(
                f"residuals: the law explains {max(r2, 0.0):.0%} of the log-loss variance "
                f"(needs >= {MIN_R2:.0%})"
            )
    elif not np.all(np.isfinite(resid)):
        reasons.append("residuals: the law does not give a finite loss at every run")
    for name in ("alpha", "beta"):
        est = getattr(fit, name)
        if est is None:
            continue
        if not MIN_EXPONENT <= est.value <= MAX_EXPONENT:
            reasons.append(
                f"{name} = {est.value:.3g} is at a bound (plausible exponents lie in "
                f"[{MIN_EXPONENT}, {MAX_EXPONENT}])"
            )
        elif est.low is None or est.high is None or est.high - est.low > MAX_EXPONENT_WIDTH:
            width = "unbounded" if est.low is None or est.high is None else f"{est.high - est.low:.3g} wide"
            reasons.append(f"{name}'s interval is {width} (> {MAX_EXPONENT_WIDTH})")
    if fit.E.value < MIN_E_FRACTION * float(loss.min()):
        reasons.append(f"E = {fit.E.value:.3g} is at its bound 0 (no irreducible loss)")
    for name in ("E", "A", "B"):
        est = getattr(fit, name)
        if est is None or (name == "E" and any("E =" in r for r in reasons)):
            continue
        low, high = est.low, est.high
        if low is None or high is None or not np.isfinite(high) or low <= 0:
            reasons.append(f"{name}'s interval [{low}, {high}] is open: the data do not bound it")
        elif np.log10(high / low) > MAX_DECADES:
            reasons.append(
                f"{name}'s interval [{low:.3g}, {high:.3g}] spans {np.log10(high / low):.1f} decades "
                f"(> {MAX_DECADES:g})"
            )
    return FitCheck(not reasons, tuple(reasons), r2)
