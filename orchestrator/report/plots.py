"""Figures of emergence, and the drawing helpers every figure module of the report shares.

Nothing here computes a fit: the functions draw what `orchestrator.analysis` returned. They use
matplotlib's object API on an Agg canvas (no pyplot, no global backend switch), so they run
headless and in threads. Each returns the path it wrote, or None when there is nothing to
draw (an empty table, a parameter that was not varied); a missing column raises ValueError.
The other figures: `grokking_plots.py` (curves, phase diagrams), `scaling_plots.py` (the
scaling law, IsoFLOP profiles, the compute-optimal frontier).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from orchestrator.analysis.emergence import CriticalSizes, EmergenceFit
from orchestrator.analysis.mirage import MirageCheck

LABELS = {
    "n_params": "N: parameters (total, count)",
    "n_params_non_embedding": "N: non-embedding parameters (count)",
    "n_params_embedding": "embedding parameters (count)",
    "n_train": "D: training examples (count)",
    "d_value": "D: grid value (task's data-size field)",
    "param.train.weight_decay": "weight decay (AdamW coefficient)",
    "param.train.lr": "learning rate (peak)",
    "max_val_acc": "best validation accuracy (fraction)",
    "val_acc": "validation accuracy, exact match (fraction)",
    "train_acc": "training accuracy (fraction)",
    "val_token_acc": "validation per-token accuracy (fraction)",
    "val_answer_logprob": "validation answer log-likelihood (nats)",
    "val_p_answer": "probability of the right answer, exp(-val loss) (fraction)",
    "val_loss": "validation loss (nats)",
    "min_val_loss": "lowest validation loss (nats)",
    "step": "step (optimizer updates)",
}

DPI = 120
REFINED_COL = "refined"  # "round k" on the runs of a cell grid.refine added (orchestrator/store/results.py)
REFINED_LABEL = "added by grid.refine"
REFINED_COLOR = "#ff00ff"  # magenta: apart from viridis, and from the red and orange threshold markers


def refined_scales(runs: pd.DataFrame, x_col: str, y_col: str) -> set[tuple[float, float]]:
    """The (x, y) scales of the cells grid.refine added: those with a run that carries the
    `refined` tag. Empty for a study without grid.refine (no such column, or no tag)."""
    if REFINED_COL not in runs or x_col not in runs or y_col not in runs:
        return set()
    marked = runs[runs[REFINED_COL].notna()]
    xs, ys = (pd.to_numeric(marked[c], errors="coerce").to_numpy(float) for c in (x_col, y_col))
    return {(float(x), float(y)) for x, y in zip(xs, ys) if np.isfinite(x) and np.isfinite(y)}


def refined_handle(color: str = "black") -> Line2D:
    """The legend entry of an added cell: a hollow diamond."""
    return Line2D([], [], marker="D", ls="none", ms=8, mfc="none", mec=color, mew=1.5, label=REFINED_LABEL)


def label(col: str) -> str:
    """The axis label of a column: its name and unit when known, else the column name."""
    return LABELS.get(col, col)


def plot_emergence_heatmap(
    runs: pd.DataFrame,
    path: str | Path,
    *,
    metric: str = "max_val_acc",
    n_col: str = "n_params",
    d_col: str = "n_train",
    agg: str = "best",
    critical: CriticalSizes | None = None,
    level: float | None = None,
    title: str | None = None,
) -> Path | None:
    """The metric per (N, D) cell (agg "best": the best run; "mean"), with the threshold contour
    at `level` (default: the midpoint level of the fits in `critical`, else halfway between the
    lowest and highest cell) and the critical sizes D*(N), N*(D) with their intervals. The cells
    grid.refine added (a `refined` column, see `refined_scales`) carry a hollow diamond."""
    need(runs, metric, n_col, d_col)
    table = _numeric(runs, n_col, d_col, metric)
    if table.empty:
        return None
    cells = table.groupby([n_col, d_col])[metric]
    grid = (cells.max() if agg == "best" else cells.mean()).unstack(d_col)  # rows N, columns D
    ns, ds = grid.index.to_numpy(float), grid.columns.to_numpy(float)
    values = grid.to_numpy(float)
    fig, ax = _figure(7.5, 5.5)
    vmin, vmax = np.nanmin(values), np.nanmax(values)
    if vmin >= 0 and vmax <= 1:
        vmin, vmax = 0.0, 1.0  # a fraction: the full scale, comparable across studies
    mesh = ax.pcolormesh(
        _edges(ns), _edges(ds), values.T, cmap="viridis", vmin=vmin, vmax=vmax, shading="flat"
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    fig.colorbar(mesh, ax=ax, label=f"{label(metric)}, {'best run' if agg == 'best' else 'mean'} per cell")
    if values.size <= 144:
        widths = _cell_points(ns, ds)[0]
        for i, n in enumerate(ns):
            for j, d in enumerate(ds):
                if np.isfinite(values[i, j]) and widths[i] >= 24:  # "0.50" in 8 points is about 18 wide
                    dark = (values[i, j] - vmin) / max(vmax - vmin, 1e-12) > 0.6
                    ax.text(
                        n,
                        d,
                        f"{values[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="black" if dark else "white",
                    )
    handles = []
    added = sorted(refined_scales(runs.loc[table.index], n_col, d_col))  # cells drawn, not failed ones
    if added:  # a hollow diamond around the cell's number, sized to fit inside its own cell
        ax.scatter(
            [n for n, _ in added],
            [d for _, d in added],
            s=_cell_sizes(ns, ds, added) ** 2,
            marker="D",
            facecolors="none",
            edgecolors=REFINED_COLOR,
            linewidths=1.8,
            zorder=3,
        )
        handles.append(refined_handle(REFINED_COLOR))
    if not np.isfinite(values).all():  # a grid refined along one line leaves cells never run
        ax.set_facecolor("#d9d9d9")
        handles.append(Patch(facecolor="#d9d9d9", edgecolor="gray", label="no run at this (N, D)"))
    if level is None and critical is not None:
        levels = [
            f.midpoint_level for _, f in critical.d_star + critical.n_star if f.midpoint_level is not None
        ]
        level = float(np.median(levels)) if levels else None
    if level is None:
        level = (np.nanmin(values) + np.nanmax(values)) / 2
    if len(ns) >= 2 and len(ds) >= 2 and np.nanmin(values) < level < np.nanmax(values):
        ax.contour(
            ns,
            ds,
            np.ma.masked_invalid(_between(ns, ds, values)).T,
            levels=[level],
            colors="white",
            linewidths=2,
            linestyles="--",
        )
        handles.append(
            Line2D([], [], color="white", ls="--", lw=2, label=f"contour at {level:.2f} (midpoint level)")
        )
    if critical is not None:
        pts = [(n, f) for n, f in critical.d_star if f.threshold is not None]
        if pts:
            errorbar(
                ax,
                [n for n, _ in pts],
                [f.threshold for _, f in pts],
                yerr=[[f.low for _, f in pts], [f.high for _, f in pts]],
                marker="v",
                color="red",
                label="D*(N): threshold over D at each N, 95% CI",
            )
        pts = [(d, f) for d, f in critical.n_star if f.threshold is not None]
        if pts:
            errorbar(
                ax,
                [f.threshold for _, f in pts],
                [d for d, _ in pts],
                xerr=[[f.low for _, f in pts], [f.high for _, f in pts]],
                marker=">",
                color="orange",
                label="N*(D): threshold over N at each D, 95% CI",
            )
        ax.set_xlim(_edges(ns)[0], _edges(ns)[-1])
        ax.set_ylim(_edges(ds)[0], _edges(ds)[-1])
    handles += ax.get_legend_handles_labels()[0]
    if handles:
        leg = ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=8, ncol=1)
        leg.get_frame().set_facecolor("#bbbbbb")
    _grid_ticks(ax.xaxis, ns)
    _grid_ticks(ax.yaxis, ds)
    ax.set_xlabel(label(n_col) + ", log scale")
    ax.set_ylabel(label(d_col) + ", log scale")
    ax.set_title(title or f"Emergence of {metric} over N x D")
    return save(fig, path)


def plot_metric_vs_scale(
    runs: pd.DataFrame,
    path: str | Path,
    *,
    metric: str = "max_val_acc",
    x_col: str = "n_params",
    group_col: str = "n_train",
    agg: str = "best",
    fits: Mapping | Sequence | None = None,
    title: str | None = None,
) -> Path | None:
    """The metric over scale x_col, one curve per value of group_col: every run (small dots),
    the per-scale value (agg "best" or "mean"), and from `fits` (group value -> EmergenceFit,
    e.g. dict(critical.n_star)) the fitted sigmoid and the threshold with its interval. The
    scales grid.refine added (a `refined` column, see `refined_scales`) carry a hollow diamond."""
    need(runs, metric, x_col, group_col)
    table = _numeric(runs, x_col, group_col, metric)
    if table.empty:
        return None
    fits = dict(fits or {})
    added = refined_scales(runs.loc[table.index], x_col, group_col)
    groups = sorted(table[group_col].unique())
    colors = _colors(len(groups))
    fig, ax = _figure(7.5, 5)
    for color, value in zip(colors, groups):
        part = table[table[group_col] == value]
        per = part.groupby(x_col)[metric]
        agg_values = per.max() if agg == "best" else per.mean()
        ax.scatter(part[x_col], part[metric], s=8, color=color, alpha=0.35)
        ax.plot(
            agg_values.index,
            agg_values.values,
            "o-",
            color=color,
            lw=1.2,
            ms=5,
            label=f"{group_col} = {value:g}",
        )
        mine = [x for x in agg_values.index if (float(x), float(value)) in added]
        if mine:
            ax.scatter(
                mine,
                agg_values.loc[mine].to_numpy(float),
                marker="D",
                s=90,
                facecolors="none",
                edgecolors=[color],
                linewidths=1.5,
                zorder=3,
            )
        fit = fits.get(value)
        # Only an accepted fit is drawn: a sigmoid the analysis rejected (no threshold) would
        # suggest a transition that was not found.
        if isinstance(fit, EmergenceFit) and fit.ceiling is not None and fit.threshold is not None:
            xs = np.logspace(np.log10(part[x_col].min()), np.log10(part[x_col].max()), 200)
            ax.plot(xs, fit.predict(xs), "--", color=color, lw=1.5)
            if fit.threshold is not None:
                ax.axvline(fit.threshold, color=color, lw=1, ls=":")
                if fit.low is not None or fit.high is not None:  # an unbounded side runs to the grid's end
                    ax.axvspan(
                        fit.low or part[x_col].min(), fit.high or part[x_col].max(), color=color, alpha=0.12
                    )
    ax.set_xscale("log")
    _grid_ticks(ax.xaxis, table[x_col].to_numpy())
    ax.set_xlabel(label(x_col) + ", log scale")
    ax.set_ylabel(label(metric) + (", best run per scale" if agg == "best" else ", mean per scale"))
    extra = [
        Line2D([], [], color="black", ls="--", label="fitted sigmoid (floor at chance)"),
        Line2D([], [], color="black", ls=":", label="threshold (midpoint), band: 95% CI"),
    ]
    extra = (extra if fits else []) + ([refined_handle()] if added else [])
    ax.legend(handles=ax.get_legend_handles_labels()[0] + extra, fontsize=8, loc="best")
    ax.set_title(title or f"{metric} over {x_col}, one curve per {group_col}")
    ax.grid(alpha=0.3)
    return save(fig, path)


def plot_mirage(
    check: MirageCheck,
    x: np.ndarray,
    y_discontinuous: np.ndarray,
    y_continuous: np.ndarray,
    path: str | Path,
    *,
    x_col: str = "n_params",
    title: str | None = None,
) -> Path | None:
    """The discontinuous and the continuous metric of the same runs side by side over scale,
    each with its fitted sigmoid and threshold (when found), and the verdict."""
    x = np.asarray(x, dtype=float)
    if x.size == 0:
        return None
    fig = new_figure(11, 4.8)
    axes = fig.subplots(1, 2)
    for ax, y, fit, metric, color in (
        (axes[0], y_discontinuous, check.discontinuous, check.discontinuous_metric, "C3"),
        (axes[1], y_continuous, check.continuous, check.continuous_metric, "C0"),
    ):
        y = np.asarray(y, dtype=float)
        ok = np.isfinite(x) & np.isfinite(y) & (x > 0)
        ax.scatter(x[ok], y[ok], s=10, color=color, alpha=0.35, label="runs")
        means = pd.Series(y[ok]).groupby(x[ok]).mean()
        ax.plot(means.index, means.values, "o-", color=color, ms=5, label="mean per scale")
        if fit.ceiling is not None and fit.threshold is not None:
            xs = np.logspace(np.log10(x[ok].min()), np.log10(x[ok].max()), 200)
            ax.plot(xs, fit.predict(xs), "k--", lw=1.2, label="fitted sigmoid")
        if fit.threshold is not None:
            ax.axvline(fit.threshold, color="black", ls=":", lw=1, label=f"threshold {fit.threshold:.3g}")
            if fit.low is not None or fit.high is not None:  # an unbounded side runs to the grid's end
                ax.axvspan(
                    fit.low or np.min(x), fit.high or np.max(x), color="gray", alpha=0.15, label="95% CI"
                )
        ax.set_xscale("log")
        ax.set_xlabel(label(x_col) + ", log scale")
        ax.set_ylabel(label(metric))
        if fit.threshold is None:
            state = "no threshold"
        elif fit.sharp is None:
            state = "sharpness: insufficient data"
        elif fit.sharp:
            state = "sharp jump"
        else:
            state = "smooth"
        if fit.threshold is None and fit.reason:
            ax.text(
                0.02,
                0.02,
                "no threshold: " + fit.reason[:70],
                transform=ax.transAxes,
                fontsize=7,
                color="dimgray",
                va="bottom",
            )
        evidence = "" if fit.evidence is None else f", evidence {fit.evidence:.1f}"
        ax.set_title(f"{metric}: {state}{evidence}", fontsize=10)
        ax.legend(fontsize=8, loc="best")
        ax.grid(alpha=0.3)
    if check.group is None:
        group = ""
    elif isinstance(check.group, (int, float)):
        group = f" (at D = {check.group:g})"
    else:
        group = f" (at {check.group})"
    fig.suptitle(title or f"Mirage check{group}: verdict '{check.verdict}'")
    return save(fig, path)


def need(table: pd.DataFrame, *cols: str) -> None:
    """Raise ValueError naming the columns a figure needs and the table lacks."""
    missing = [c for c in cols if c not in table.columns]
    if missing:
        raise ValueError(f"the table has no column(s) {missing}; it has {list(table.columns)}")


def _numeric(table: pd.DataFrame, *cols: str) -> pd.DataFrame:
    out = table[list(cols)].apply(pd.to_numeric, errors="coerce").dropna()
    for c in cols[:-1]:
        out = out[out[c] > 0]  # scale axes are logarithmic
    return out


def new_figure(width: float, height: float) -> Figure:
    """A figure on its own Agg canvas: no pyplot state, safe in threads."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _figure(width: float, height: float):
    fig = new_figure(width, height)
    return fig, fig.add_subplot()


