"""The next rung of a scaling ladder: the compute-optimal N and D at a budget C beyond a finished
study, and the loss to expect there, each with its bootstrap interval (`grokscale plan`).

Nothing here is fitted anew; the plan reads the study's own laws at C (DESIGN.md,
"Compute-optimal scaling"):
  - "isoflop" (approach 2, `fit_isoflop`): N_opt = G (C/k)^a through the budgets' parabola
    minima, and the loss from a power law in C through their minimum losses, as the
    extrapolation backtest predicts the largest budget (`backtest.isoflop_prediction`); the
    intervals come from the fit's joint bootstrap replicates, so a and G move together;
  - "loss_law" (approach 3, `fit_scaling_law`): the closed-form optimum of L(N, D) = E + A/N^alpha
    + B/D^beta under C = k N D and the law's loss there (`loss_law_frontier`), intervals from the
    law's bootstrap resamples; only a law that `check_fit` accepts plans anything.
D_opt = C / (k N_opt) in both, with k the FLOPs per token per parameter of the study's runs.
A plan that cannot be made (no power law, a rejected L(N, D)) has no estimates and says why
(`reason`). `extrapolation` is C over the largest budget the law saw: the backtest says how far
such a step has been trusted.

`nearest_cell` picks the finished cell whose tuned hyperparameters the rung reuses: the nearest
budget in log C, then the nearest size in log N among that budget's cells (Porian et al. 2024
tune per size; the learning rate's optimum drifts with N and with the data).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from orchestrator.analysis.backtest import isoflop_prediction
from orchestrator.analysis.estimate import Estimate, jsonable
from orchestrator.analysis.fit_check import check_fit
from orchestrator.analysis.frontier import FLOPS_PER_TOKEN, frontier_point, loss_law_frontier
from orchestrator.analysis.isoflop import fit_isoflop
from orchestrator.analysis.scaling import fit_scaling_law

APPROACHES = ("isoflop", "loss_law")  # Hoffmann et al.'s approaches 2 and 3


@dataclass(frozen=True)
class ComputePlan:
    """The optimum at budget `flops` by one approach; N_opt, D_opt, L_opt and a are None, with
    `reason`, when the study's law cannot give it. `largest_flops`: the largest budget (an
    IsoFLOP grid's) or k N D of the largest run (an L(N, D) grid) the law was fitted to."""

    approach: str
    flops: float
    flops_per_token: float
    largest_flops: float
    N_opt: Estimate | None
    D_opt: Estimate | None
    L_opt: Estimate | None
    a: Estimate | None  # N_opt ∝ C^a, as fitted (compared with a saved report's)
    n_fit: int  # budgets (isoflop) or cells (loss_law) the law was fitted to
    reason: str | None = None

    @property
    def extrapolation(self) -> float:
        """C over the largest budget the law saw: 2 is one doubling beyond the data."""
        return self.flops / self.largest_flops

    def to_dict(self) -> dict:
        out: dict = {
            "approach": self.approach,
            "flops": self.flops,
            "flops_per_token": self.flops_per_token,
            "largest_flops": self.largest_flops,
            "extrapolation": self.extrapolation,
        }
        for name in ("N_opt", "D_opt", "L_opt", "a"):
            est = getattr(self, name)
            out.update(
                {
                    name: None if est is None else est.value,
                    f"{name}_low": None if est is None else est.low,
                    f"{name}_high": None if est is None else est.high,
                }
            )
        out.update(n_fit=self.n_fit, reason=self.reason)
        return jsonable(out)


