"""Approach 2 of Hoffmann et al. (2022): IsoFLOP profiles.

Runs are grouped by compute budget C (budgets equal to within `budget_rtol`). At each budget
the final loss is fitted by a parabola in x = ln N, loss = c0 + c1 x + c2 x^2 (their Figure 3);
its minimum x* = -c1 / (2 c2) gives N_opt(C) = e^x*, D_opt = C / (k N_opt) and L_opt, the
parabola at x*. Across budgets, N_opt = G (C/k)^a is fitted by least squares in log-log
(`frontier.compute_power_law`); b = 1 - a since D_opt = C / (k N_opt).

A budget is not trusted (its point carries a `reason`, and it is left out of the power law) when
  - it has fewer than `min_sizes` (3) distinct model sizes: a parabola needs three;
  - the parabola opens downward (c2 <= 0): there is no minimum;
  - the minimum lies outside the sampled sizes: it is an extrapolation, not bracketed by runs.
Fewer than `min_budgets` (3) trusted budgets: no power law ("insufficient data").

Uncertainty: per budget, a residual bootstrap of the parabola with Davison & Hinkley's modified
residuals ("residuals"); with exactly three runs the parabola interpolates and nothing can be
resampled ("none", a zero-width interval). Each replicate draws every budget at once, and its
power law gives the interval of a and G. Resampling runs within each size ("cases", as
`emergence.py` does when there are seeds) was tried and dropped: measured over 60 planted
data sets of 4 budgets x 5 sizes (noise sd 0.003, curvature 0.1), the nominal 95% interval of
N_opt covered the truth 78% of the time with 3 seeds per size against 89% for residuals (the
within-size resample loses a third of the variance with 3 seeds); with one run per size (two
residual degrees of freedom) residuals cover 79%: read such intervals as too narrow.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from orchestrator.analysis.estimate import Estimate, interval, jsonable
from orchestrator.analysis.frontier import (
    FLOPS_PER_TOKEN,
    ComputeOptimalFrontier,
    PowerLawInCompute,
    compute_power_law,
    frontier_point,
    no_frontier,
)


@dataclass(frozen=True)
class IsoFlopBudget:
    """One budget's runs (n, loss), its parabola `coef` = (c0, c1, c2) in ln N (None with fewer
    than three sizes), and its minimum; `reason` says why it is not trusted (None when it is)."""

    flops: float
    n: tuple[float, ...]
    loss: tuple[float, ...]
    coef: tuple[float, float, float] | None
    N_opt: Estimate | None
    L_opt: Estimate | None
    bracketed: bool
    resample: str  # "residuals", or "none" when the parabola interpolates its three runs
    reason: str | None

    @property
    def trusted(self) -> bool:
        return self.reason is None

    def to_dict(self) -> dict:
        """The budget's summary (its runs are in the frontier's input, not repeated here)."""
        out = {
            "flops": self.flops,
            "n_runs": len(self.n),
            "n_sizes": len(set(self.n)),
            "coef": self.coef,
            "n_min": min(self.n, default=None),
            "n_max": max(self.n, default=None),
        }
        for name in ("N_opt", "L_opt"):
            est = getattr(self, name)
            out.update(
                {
                    name: None if est is None else est.value,
                    f"{name}_low": None if est is None else est.low,
                    f"{name}_high": None if est is None else est.high,
                }
            )
        out.update(bracketed=self.bracketed, resample=self.resample, trusted=self.trusted, reason=self.reason)
        return jsonable(out)


@dataclass(frozen=True)
class IsoFlopFit:
    """Every budget's profile and the frontier: one point per budget (its own minimum, trusted or
    not) and the power law over the trusted ones."""

    budgets: tuple[IsoFlopBudget, ...]
    frontier: ComputeOptimalFrontier
    # The fitted N_opt(C) with its resamples (None without a law), and each bootstrap replicate's
    # minimum loss per budget (resamples x budgets); both for the extrapolation backtest.
    law: PowerLawInCompute | None = field(default=None, repr=False, compare=False)
    boot_l_opt: np.ndarray | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        """The frontier's keys (a, b, G with _low/_high, frontier, ...) and `budgets`."""
        return {**self.frontier.to_dict(), "budgets": [b.to_dict() for b in self.budgets]}