def _grid_ticks(axis, values: np.ndarray) -> None:
    """Ticks at the measured grid values of a log axis, labelled compactly (20k, 1.2M), when
    there are few enough of them to read."""
    from matplotlib.ticker import FixedLocator, NullLocator

    values = np.unique(np.asarray(values, dtype=float))
    if 1 < values.size <= 12:
        axis.set_major_locator(FixedLocator(values))
        axis.set_minor_locator(NullLocator())
        # A tick closer than 1/15 of the axis to the last labelled one (a scale grid.refine added
        # inside a bracket) keeps its tick but not its label: the labels would run into each other.
        logs, shown, last = np.log10(values), [], -np.inf
        for v, lv in zip(values, logs):
            keep = lv - last >= (logs[-1] - logs[0]) / 15
            shown.append(_compact(v) if keep else "")
            last = lv if keep else last
        axis.set_ticklabels(shown)


def readable_log_ticks(axis) -> None:
    """Plain-number labels on a log axis (0.3, 0.5, 1, 2), without the crowded "3x10^-1" minor
    labels matplotlib puts on an axis that spans less than a decade: every digit within a decade,
    1-2-5 steps up to two, powers of ten beyond (call it once the data are drawn)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    lo, hi = sorted(axis.get_view_interval())
    decades = np.log10(hi / lo) if lo > 0 else np.inf
    if decades <= 1:
        subs = np.arange(1.0, 10.0)
    elif decades <= 2:
        subs = (1.0, 2.0, 5.0)
    else:
        subs = (1.0,)
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _compact(v: float) -> str:
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= size:
            return f"{v / size:.3g}{suffix}"
    return f"{v:.3g}"


def save(fig: Figure, path: str | Path) -> Path:
    """Write the figure as a PNG at `path`, creating its folder; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def _between(ns: np.ndarray, ds: np.ndarray, values: np.ndarray) -> np.ndarray:
    """For the contour only: a cell never run that lies between two measured cells of its D
    (a model size grid.refine added at another D), else of its N, gets the value interpolated in
    log scale between them, as the contour interpolates between any two cells; the rest stay
    NaN (masked: no contour where nothing was measured on either side)."""
    out = values.copy()
    for grid, along in ((np.log10(ns), out), (np.log10(ds), out.T)):  # along N at each D, then D at each N
        for k in range(along.shape[1]):
            line = along[:, k]
            known = np.isfinite(line)
            inside = (
                ~known & (grid > grid[known].min()) & (grid < grid[known].max()) if known.sum() >= 2 else None
            )
            if inside is not None and inside.any():
                line[inside] = np.interp(grid[inside], grid[known], line[known])
    return out


