"""Does a tuned hyperparameter's optimum hold across model size? The check behind muTransfer
(Yang et al. 2022, "Tensor Programs V"): under a parametrization that transfers, the optimal
learning rate (or init scale, ...) found on a small model is the optimum of the large one too.

Per N (one cell: every trial at that N): the optimum of the hyperparameter P, from a quadratic in
log P, loss = c0 + c1 x + c2 x^2 with x = log P, fitted by least squares to the trials at the
WINDOW (5) distinct values of P nearest the best one (the value with the lowest mean loss over
its trials; shifted inwards at the edges of the search). The optimum is the vertex,
exp(-c1 / (2 c2)). A cell is refused (`at_edge`, excluded from the drift) when its best value
is the smallest or largest tried, or the vertex lies at or beyond them: the search did not
bracket the optimum, so the optimum is only known to lie past the edge. A cell whose quadratic
opens downwards (no minimum) or with fewer than 3 distinct values is refused too.

Across N: the drift, log optimum = c + e log N (optimum ∝ N^e), by least squares over the cells
kept. Intervals: a bootstrap that resamples trials with replacement within each N and refits
everything (the best value, the window, the quadratic, the drift); a resample whose quadratic has
no minimum inside the search takes its best value as its optimum. Central `ci` (90%) percentiles.

Verdict (`transfers`): True when the exponent's interval lies within the band |e| <= TOLERANCE;
False when it excludes 0 and lies wholly outside the band; None (undecided) otherwise, and with
fewer than MIN_CELLS (3) cells kept. TOLERANCE = 0.1: over the two decades of N a ladder of
small models typically spans, e = 0.1 moves the optimum by 10^0.2 = 1.6x, within one step of
the usual sqrt(2)-2x grid of a learning-rate search and inside the flat basin of loss vs log lr;
a drift of e = -0.5 (the 1/width rule of standard parametrization, at fixed depth, where N grows
as width^2) moves it 10x.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from orchestrator.analysis.estimate import Estimate, interval, jsonable

CI = 0.9
TOLERANCE = 0.1
WINDOW = 5
MIN_CELLS = 3


@dataclass(frozen=True)
class CellOptimum:
    """The optimum of the hyperparameter at one N, or None with the `reason` it was refused."""

    n: float
    optimum: Estimate | None
    at_edge: bool
    reason: str | None
    n_trials: int
    param_min: float
    param_max: float

    @property
    def usable(self) -> bool:
        return self.reason is None

    def to_dict(self) -> dict:
        est = self.optimum
        return jsonable(
            {
                "n": self.n,
                "optimum": None if est is None else est.value,
                "low": None if est is None else est.low,
                "high": None if est is None else est.high,
                "at_edge": self.at_edge,
                "reason": self.reason,
                "n_trials": self.n_trials,
                "param_min": self.param_min,
                "param_max": self.param_max,
            }
        )


@dataclass(frozen=True)
class TransferCheck:
    """The optimum per N, its drift optimum ∝ N^exponent across the usable cells, and the verdict."""

    param: str
    optima: tuple[CellOptimum, ...]
    exponent: Estimate | None
    transfers: bool | None
    reason: str
    tolerance: float
    n_boot: int
    ci: float

    def to_dict(self) -> dict:
        e = self.exponent
        return jsonable(
            {
                "param": self.param,
                "optima": [o.to_dict() for o in self.optima],
                "exponent": None if e is None else e.value,
                "exponent_low": None if e is None else e.low,
                "exponent_high": None if e is None else e.high,
                "transfers": self.transfers,
                "reason": self.reason,
                "tolerance": self.tolerance,
                "n_usable": sum(o.usable for o in self.optima),
                "n_boot": self.n_boot,
                "ci": self.ci,
            }
        )


def transfer_check(
    n: np.ndarray,
    param: np.ndarray,
    loss: np.ndarray,
    *,
    param_name: str = "param",
    tolerance: float = TOLERANCE,
    window: int = WINDOW,
    n_boot: int = 200,
    ci: float = CI,
    seed: int = 0,
) -> TransferCheck:
    """From trials (N, hyperparameter value > 0, loss; one row each): the optimum per N and
    whether it holds across N."""
    n, param, loss = (np.asarray(v, dtype=float).ravel() for v in (n, param, loss))
    if not n.size == param.size == loss.size:
        raise ValueError(
            f"N, {param_name} and loss must have the same length, got {n.size}, {param.size}, {loss.size}"
        )
    if n.size == 0:
        raise ValueError("no trials")
    for name, a in (("N", n), (param_name, param)):
        if not np.all(np.isfinite(a)) or np.any(a <= 0):
            raise ValueError(f"{name}: every value must be finite and > 0 (the fits are in log scale)")
    if not np.all(np.isfinite(loss)):
        raise ValueError("loss: every value must be finite")
    if tolerance <= 0:
        raise ValueError(f"tolerance must be > 0, got {tolerance}")
    if window < 3:
        raise ValueError(f"window must be >= 3 (a quadratic has 3 coefficients), got {window}")
    rng = np.random.default_rng(seed)
    cells, boots = [], []
    for value in np.unique(n):
        idx = np.flatnonzero(n == value)
        weights = np.ones((1 + n_boot, idx.size))
        if n_boot > 0:
            weights[1:] = np.stack(
                [np.bincount(rng.integers(0, idx.size, idx.size), minlength=idx.size) for _ in range(n_boot)]
            )
        cell, boot = _cell(float(value), np.log(param[idx]), loss[idx], weights, window, ci, param_name)
        cells.append(cell)
        boots.append(boot)
    usable = [i for i, c in enumerate(cells) if c.usable]
    exponent = None
    if len(usable) >= 2:
        log_n = np.log([cells[i].n for i in usable])
        x_opt = np.stack([boots[i] for i in usable], axis=1)  # (1 + n_boot, cells) log optima
        slopes = _slopes(log_n, x_opt)
        exponent = Estimate(float(slopes[0]), *(interval(slopes[1:], ci) if n_boot > 0 else (None, None)))
    transfers, reason = _verdict(exponent, len(usable), tolerance, param_name, cells)
    return TransferCheck(
        param=param_name,
        optima=tuple(cells),
        exponent=exponent,
        transfers=transfers,
        reason=reason,
        tolerance=tolerance,
        n_boot=n_boot,
        ci=ci,
    )


def _cell(
    value: float, x: np.ndarray, loss: np.ndarray, weights: np.ndarray, window: int, ci: float, name: str
) -> tuple[CellOptimum, np.ndarray]:
    """One N's optimum and its resamples' log optima (row 0: the data itself), for weights
    (1 + n_boot, trials)."""
    values, inverse = np.unique(x, return_inverse=True)
    m = values.size
    base = dict(
        n=value, n_trials=int(x.size), param_min=float(np.exp(values[0])), param_max=float(np.exp(values[-1]))
    )
    if m < 3:
        reason = f"{m} distinct value(s) of {name}; a quadratic needs 3"
        return (
            CellOptimum(optimum=None, at_edge=False, reason=reason, **base),
            np.full(weights.shape[0], np.nan),
        )
    onehot = np.zeros((x.size, m))
    onehot[np.arange(x.size), inverse] = 1.0
    count = weights @ onehot  # (R, m) trials of each value in each resample
    present = count > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(present, (weights * loss) @ onehot / count, np.inf)
    best = np.argmin(mean, axis=1)  # (R,)
    rank = np.cumsum(present, axis=1) - 1  # rank of each present value among the present ones
    n_present = present.sum(axis=1)
    best_rank = rank[np.arange(len(best)), best]
    lo = np.clip(best_rank - window // 2, 0, np.maximum(n_present - window, 0))
    in_window = present & (rank >= lo[:, None]) & (rank < (lo + window)[:, None])
    w = weights * in_window[:, inverse]  # (R, trials)
    center = values.mean()
    u = x - center
    moments = np.stack([w @ u**p for p in range(5)], axis=1)  # (R, 5): sum w u^p
    rhs = np.stack([w @ (u**p * loss) for p in range(3)], axis=1)  # (R, 3)
    gram = moments[:, [[0, 1, 2], [1, 2, 3], [2, 3, 4]]]  # (R, 3, 3)
    enough = in_window.sum(axis=1) >= 3
    coef = np.full((len(best), 3), np.nan)
    det = np.linalg.det(gram[enough])
    solvable = np.flatnonzero(enough)[np.abs(det) > 1e-12 * np.maximum(np.abs(moments[enough, 0]) ** 3, 1)]
    coef[solvable] = np.linalg.solve(gram[solvable], rhs[solvable][..., None])[..., 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        vertex = np.where(coef[:, 2] > 0, center - coef[:, 1] / (2 * coef[:, 2]), np.nan)
    # Resamples: a quadratic without a minimum inside the search gives its best value instead.
    inside = np.isfinite(vertex) & (vertex > values[0]) & (vertex < values[-1])
    boot = np.where(inside, vertex, values[best])
    reason, at_edge = None, False
    if best[0] == 0 or best[0] == m - 1:
        at_edge = True
        side = "smallest" if best[0] == 0 else "largest"
        reason = f"at the edge: the best {name} ({np.exp(values[best[0]]):.3g}) is the {side} tried"
    elif not np.isfinite(vertex[0]):
        reason = f"no minimum: the losses near the best {name} do not curve upwards"
    elif not inside[0]:
        at_edge = True
        low_side = vertex[0] <= values[0]
        side, edge = ("below the smallest", values[0]) if low_side else ("above the largest", values[-1])
        reason = (
            f"at the edge: the vertex {np.exp(vertex[0]):.3g} lies at or {side} {name} tried "
            f"({np.exp(edge):.3g})"
        )
    if reason is not None:
        return CellOptimum(optimum=None, at_edge=at_edge, reason=reason, **base), boot
    low, high = interval(np.exp(boot[1:]), ci) if len(boot) > 1 else (None, None)
    return CellOptimum(
        optimum=Estimate(float(np.exp(vertex[0])), low, high), at_edge=False, reason=None, **base
    ), np.concatenate([vertex[:1], boot[1:]])


def _slopes(log_n: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The least-squares slope of each row of y (R, cells) on log_n."""
    xc = log_n - log_n.mean()
    return (y - y.mean(axis=1, keepdims=True)) @ xc / (xc @ xc)


def _verdict(
    exponent: Estimate | None, n_usable: int, tolerance: float, name: str, cells: list[CellOptimum]
) -> tuple[bool | None, str]:
    refused = [c for c in cells if not c.usable]
    note = "".join(f"; N = {c.n:.3g} excluded: {c.reason}" for c in refused)
    if exponent is None:
        return None, f"undecided: {n_usable} usable N (needs {MIN_CELLS}){note}"
    e, lo, hi = exponent.value, exponent.low, exponent.high
    law = f"optimum {name} ∝ N^{e:.2f}" + ("" if lo is None else f" [{lo:.2f}, {hi:.2f}]")
    if n_usable < MIN_CELLS:
        return None, f"{law}: undecided, {n_usable} usable N (needs {MIN_CELLS}){note}"
    if lo is None:
        return None, f"{law}: undecided, no interval{note}"
    if -tolerance <= lo and hi <= tolerance:
        return True, f"{law}: transfers (the interval lies within |e| <= {tolerance:g}){note}"
    if hi < -tolerance or lo > tolerance:
        return False, f"{law}: does not transfer (the interval lies outside |e| <= {tolerance:g}){note}"
    return None, f"{law}: undecided (the interval overlaps the band |e| <= {tolerance:g}){note}"
