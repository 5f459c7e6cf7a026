"""An extrapolation backtest of the compute-optimal frontier on an IsoFLOP study: how far can the
law be trusted beyond the budgets it was fitted to? (DESIGN.md, "Compute-optimal scaling".)

Hold out the largest budget; fit on every other budget; predict the held-out budget's N_opt and
its loss L_opt; compare with what its own IsoFLOP parabola says (the "observed" optimum, with its
bootstrap interval). Two predictors:
  - "isoflop" (approach 2): the power law N_opt = G (C/k)^a through the other budgets' minima,
    and a pure power law in C through their minimum losses, ln L_opt = c + g ln C (no
    irreducible term: with three or four budgets a third parameter is not identified, so a
    long extrapolation overstates the improvement);
  - "loss_law" (approach 3): L(N, D) refitted to the other budgets' runs (D = C / (k N)), and its
    closed-form frontier at the held-out budget.
Errors are predicted / observed - 1. A predictor that cannot be fitted, or a held-out budget
without a bracketed minimum, gives None with a `reason`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from orchestrator.analysis.estimate import Estimate, interval, jsonable
from orchestrator.analysis.frontier import FLOPS_PER_TOKEN, loss_law_frontier, ols_rows
from orchestrator.analysis.isoflop import IsoFlopFit, fit_isoflop, group_budgets
from orchestrator.analysis.scaling import fit_scaling_law

PREDICTORS = ("isoflop", "loss_law")


@dataclass(frozen=True)
class Backtest:
    """One predictor's extrapolation to the held-out largest budget `flops`, fitted on
    `n_budgets` smaller budgets (`n_runs` runs)."""

    approach: str
    flops: float
    n_budgets: int
    n_runs: int
    N_opt_predicted: Estimate | None
    N_opt_observed: Estimate | None
    L_opt_predicted: Estimate | None
    L_opt_observed: Estimate | None
    N_opt_error: float | None  # predicted / observed - 1
    L_opt_error: float | None
    reason: str | None = None

    def to_dict(self) -> dict:
        """Flat: approach, flops, ..., N_opt_predicted, N_opt_predicted_low, ..., N_opt_error, reason."""
        out: dict = {
            "approach": self.approach,
            "flops": self.flops,
            "n_budgets": self.n_budgets,
            "n_runs": self.n_runs,
        }
        for name in ("N_opt_predicted", "N_opt_observed", "L_opt_predicted", "L_opt_observed"):
            est = getattr(self, name)
            out.update(
                {
                    name: None if est is None else est.value,
                    f"{name}_low": None if est is None else est.low,
                    f"{name}_high": None if est is None else est.high,
                }
            )
        out.update(N_opt_error=self.N_opt_error, L_opt_error=self.L_opt_error, reason=self.reason)
        return jsonable(out)


def extrapolation_backtest(
    n: np.ndarray,
    flops: np.ndarray,
    loss: np.ndarray,
    *,
    predictors: tuple[str, ...] = PREDICTORS,
    flops_per_token: float = FLOPS_PER_TOKEN,
    n_boot: int = 200,
    ci: float = 0.95,
    seed: int = 0,
    min_budgets: int = 3,
    budget_rtol: float = 1e-3,
) -> tuple[Backtest, ...]:
    """Backtest each of `predictors` on IsoFLOP runs (N, budget, final loss per run)."""
    unknown = set(predictors) - set(PREDICTORS)
    if unknown:
        raise ValueError(f"predictors must be among {PREDICTORS}, got {sorted(unknown)}")
    kw = dict(flops_per_token=flops_per_token, n_boot=n_boot, ci=ci, seed=seed, budget_rtol=budget_rtol)
    full = fit_isoflop(n, flops, loss, min_budgets=min_budgets, **kw)
    n, flops, loss = (np.asarray(v, dtype=float).ravel() for v in (n, flops, loss))
    groups = group_budgets(flops, budget_rtol)
    held = full.budgets[-1]
    train = np.concatenate([idx for _, idx in groups[:-1]]) if len(groups) > 1 else np.array([], dtype=int)
    base = dict(
        flops=held.flops,
        n_budgets=len(groups) - 1,
        n_runs=int(train.size),
        N_opt_observed=held.N_opt,
        L_opt_observed=held.L_opt,
    )
    out = []
    for name in predictors:
        if not held.trusted:
            reason = f"the largest budget has no observed optimum to compare with: {held.reason}"
            out.append(
                Backtest(
                    name,
                    **base,
                    N_opt_predicted=None,
                    L_opt_predicted=None,
                    N_opt_error=None,
                    L_opt_error=None,
                    reason=reason,
                )
            )
            continue
        if name == "isoflop":
            part = (
                fit_isoflop(n[train], flops[train], loss[train], min_budgets=min_budgets, **kw)
                if train.size
                else None
            )
            n_pred, l_pred, reason = isoflop_prediction(part, held.flops, flops_per_token, ci, min_budgets)
        else:
            n_pred, l_pred, reason = _loss_law_prediction(
                n[train], flops[train], loss[train], held.flops, flops_per_token, n_boot, ci, seed
            )
        out.append(
            Backtest(
                name,
                **base,
                N_opt_predicted=n_pred,
                L_opt_predicted=l_pred,
                N_opt_error=_error(n_pred, held.N_opt),
                L_opt_error=_error(l_pred, held.L_opt),
                reason=reason,
            )
        )
    return tuple(out)


def isoflop_prediction(
    part: IsoFlopFit | None, c: float, k: float, ci: float, min_budgets: int
) -> tuple[Estimate | None, Estimate | None, str | None]:
    """(N_opt, L_opt, None) at budget `c` from an IsoFLOP fit (the "isoflop" predictor of the module
    docstring), or (None, None, why) without a power law; `grokscale plan` forecasts with it too."""
    if part is None or part.law is None:
        reason = (
            part.frontier.reason
            if part is not None
            else f"no smaller budget; the power law needs {min_budgets}"
        )
        return None, None, f"no fit on the smaller budgets: {reason}"
    n_pred = part.law.n_opt(c, k, ci)
    trusted = np.array([b.trusted for b in part.budgets])
    x = np.log([b.flops for b in part.budgets])[trusted]
    y = np.log([b.L_opt.value for b in part.budgets if b.trusted])
    slope, icpt = ols_rows(x, y[None, :])
    with np.errstate(divide="ignore", invalid="ignore"):
        b_slope, b_icpt = ols_rows(x, np.log(part.boot_l_opt[:, trusted]))
    reps = np.exp(b_icpt + b_slope * np.log(c))
    l_pred = Estimate(float(np.exp(icpt[0] + slope[0] * np.log(c))), *interval(reps, ci))
    return n_pred, l_pred, None


def _loss_law_prediction(n, flops, loss, c, k, n_boot, ci, seed):
    try:
        fit = fit_scaling_law(n, flops / (k * n), loss, n_boot=n_boot, ci=ci, seed=seed)
    except ValueError as err:
        return None, None, f"no L(N, D) fit on the smaller budgets: {err}"
    frontier = loss_law_frontier(fit, [c], flops_per_token=k)
    if frontier.reason is not None:
        return None, None, frontier.reason
    return frontier.points[0].N_opt, frontier.points[0].L_opt, None


def _error(predicted: Estimate | None, observed: Estimate | None) -> float | None:
    if predicted is None or observed is None:
        return None
    return float(predicted.value / observed.value - 1)
