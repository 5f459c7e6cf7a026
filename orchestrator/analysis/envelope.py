"""Approach 1 of Hoffmann et al. (2022): the lower envelope of training curves.

Every run contributes its curve of loss against cumulative compute C (one point per
evaluation). Between evaluations a run's loss is interpolated linearly in ln C; a run has no
value before its first evaluation or after its last. At `n_grid` budgets log-spaced from the
latest first evaluation of any run (so every run is measured from there on) to the largest C
reached, the envelope picks the run with the lowest loss: its N is N_opt(C) and
D_opt = C / (k N_opt). N_opt = G (C/k)^a is fitted by least squares in log-log over the grid
(equal weight per unit of ln C); b = 1 - a.

Caveat (Hoffmann et al., Section 3.1; DESIGN.md): a point inside a run stands for a run of that
length only if the learning-rate schedule would have been the same; a cosine schedule cut short
is not, and it biases the envelope towards the runs that end near C. Feed runs whose schedule
length matches their end, ideally several lengths per size.

Insufficient data when the envelope passes through fewer than `min_sizes` (3) model sizes: a
power law through one or two sizes is a step, not a trend. Uncertainty: a bootstrap over runs
(resampled with replacement; a resample drops some runs and the envelope moves to the others).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from orchestrator.analysis.estimate import Estimate, interval, jsonable
from orchestrator.analysis.frontier import (
    FLOPS_PER_TOKEN,
    ComputeOptimalFrontier,
    FrontierPoint,
    compute_power_law,
    frontier_point,
    no_frontier,
)


@dataclass(frozen=True)
class EnvelopeFit:
    """The envelope on its grid (`flops`, `loss`, the chosen run's `n` and `run`) and the frontier:
    the power law and points at the requested budgets (the envelope's own N and loss there)."""

    flops: tuple[float, ...]
    loss: tuple[float, ...]
    n: tuple[float, ...]
    run: tuple
    frontier: ComputeOptimalFrontier

    def to_dict(self) -> dict:
        return {
            **self.frontier.to_dict(),
            "envelope": jsonable(
                {"flops": self.flops, "loss": self.loss, "n": self.n, "run": [str(r) for r in self.run]}
            ),
        }


def fit_envelope(
    run: Sequence,
    n: np.ndarray,
    flops: np.ndarray,
    loss: np.ndarray,
    *,
    budgets: Sequence[float] | None = None,
    flops_per_token: float = FLOPS_PER_TOKEN,
    n_grid: int = 200,
    n_boot: int = 200,
    ci: float = 0.95,
    seed: int = 0,
    min_sizes: int = 3,
) -> EnvelopeFit:
    """Approach 1 on training curves, one element per evaluation: the run's id, its N, the
    cumulative FLOPs at the evaluation and the loss there. `budgets` (default 5 log-spaced over
    the envelope's range) are where the frontier's points are reported."""
    if not flops_per_token > 0:
        raise ValueError(f"flops_per_token must be > 0, got {flops_per_token}")
    ids, n_run, curves = _curves(run, n, flops, loss)
    lo = max(c[0, 0] for c in curves)  # ln C of the latest first evaluation
    hi = max(c[-1, 0] for c in curves)
    if not hi > lo:
        raise ValueError(
            "the runs' curves do not overlap in compute: every run must start before the largest ends"
        )
    grid = np.linspace(lo, hi, n_grid)
    budgets = np.exp(np.linspace(lo, hi, 5)) if budgets is None else np.asarray(budgets, dtype=float).ravel()
    if not np.all(np.isfinite(budgets) & (budgets > 0)):
        raise ValueError("every compute budget must be finite and > 0")
    table = _losses(
        curves, np.concatenate([grid, np.log(budgets)])
    )  # (runs, grid + budgets), inf outside a run
    pick = np.argmin(table, axis=0)
    env_loss = table[pick, np.arange(table.shape[1])]
    env_n = n_run[pick]
    counts = np.random.default_rng(seed).multinomial(len(ids), np.full(len(ids), 1 / len(ids)), size=n_boot)
    boot_n, boot_loss = _boot_envelope(table, n_run, counts > 0)  # (n_boot, grid + budgets) each
    points = tuple(
        _point(
            float(c),
            flops_per_token,
            env_n[n_grid + j],
            env_loss[n_grid + j],
            boot_n[:, n_grid + j],
            boot_loss[:, n_grid + j],
            ci,
            lo,
            hi,
        )
        for j, c in enumerate(budgets)
    )
    result = dict(
        flops=tuple(np.exp(grid)),
        loss=tuple(env_loss[:n_grid]),
        n=tuple(env_n[:n_grid]),
        run=tuple(ids[pick[:n_grid]]),
    )
    sizes = np.unique(env_n[:n_grid]).size
    if sizes < min_sizes:
        reason = (
            f"insufficient data: the envelope passes through {sizes} model size(s); "
            f"a power law needs {min_sizes}"
        )
        return EnvelopeFit(
            **result, frontier=no_frontier("envelope", flops_per_token, n_grid, ci, reason, points)
        )
    boot_grid = boot_n[:, :n_grid].copy()
    boot_grid[_distinct(boot_grid) < min_sizes] = np.nan  # a resample whose envelope is a step does not fit
    law = compute_power_law(np.exp(grid), env_n[:n_grid], boot_grid, k=flops_per_token, ci=ci)
    b_est = Estimate(1 - law.a.value, *(None if v is None else 1 - v for v in (law.a.high, law.a.low)))
    frontier = ComputeOptimalFrontier(
        "envelope",
        law.a,
        b_est,
        law.G,
        points,
        flops_per_token,
        n_fit=n_grid,
        n_boot=len(law.boot_a),
        ci=ci,
        residual_rms=law.residual_rms,
    )
    return EnvelopeFit(**result, frontier=frontier)


def _curves(run, n, flops, loss) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Run ids, each run's N, and each run's curve as rows (ln C, loss) in increasing C."""
    run = np.asarray(run, dtype=object).ravel()
    n, flops, loss = (np.asarray(v, dtype=float).ravel() for v in (n, flops, loss))
    if not run.size == n.size == flops.size == loss.size:
        raise ValueError(
            f"run, N, flops and loss must have the same length, got {run.size}, {n.size}, "
            f"{flops.size}, {loss.size}"
        )
    keep = np.isfinite(flops) & (flops > 0) & np.isfinite(loss)  # an evaluation at step 0 has no compute yet
    if not np.all(np.isfinite(n) & (n > 0)):
        raise ValueError("N: every value must be finite and > 0")
    ids = np.array(list(dict.fromkeys(run[keep].tolist())), dtype=object)
    if ids.size < 2:
        raise ValueError(f"need the curves of at least 2 runs with compute > 0, got {ids.size}")
    n_run, curves = np.empty(ids.size), []
    for i, rid in enumerate(ids):
        rows = keep & (run == rid)
        sizes = np.unique(n[rows])
        if sizes.size != 1:
            raise ValueError(f"run {rid!r} has {sizes.size} different N; a run has one size")
        order = np.argsort(flops[rows], kind="stable")
        n_run[i] = sizes[0]
        curves.append(np.stack([np.log(flops[rows][order]), loss[rows][order]], axis=1))
    return ids, n_run, curves


def _losses(curves: list[np.ndarray], log_c: np.ndarray) -> np.ndarray:
    """Each run's loss at each ln C (linear interpolation; inf outside the run's evaluations)."""
    out = np.full((len(curves), log_c.size), np.inf)
    for i, c in enumerate(curves):
        inside = (log_c >= c[0, 0]) & (log_c <= c[-1, 0])
        out[i, inside] = np.interp(log_c[inside], c[:, 0], c[:, 1])
    return out


def _boot_envelope(
    table: np.ndarray, n_run: np.ndarray, present: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """N and loss of the envelope per resample (rows of `present`: which runs it drew) and
    column; NaN where no drawn run reaches that compute."""
    masked = np.where(present[:, :, None], table[None, :, :], np.inf)  # (n_boot, runs, columns)
    pick = np.argmin(masked, axis=1)
    loss = np.take_along_axis(masked, pick[:, None, :], axis=1)[:, 0]
    reached = np.isfinite(loss)
    return np.where(reached, n_run[pick], np.nan), np.where(reached, loss, np.nan)


def _distinct(rows: np.ndarray) -> np.ndarray:
    """Distinct finite values per row."""
    s = np.sort(rows, axis=1)
    return (np.isfinite(s[:, :1])).sum(axis=1) + ((np.diff(s, axis=1) > 0) & np.isfinite(s[:, 1:])).sum(
        axis=1
    )


def _point(
    c: float,
    k: float,
    n: float,
    loss: float,
    boot_n: np.ndarray,
    boot_loss: np.ndarray,
    ci: float,
    lo: float,
    hi: float,
) -> FrontierPoint:
    if not lo <= np.log(c) <= hi:
        return FrontierPoint(
            c, None, None, None, None, f"outside the envelope's range {np.exp(lo):.4g}-{np.exp(hi):.4g} FLOPs"
        )
    return frontier_point(
        c, k, Estimate(float(n), *interval(boot_n, ci)), Estimate(float(loss), *interval(boot_loss, ci))
    )