def plan_isoflop(
    n: np.ndarray,
    flops: np.ndarray,
    loss: np.ndarray,
    target_flops: float,
    *,
    flops_per_token: float = FLOPS_PER_TOKEN,
    n_boot: int = 200,
    ci: float = 0.95,
    seed: int = 0,
    min_budgets: int = 3,
) -> ComputePlan:
    """Approach 2 at `target_flops`, from one row per cell: N, its budget C, its best loss. The fit
    is the report's own (`fit_isoflop` with its defaults), so the plan's a and G are the report's."""
    target = _target(target_flops)
    fit = fit_isoflop(
        n,
        flops,
        loss,
        flops_per_token=flops_per_token,
        n_boot=n_boot,
        ci=ci,
        seed=seed,
        min_budgets=min_budgets,
    )
    largest = max(b.flops for b in fit.budgets)
    base = dict(
        approach="isoflop",
        flops=target,
        flops_per_token=flops_per_token,
        largest_flops=largest,
        n_fit=fit.frontier.n_fit,
    )
    n_opt, l_opt, reason = isoflop_prediction(fit, target, flops_per_token, ci, min_budgets)
    if reason is not None:
        return ComputePlan(
            **base,
            N_opt=None,
            D_opt=None,
            L_opt=None,
            a=None,
            reason=f"approach 2 has no N_opt(C) power law: {fit.frontier.reason}",
        )
    point = frontier_point(target, flops_per_token, n_opt, l_opt)
    return ComputePlan(**base, N_opt=point.N_opt, D_opt=point.D_opt, L_opt=point.L_opt, a=fit.frontier.a)


def plan_loss_law(
    n: np.ndarray,
    d: np.ndarray,
    loss: np.ndarray,
    target_flops: float,
    *,
    flops_per_token: float = FLOPS_PER_TOKEN,
    convention: str = "total",
    n_boot: int = 200,
    ci: float = 0.95,
    seed: int = 0,
) -> ComputePlan:
    """Approach 3 at `target_flops`, from one row per cell: N, D (tokens), its best loss; the law
    is fitted and checked as the report does (`fit_scaling_law`, `check_fit`)."""
    target = _target(target_flops)
    n, d, loss = (np.asarray(v, dtype=float).ravel() for v in (n, d, loss))
    base = dict(
        approach="loss_law",
        flops=target,
        flops_per_token=flops_per_token,
        largest_flops=float(np.max(flops_per_token * n * d)),
        n_fit=int(n.size),
    )
    try:
        fit = fit_scaling_law(n, d, loss, convention=convention, n_boot=n_boot, ci=ci, seed=seed)
    except ValueError as err:
        return ComputePlan(
            **base, N_opt=None, D_opt=None, L_opt=None, a=None, reason=f"no L(N, D) fit: {err}"
        )
    check = check_fit(fit, n, d, loss)
    if not check.accepted:
        return ComputePlan(
            **base,
            N_opt=None,
            D_opt=None,
            L_opt=None,
            a=None,
            reason=f"the L(N, D) fit was rejected: {check.reason}",
        )
    frontier = loss_law_frontier(fit, [target], flops_per_token=flops_per_token)
    if frontier.reason is not None:
        return ComputePlan(**base, N_opt=None, D_opt=None, L_opt=None, a=None, reason=frontier.reason)
    (point,) = frontier.points
    return ComputePlan(**base, N_opt=point.N_opt, D_opt=point.D_opt, L_opt=point.L_opt, a=frontier.a)


def nearest_cell(n: Sequence[float], flops: Sequence[float], target_n: float, target_flops: float) -> int:
    """The index of the cell nearest the plan: nearest budget in log C (a tie goes to the larger
    budget, the one trained closer to C), then nearest N in log among that budget's cells."""
    log_n, log_c = np.log(np.asarray(n, dtype=float)), np.log(np.asarray(flops, dtype=float))
    if log_n.size == 0 or log_n.size != log_c.size:
        raise ValueError(
            f"n and flops must be non-empty and of one length, got {log_n.size} and {log_c.size}"
        )
    gap_c = np.round(np.abs(log_c - np.log(target_flops)), 9)  # budgets equal to print precision tie
    order = np.lexsort((np.abs(log_n - np.log(target_n)), -log_c, gap_c))
    return int(order[0])


def _target(flops: float) -> float:
    flops = float(flops)
    if not np.isfinite(flops) or flops <= 0:
        raise ValueError(f"the target budget must be finite and > 0, got {flops}")
    return flops