def _cell_points(ns: np.ndarray, ds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The width of each N's and the height of each D's heatmap cell in points, on the 7.5 x 5.5
    inch figure (its axes about 5.5 x 4 inches): a scale grid.refine added has a narrow cell."""
    ex, ey = np.diff(np.log10(_edges(ns))), np.diff(np.log10(_edges(ds)))
    return 5.5 * 72 * ex / ex.sum(), 4.0 * 72 * ey / ey.sum()


def _cell_sizes(ns: np.ndarray, ds: np.ndarray, points: Sequence[tuple[float, float]]) -> np.ndarray:
    """Marker sizes (points) that fit inside each point's heatmap cell: 70% of its smaller side, at
    most 20."""
    widths, heights = _cell_points(ns, ds)
    return np.asarray(
        [
            min(20.0, 0.7 * min(widths[np.searchsorted(ns, n)], heights[np.searchsorted(ds, d)]))
            for n, d in points
        ]
    )


def _edges(centers: np.ndarray) -> np.ndarray:
    """Cell edges on a log axis: geometric midpoints, extended by half a step at each end."""
    logs = np.log10(centers)
    if logs.size == 1:
        return 10 ** np.array([logs[0] - 0.25, logs[0] + 0.25])
    mids = (logs[1:] + logs[:-1]) / 2
    return 10 ** np.concatenate([[logs[0] - (mids[0] - logs[0])], mids, [logs[-1] + (logs[-1] - mids[-1])]])


def errorbar(ax, x, y, *, xerr=None, yerr=None, **kwargs) -> None:
    """Points with intervals given as bounds ([lows], [highs], None: no bar on that side), not offsets."""

    def err(values, bounds):
        if bounds is None:
            return None
        lo = [v - b if b is not None else 0 for v, b in zip(values, bounds[0])]
        hi = [b - v if b is not None else 0 for v, b in zip(values, bounds[1])]
        return [np.maximum(lo, 0), np.maximum(hi, 0)]

    ax.errorbar(
        x,
        y,
        xerr=err(x, xerr),
        yerr=err(y, yerr),
        **{"ls": "none", "ms": 8, "capsize": 3, "mec": "black", **kwargs},
    )


def _colors(k: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(v) for v in np.linspace(0.0, 0.85, max(k, 1))]
