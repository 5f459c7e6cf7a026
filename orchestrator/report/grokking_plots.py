"""Figures of grokking: accuracy curves per cell and phase diagrams, drawn from the runs'
curves and `orchestrator.analysis.grokking` results only. As in `plots.py`: matplotlib's object
API on an Agg canvas; each returns the path written, or None when there is nothing to draw.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.colors import ListedColormap
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from orchestrator.analysis.grokking import PHASES, TRAIN_THRESHOLD, VAL_THRESHOLD
from orchestrator.analysis.phase_regions import PhaseRegions
from orchestrator.report.plots import label, need, new_figure, readable_log_ticks, save

PHASE_COLORS = {
    "comprehension": "#2ca02c",
    "grokking": "#1f77b4",
    "memorization": "#ff7f0e",
    "confusion": "#7f7f7f",
}


def plot_grokking_curves(
    curves: pd.DataFrame,
    path: str | Path,
    *,
    runs: pd.DataFrame | None = None,
    cell_col: str = "cell",
    run_col: str = "run_id",
    step_col: str = "step",
    train_col: str = "train_acc",
    val_col: str = "val_acc",
    max_cells: int = 49,
    train_threshold: float = TRAIN_THRESHOLD,
    val_threshold: float = VAL_THRESHOLD,
    title: str | None = None,
) -> Path | None:
    """Training and validation accuracy over steps (log scale) in one small panel per cell:
    every run of the cell, the one that reached the highest validation accuracy drawn bold.
    The cell of a run comes from curves[cell_col] or, if absent, from runs[[run_col, cell_col]]."""
    need(curves, run_col, step_col, train_col, val_col)
    data = curves
    if cell_col not in data.columns:
        if runs is None:
            raise ValueError(
                f"the curves table has no column {cell_col!r}; pass runs with {run_col!r} and {cell_col!r}"
            )
        need(runs, run_col, cell_col)
        data = data.merge(runs[[run_col, cell_col]].drop_duplicates(run_col), on=run_col, how="inner")
    data = data[pd.to_numeric(data[step_col], errors="coerce") > 0]  # a log axis has no step 0
    if data.empty:
        return None
    cells = list(dict.fromkeys(sorted(data[cell_col].unique(), key=_cell_key)))[:max_cells]
    cols = math.ceil(math.sqrt(len(cells)))
    rows = math.ceil(len(cells) / cols)
    fig = new_figure(3.2 * cols, 2.5 * rows + 0.8)
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True, sharey=True)
    for k, cell in enumerate(cells):
        ax = axes[k // cols][k % cols]
        part = data[data[cell_col] == cell]
        best = part.groupby(run_col)[val_col].max().idxmax()
        for run, curve in part.groupby(run_col):
            curve = curve.sort_values(step_col)
            style = {"lw": 1.6, "alpha": 1.0} if run == best else {"lw": 0.7, "alpha": 0.35}
            ax.plot(curve[step_col], curve[train_col], "--", color="C0", **style)
            ax.plot(curve[step_col], curve[val_col], "-", color="C3", **style)
        ax.axhline(train_threshold, color="C0", lw=0.5, ls=":")
        ax.axhline(val_threshold, color="C3", lw=0.5, ls=":")
        ax.set_xscale("log")
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(str(cell), fontsize=9)
        ax.grid(alpha=0.25)
        if k % cols == 0:
            ax.set_ylabel("accuracy (fraction)", fontsize=8)
        if k // cols == rows - 1 or k + cols >= len(cells):
            ax.set_xlabel("step (optimizer updates), log scale", fontsize=8)
            ax.tick_params(labelbottom=True)
    for k in range(len(cells), rows * cols):
        axes[k // cols][k % cols].set_visible(False)
    fig.legend(
        handles=[
            Line2D([], [], color="C0", ls="--", label="training accuracy"),
            Line2D([], [], color="C3", ls="-", label="validation accuracy"),
            Line2D([], [], color="gray", ls=":", label=f"thresholds {train_threshold} / {val_threshold}"),
            Line2D([], [], color="gray", lw=1.6, label="bold: run with the best validation accuracy"),
        ],
        loc="outside lower center",
        ncol=4,
        fontsize=8,
    )
    fig.suptitle(title or "Grokking: accuracy over training, one panel per (N, D) cell")
    return save(fig, path)


def plot_phase_diagram(
    table: pd.DataFrame,
    path: str | Path,
    *,
    x_col: str = "param.train.weight_decay",
    y_col: str = "d_value",
    phase_col: str = "phase",
    facet_col: str | None = "n_params",
    log_x: bool | None = None,
    log_y: bool | None = None,
    regions: Mapping[Any, PhaseRegions] | None = None,
    title: str | None = None,
) -> Path | None:
    """Each run as a point over (x_col, y_col), colored by its phase (see
    analysis.grokking_phases), one panel per value of facet_col (see `phase_facets`). An axis is
    logarithmic when log_x / log_y says so (the search space's `log: true`), else when its
    values span a decade or more. `regions` (facet value -> analysis.phase_regions result) fills
    the plane beneath the points where they were computed; a refused one is named in its panel.
    None when either axis is missing or took fewer than two distinct values (e.g. the learning
    rate was not searched)."""
    need(table, phase_col)
    if x_col not in table.columns or y_col not in table.columns:
        return None
    data = table.assign(
        _x=pd.to_numeric(table[x_col], errors="coerce"), _y=pd.to_numeric(table[y_col], errors="coerce")
    )
    data = data.dropna(subset=["_x", "_y", phase_col])
    if data.empty or data["_x"].nunique() < 2 or data["_y"].nunique() < 2:
        return None
    facets = phase_facets(data, facet_col)
    regions = dict(regions or {})
    cols = min(len(facets), 4)
    rows = math.ceil(len(facets) / cols)
    fig = new_figure(4.2 * cols, 3.6 * rows + 0.6)
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True, sharey=True)
    logx, logy = axis_is_log(data["_x"], log_x), axis_is_log(data["_y"], log_y)
    filled = False
    for k, (value, part) in enumerate(facets):
        ax = axes[k // cols][k % cols]
        region = regions.get(value)
        if region is not None and region.labels is not None:
            colors = ListedColormap([PHASE_COLORS.get(p, "#dddddd") for p in region.phases])
            ax.pcolormesh(
                region.x_edges,
                region.y_edges,
                region.labels,
                cmap=colors,
                vmin=-0.5,
                vmax=len(region.phases) - 0.5,
                alpha=0.3,
                shading="flat",
                rasterized=True,
                zorder=0,
            )
            ax.use_sticky_edges = False  # keep the usual margin: the runs on the grid's edge stay whole
            filled = True
        x, y = _jitter(part["_x"].to_numpy(), part["_y"].to_numpy(), logx, logy)
        for phase in PHASES:
            mask = (part[phase_col] == phase).to_numpy()
            if mask.any():
                ax.scatter(
                    x[mask],
                    y[mask],
                    s=28,
                    color=PHASE_COLORS[phase],
                    edgecolor="black",
                    lw=0.3,
                    label=phase,
                    zorder=2,
                )
        ax.set_xscale("log" if logx else "linear")
        ax.set_yscale("log" if logy else "linear")
        for axis, log in ((ax.xaxis, logx), (ax.yaxis, logy)):
            if log:
                readable_log_ticks(axis)
        ax.grid(alpha=0.25)
        heading = [] if value is None else [f"{facet_col} = {value:,.6g}"]
        if region is not None and region.labels is None:  # why this panel stays points
            heading.append("points only: " + textwrap.shorten(region.reason or "", 58))
        if heading:
            ax.set_title("\n".join(heading), fontsize=8)
        ax.set_xlabel(label(x_col) + (", log scale" if logx else ""), fontsize=8)
        if k % cols == 0:
            ax.set_ylabel(label(y_col) + (", log scale" if logy else ""), fontsize=8)
    for k in range(len(facets), rows * cols):
        axes[k // cols][k % cols].set_visible(False)
    handles = [
        Line2D([], [], marker="o", ls="", color=PHASE_COLORS[p], markeredgecolor="black", label=p)
        for p in PHASES
    ]
    if filled:
        handles.append(Patch(color="gray", alpha=0.3, label="filled: phase of the 3 nearest runs"))
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncol=len(handles),
        fontsize=9,
        title="phase (Liu et al. 2022)",
        title_fontsize=8,
    )
    fig.suptitle(title or f"Learning phase of each run over {_short(x_col)} x {_short(y_col)}")
    return save(fig, path)


def phase_facets(table: pd.DataFrame, facet_col: str | None) -> list[tuple[Any, pd.DataFrame]]:
    """The panels of a phase diagram: (facet value, its rows) per value of facet_col, or one
    (None, table) when the column is absent or constant. The report computes regions per panel."""
    if facet_col and facet_col in table.columns and table[facet_col].nunique() > 1:
        return list(table.groupby(facet_col))
    return [(None, table)]


def _short(col: str) -> str:
    return col.removeprefix("param.")


def axis_is_log(values: pd.Series, searched_log: bool | None = None) -> bool:
    """Whether an axis is drawn on a log scale: as it was searched (`log: true` in the search
    space) when known, else when its positive values span a decade or more."""
    if searched_log is not None:
        return bool(searched_log and (values > 0).all())
    return bool(values.min() > 0 and values.max() / values.min() >= 10)


def _jitter(x: np.ndarray, y: np.ndarray, logx: bool, logy: bool) -> tuple[np.ndarray, np.ndarray]:
    """Spread points that share a position (seeds of one trial) a little apart, deterministically."""
    x, y = x.astype(float).copy(), y.astype(float).copy()
    seen: dict[tuple[float, float], int] = {}
    for i, key in enumerate(zip(x, y)):
        k = seen.get(key, 0)
        seen[key] = k + 1
        if k:
            shift = 0.015 * ((k + 1) // 2) * (1 if k % 2 else -1)
            x[i] = x[i] * 10**shift if logx else x[i] + shift * (np.ptp(x) or 1)
    return x, y


def _cell_key(cell) -> tuple:
    """Sort cells like "N=1000/D=0.2" by their numbers, not as text."""
    import re

    return tuple(float(v) for v in re.findall(r"\d*\.?\d+(?:e[-+]?\d+)?", str(cell))), str(cell)