def fit_isoflop(
    n: np.ndarray,
    flops: np.ndarray,
    loss: np.ndarray,
    *,
    flops_per_token: float = FLOPS_PER_TOKEN,
    n_boot: int = 200,
    ci: float = 0.95,
    seed: int = 0,
    min_sizes: int = 3,
    min_budgets: int = 3,
    budget_rtol: float = 1e-3,
) -> IsoFlopFit:
    """Approach 2 on runs with N parameters, compute budget `flops` (C = k N D, k =
    `flops_per_token`) and final loss `loss`, one element per run."""
    n, flops, loss = _validate(n, flops, loss)
    if not flops_per_token > 0:
        raise ValueError(f"flops_per_token must be > 0, got {flops_per_token}")
    rng = np.random.default_rng(seed)
    groups = group_budgets(flops, budget_rtol)
    budgets, boot_n, boot_l = [], [], []
    for c, idx in groups:
        budget, reps_n, reps_l = _fit_budget(c, n[idx], loss[idx], n_boot, ci, rng, min_sizes)
        budgets.append(budget)
        boot_n.append(reps_n)
        boot_l.append(reps_l)
    boot_n, boot_l = np.stack(boot_n, axis=1), np.stack(boot_l, axis=1)  # (n_boot, budgets)
    points = tuple(frontier_point(b.flops, flops_per_token, b.N_opt, b.L_opt, b.reason) for b in budgets)
    trusted = np.array([b.trusted for b in budgets])
    if trusted.sum() < min_budgets:
        reason = (
            f"insufficient data: {int(trusted.sum())} budget(s) with a bracketed minimum "
            f"(of {len(budgets)}); the power law needs {min_budgets}"
        )
        frontier = no_frontier("isoflop", flops_per_token, int(trusted.sum()), ci, reason, points)
        return IsoFlopFit(tuple(budgets), frontier, None, boot_l)
    c = np.array([b.flops for b in budgets])[trusted]
    n_opt = np.array([b.N_opt.value for b in budgets])[trusted]
    law = compute_power_law(c, n_opt, boot_n[:, trusted], k=flops_per_token, ci=ci)
    b_est = Estimate(1 - law.a.value, *(None if v is None else 1 - v for v in (law.a.high, law.a.low)))
    frontier = ComputeOptimalFrontier(
        "isoflop",
        law.a,
        b_est,
        law.G,
        points,
        flops_per_token,
        n_fit=int(trusted.sum()),
        n_boot=len(law.boot_a),
        ci=ci,
        residual_rms=law.residual_rms,
    )
    return IsoFlopFit(tuple(budgets), frontier, law, boot_l)


def group_budgets(flops: np.ndarray, rtol: float) -> list[tuple[float, np.ndarray]]:
    """(budget, run indices) in increasing budget; runs within a factor 1 + rtol of the previous
    run in sorted order share a budget, valued at the group's median (a CSV rounds floats)."""
    order = np.argsort(flops, kind="stable")
    cuts = np.flatnonzero(np.diff(np.log(flops[order])) > np.log1p(rtol)) + 1
    return [(float(np.median(flops[idx])), idx) for idx in np.split(order, cuts)]


