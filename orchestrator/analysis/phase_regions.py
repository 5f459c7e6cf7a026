"""Phase regions over a plane of two hyperparameters, as Liu et al. (2022, "Towards Understanding
Grokking", Fig. 6 and 7) draw their phase diagrams: the plane filled by the phase of the runs
nearest each point, instead of one dot per run.

Each axis is measured in the space it was searched in (log10 for a log-uniform search such as
weight decay from 0.3 to 3, linear otherwise) and scaled to [0, 1] over the runs' range, so
that a decade of weight decay and the whole range of training fractions weigh alike. A grid
point takes the majority phase of its k = 3 nearest runs (ties: the nearest run's phase); the
grid spans the runs' bounding box and no further, so nothing is extrapolated.

When the runs cannot support regions the result says why and holds none (the figure then
stays points):
  - fewer than MIN_POINTS = 16 runs: a 4 x 4 design is the smallest on which 3 neighbours are
    each other's neighbours across a boundary and not only along it;
  - fewer than MIN_VALUES = 3 distinct values on an axis: two values say nothing about where
    between them a boundary lies (a 2-row "region" would only restate the points);
  - leave-one-out accuracy under MIN_LOO_ACCURACY = 0.6: if a run's phase is predicted by its
    neighbours less often than that, the phases are not arranged in regions on this plane
    (seed noise, or a third variable such as N decides them) and filling the plane would draw
    structure the data do not have.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from orchestrator.analysis.estimate import jsonable

MIN_POINTS = 16
MIN_VALUES = 3
MIN_LOO_ACCURACY = 0.6
K_NEIGHBOURS = 3
GRID = 120  # grid points per axis: smooth boundaries at the figure's resolution


@dataclass(frozen=True)
class PhaseRegions:
    """The phase at each grid cell of the plane (`labels[i, j]`: index into `phases` at
    x-cell j and y-cell i, as pcolormesh takes it), or None with the `reason` when the runs are
    too few or too scattered. Edges are in the data's own units (not log10)."""

    phases: tuple[str, ...]
    x_edges: np.ndarray | None
    y_edges: np.ndarray | None
    labels: np.ndarray | None
    log_x: bool
    log_y: bool
    n_points: int
    loo_accuracy: float | None  # the share of runs whose phase their k nearest other runs give
    reason: str | None = None

    def classify(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The region's phase at points (x, y) in data units; None outside the grid or with no regions."""
        x, y = np.atleast_1d(np.asarray(x, dtype=float)), np.atleast_1d(np.asarray(y, dtype=float))
        out = np.full(x.shape, None, dtype=object)
        if self.labels is None:
            return out
        i, j = _cell(self.y_edges, y), _cell(self.x_edges, x)
        inside = (i >= 0) & (j >= 0)
        for k in np.flatnonzero(inside):
            out[k] = self.phases[self.labels[i[k], j[k]]]
        return out

    def to_dict(self) -> dict:
        """Summary only (the grid itself is for drawing)."""
        return jsonable(
            {
                "phases": self.phases,
                "log_x": self.log_x,
                "log_y": self.log_y,
                "n_points": self.n_points,
                "loo_accuracy": self.loo_accuracy,
                "drawn": self.labels is not None,
                "reason": self.reason,
            }
        )


def phase_regions(
    x: np.ndarray,
    y: np.ndarray,
    phase: np.ndarray,
    *,
    log_x: bool,
    log_y: bool,
    min_points: int = MIN_POINTS,
    min_values: int = MIN_VALUES,
    min_loo_accuracy: float = MIN_LOO_ACCURACY,
    k: int = K_NEIGHBOURS,
    grid: int = GRID,
) -> PhaseRegions:
    """Phase regions from runs at (x, y) with phase labels (any hashable; None/NaN rows and
    non-finite or, on a log axis, non-positive coordinates are dropped)."""
    x, y = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    phase = np.asarray(phase, dtype=object).ravel()
    if not x.size == y.size == phase.size:
        raise ValueError(f"x, y and phase must have the same length, got {x.size}, {y.size}, {phase.size}")
    labelled = np.array(
        [p is not None and not (isinstance(p, float) and np.isnan(p)) for p in phase], dtype=bool
    )
    ok = labelled & np.isfinite(x) & np.isfinite(y) & ((x > 0) | (not log_x)) & ((y > 0) | (not log_y))
    x, y, phase = x[ok], y[ok], phase[ok]
    phases = tuple(dict.fromkeys(sorted(map(str, phase))))
    base = dict(phases=phases, log_x=log_x, log_y=log_y, n_points=int(x.size))
    refuse = dict(x_edges=None, y_edges=None, labels=None)
    if x.size < min_points:
        return PhaseRegions(
            **base,
            **refuse,
            loo_accuracy=None,
            reason=f"{x.size} runs; regions need at least {min_points} (e.g. a 4 x 4 design)",
        )
    for name, v in (("x", x), ("y", y)):
        if np.unique(v).size < min_values:
            return PhaseRegions(
                **base,
                **refuse,
                loo_accuracy=None,
                reason=f"{np.unique(v).size} distinct values of {name}; regions need at least "
                f"{min_values} per axis",
            )
    u, v = _unit(x, log_x), _unit(y, log_y)
    codes = np.array([phases.index(str(p)) for p in phase])
    points = np.column_stack([u[0], v[0]])
    loo = _loo_accuracy(points, codes, k, len(phases))
    if loo < min_loo_accuracy:
        return PhaseRegions(
            **base,
            **refuse,
            loo_accuracy=loo,
            reason=f"a run's phase is given by its {k} nearest runs only {loo:.0%} of the time "
            f"(< {min_loo_accuracy:.0%}): the phases do not form regions on this plane",
        )
    ue, ve = np.linspace(0, 1, grid + 1), np.linspace(0, 1, grid + 1)
    uc, vc = (ue[1:] + ue[:-1]) / 2, (ve[1:] + ve[:-1]) / 2
    gu, gv = np.meshgrid(uc, vc)  # (grid, grid): rows y, columns x
    labels = _knn(points, codes, np.column_stack([gu.ravel(), gv.ravel()]), k, len(phases)).reshape(gu.shape)
    return PhaseRegions(
        **base,
        x_edges=_back(ue, u[1], log_x),
        y_edges=_back(ve, v[1], log_y),
        labels=labels,
        loo_accuracy=loo,
    )


def _cell(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The cell index of each value (the last edge belongs to the last cell; -1: outside), with
    a relative tolerance for edges that went through 10 ** log10."""
    tol = 1e-9 * max(abs(edges[0]), abs(edges[-1]))
    clipped = np.where(
        (values >= edges[0] - tol) & (values <= edges[-1] + tol), np.clip(values, edges[0], edges[-1]), np.nan
    )
    idx = np.searchsorted(edges, clipped, side="right") - 1
    return np.where(np.isnan(clipped), -1, np.minimum(idx, edges.size - 2))


def _unit(values: np.ndarray, log: bool) -> tuple[np.ndarray, tuple[float, float]]:
    """Values scaled to [0, 1] in their search space, and the (low, high) of that space."""
    t = np.log10(values) if log else values
    lo, hi = float(t.min()), float(t.max())
    return (t - lo) / (hi - lo), (lo, hi)


def _back(edges: np.ndarray, span: tuple[float, float], log: bool) -> np.ndarray:
    t = span[0] + edges * (span[1] - span[0])
    return 10**t if log else t


def _knn(
    points: np.ndarray,
    codes: np.ndarray,
    queries: np.ndarray,
    k: int,
    n_classes: int,
    exclude_self: bool = False,
) -> np.ndarray:
    """Majority code of the k nearest points of each query; a tie goes to the nearest point's code.
    (exclude_self: the queries are the points, and each leaves itself out.)"""
    from scipy.spatial import cKDTree

    kk = min(k, points.shape[0] - int(exclude_self))
    _, nearest = cKDTree(points).query(queries, k=kk + int(exclude_self))
    nearest = nearest.reshape(queries.shape[0], -1)  # (Q, k), nearest first
    if exclude_self:  # drop each point itself (a duplicate at distance 0 may come first)
        own = nearest == np.arange(queries.shape[0])[:, None]
        own[~own.any(axis=1), -1] = True
        nearest = nearest[~own].reshape(queries.shape[0], kk)
    votes = np.zeros((queries.shape[0], n_classes))
    np.add.at(votes, (np.repeat(np.arange(queries.shape[0]), kk), codes[nearest].ravel()), 1.0)
    best = votes.max(axis=1, keepdims=True)
    first = codes[nearest[:, 0]]
    tied = (votes == best).sum(axis=1) > 1
    return np.where(tied & (votes[np.arange(len(first)), first] == best[:, 0]), first, votes.argmax(axis=1))


def _loo_accuracy(points: np.ndarray, codes: np.ndarray, k: int, n_classes: int) -> float:
    predicted = _knn(points, codes, points, k, n_classes, exclude_self=True)
    return float(np.mean(predicted == codes))