def _fit_budget(
    c: float,
    n: np.ndarray,
    loss: np.ndarray,
    n_boot: int,
    ci: float,
    rng: np.random.Generator,
    min_sizes: int,
) -> tuple[IsoFlopBudget, np.ndarray, np.ndarray]:
    """One budget's parabola, minimum and bootstrap replicates of (N_opt, L_opt)."""
    order = np.argsort(n, kind="stable")
    n, loss = n[order], loss[order]
    sizes = np.unique(n)
    nan = np.full(n_boot, np.nan)
    base = dict(flops=c, n=tuple(map(float, n)), loss=tuple(map(float, loss)))
    if sizes.size < max(min_sizes, 3):
        reason = f"{sizes.size} model size(s) at this budget; a parabola needs {max(min_sizes, 3)}"
        return (
            IsoFlopBudget(
                **base, coef=None, N_opt=None, L_opt=None, bracketed=False, resample="none", reason=reason
            ),
            nan,
            nan,
        )
    x = np.log(n)
    x0 = float(
        x.mean()
    )  # centred: ln N of neighbouring sizes differ in the third digit, x^2 would be ill-conditioned
    X = np.stack([np.ones_like(x), x - x0, (x - x0) ** 2], axis=1)  # (m, 3)
    coef = np.linalg.lstsq(X, loss, rcond=None)[0]
    boot_coef, resample = _replicate_coefs(X, loss, coef, n_boot, rng)  # (n_boot, 3)
    t_opt, l_opt = _vertex(coef[None, :])
    boot_t, boot_l = _vertex(boot_coef)
    x_opt, boot_x = t_opt + x0, boot_t + x0
    coef = (
        coef[0] - coef[1] * x0 + coef[2] * x0**2,
        coef[1] - 2 * coef[2] * x0,
        coef[2],
    )  # in ln N, uncentred
    lo, hi = float(x.min()), float(x.max())
    if not coef[2] > 0:
        reason, bracketed = (
            "the loss is not convex in log N at this budget: the parabola has no minimum",
            False,
        )
        n_est = l_est = None
    else:
        bracketed = bool(lo <= x_opt[0] <= hi)
        reason = (
            None
            if bracketed
            else (
                f"minimum not bracketed: N_opt = {np.exp(x_opt[0]):.4g} lies outside the "
                f"sampled sizes {np.exp(lo):.4g}-{np.exp(hi):.4g}"
            )
        )
        n_est = Estimate(float(np.exp(x_opt[0])), *interval(np.exp(boot_x), ci))
        l_est = Estimate(float(l_opt[0]), *interval(boot_l, ci))
    budget = IsoFlopBudget(
        **base,
        coef=tuple(map(float, coef)),
        N_opt=n_est,
        L_opt=l_est,
        bracketed=bracketed,
        resample=resample,
        reason=reason,
    )
    return budget, np.exp(boot_x), boot_l


def _replicate_coefs(
    X: np.ndarray, loss: np.ndarray, coef: np.ndarray, n_boot: int, rng: np.random.Generator
) -> tuple[np.ndarray, str]:
    """Parabolas (n_boot, 3) refitted to the fit plus resampled residuals (see the module doc)."""
    m = loss.size
    if m <= X.shape[1]:  # the parabola interpolates: nothing to resample
        return np.broadcast_to(coef, (n_boot, coef.size)).copy(), "none"
    fitted = X @ coef
    pinv = np.linalg.pinv(X)  # (3, m)
    # Davison & Hinkley (1997, eq. 6.9) modified residuals: r / sqrt(1 - h), centred, so the
    # resampled noise has the variance of the errors, not the smaller one of the residuals.
    leverage = np.einsum("ij,ji->i", X, pinv)
    resid = (loss - fitted) / np.sqrt(np.clip(1 - leverage, 1e-12, None))
    resid -= resid.mean()
    ys = fitted[None, :] + resid[rng.integers(0, m, (n_boot, m))]  # (n_boot, m)
    return ys @ pinv.T, "residuals"


def _vertex(coef: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The minimum (x*, loss at x*) of each row's parabola; NaN where it opens downward."""
    c0, c1, c2 = coef.T
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.where(c2 > 0, -c1 / (2 * c2), np.nan)
    return x, c0 + c1 * x + c2 * x * x


def _validate(n, flops, loss) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    arrays = {
        name: np.asarray(v, dtype=float).ravel() for name, v in (("N", n), ("flops", flops), ("loss", loss))
    }
    if len({a.size for a in arrays.values()}) != 1:
        raise ValueError(
            f"N, flops and loss must have the same length, got { {k: a.size for k, a in arrays.items()} }"
        )
    for name, a in arrays.items():
        if not np.all(np.isfinite(a)) or np.any(a <= 0):
            raise ValueError(f"{name}: every value must be finite and > 0")
    if arrays["loss"].size == 0:
        raise ValueError("no runs")
    return arrays["N"], arrays["flops"], arrays["loss"]
