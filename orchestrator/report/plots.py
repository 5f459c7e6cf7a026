"""Figures of a study, drawn from analysis results and runs tables; each writes one PNG.

Nothing here computes a fit: the functions draw what `orchestrator.analysis` returned. They use
matplotlib's object API on an Agg canvas (no pyplot, no global backend switch), so they run
headless and in threads. Each returns the path it wrote, or None when there is nothing to
draw (an empty table, a parameter that was not varied); a missing column raises ValueError.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from orchestrator.analysis.emergence import CriticalSizes, EmergenceFit
from orchestrator.analysis.grokking import PHASES, TRAIN_THRESHOLD, VAL_THRESHOLD
from orchestrator.analysis.mirage import MirageCheck
from orchestrator.analysis.scaling import ScalingLawFit

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
PHASE_COLORS = {"comprehension": "#2ca02c", "grokking": "#1f77b4", "memorization": "#ff7f0e", "confusion": "#7f7f7f"}
DPI = 120


def label(col: str) -> str:
    """The axis label of a column: its name and unit when known, else the column name."""
    return LABELS.get(col, col)


def plot_emergence_heatmap(runs: pd.DataFrame, path: str | Path, *, metric: str = "max_val_acc",
                           n_col: str = "n_params", d_col: str = "n_train", agg: str = "best",
                           critical: CriticalSizes | None = None, level: float | None = None,
                           title: str | None = None) -> Path | None:
    """The metric per (N, D) cell (agg "best": the best run; "mean"), with the threshold contour
    at `level` (default: the midpoint level of the fits in `critical`, else halfway between the
    lowest and highest cell) and the critical sizes D*(N), N*(D) with their intervals."""
    _need(runs, metric, n_col, d_col)
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
    mesh = ax.pcolormesh(_edges(ns), _edges(ds), values.T, cmap="viridis", vmin=vmin, vmax=vmax, shading="flat")
    ax.set_xscale("log")
    ax.set_yscale("log")
    fig.colorbar(mesh, ax=ax, label=f"{label(metric)}, {'best run' if agg == 'best' else 'mean'} per cell")
    if values.size <= 144:
        for i, n in enumerate(ns):
            for j, d in enumerate(ds):
                if np.isfinite(values[i, j]):
                    dark = (values[i, j] - vmin) / max(vmax - vmin, 1e-12) > 0.6
                    ax.text(n, d, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=8,
                            color="black" if dark else "white")
    handles = []
    if level is None and critical is not None:
        levels = [f.midpoint_level for _, f in critical.d_star + critical.n_star if f.midpoint_level is not None]
        level = float(np.median(levels)) if levels else None
    if level is None:
        level = (np.nanmin(values) + np.nanmax(values)) / 2
    if len(ns) >= 2 and len(ds) >= 2 and np.nanmin(values) < level < np.nanmax(values):
        filled = np.where(np.isfinite(values), values, np.nanmin(values))
        ax.contour(ns, ds, filled.T, levels=[level], colors="white", linewidths=2, linestyles="--")
        handles.append(Line2D([], [], color="white", ls="--", lw=2, label=f"contour at {level:.2f} (midpoint level)"))
    if critical is not None:
        pts = [(n, f) for n, f in critical.d_star if f.threshold is not None]
        if pts:
            _errorbar(ax, [n for n, _ in pts], [f.threshold for _, f in pts],
                      yerr=[[f.low for _, f in pts], [f.high for _, f in pts]], marker="v", color="red",
                      label="D*(N): threshold over D at each N, 95% CI")
        pts = [(d, f) for d, f in critical.n_star if f.threshold is not None]
        if pts:
            _errorbar(ax, [f.threshold for _, f in pts], [d for d, _ in pts],
                      xerr=[[f.low for _, f in pts], [f.high for _, f in pts]], marker=">", color="orange",
                      label="N*(D): threshold over N at each D, 95% CI")
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
    return _save(fig, path)


def plot_metric_vs_scale(runs: pd.DataFrame, path: str | Path, *, metric: str = "max_val_acc",
                         x_col: str = "n_params", group_col: str = "n_train", agg: str = "best",
                         fits: Mapping | Sequence | None = None, title: str | None = None) -> Path | None:
    """The metric over scale x_col, one curve per value of group_col: every run (small dots),
    the per-scale value (agg "best" or "mean"), and from `fits` (group value -> EmergenceFit,
    e.g. dict(critical.n_star)) the fitted sigmoid and the threshold with its interval."""
    _need(runs, metric, x_col, group_col)
    table = _numeric(runs, x_col, group_col, metric)
    if table.empty:
        return None
    fits = dict(fits or {})
    groups = sorted(table[group_col].unique())
    colors = _colors(len(groups))
    fig, ax = _figure(7.5, 5)
    for color, value in zip(colors, groups):
        part = table[table[group_col] == value]
        per = part.groupby(x_col)[metric]
        agg_values = per.max() if agg == "best" else per.mean()
        ax.scatter(part[x_col], part[metric], s=8, color=color, alpha=0.35)
        ax.plot(agg_values.index, agg_values.values, "o-", color=color, lw=1.2, ms=5,
                label=f"{group_col} = {value:g}")
        fit = fits.get(value)
        # Only an accepted fit is drawn: a sigmoid the analysis rejected (no threshold) would
        # suggest a transition that was not found.
        if isinstance(fit, EmergenceFit) and fit.ceiling is not None and fit.threshold is not None:
            xs = np.logspace(np.log10(part[x_col].min()), np.log10(part[x_col].max()), 200)
            ax.plot(xs, fit.predict(xs), "--", color=color, lw=1.5)
            if fit.threshold is not None:
                ax.axvline(fit.threshold, color=color, lw=1, ls=":")
                if fit.low is not None or fit.high is not None:  # an unbounded side runs to the grid's end
                    ax.axvspan(fit.low or part[x_col].min(), fit.high or part[x_col].max(), color=color, alpha=0.12)
    ax.set_xscale("log")
    _grid_ticks(ax.xaxis, table[x_col].to_numpy())
    ax.set_xlabel(label(x_col) + ", log scale")
    ax.set_ylabel(label(metric) + (", best run per scale" if agg == "best" else ", mean per scale"))
    extra = [Line2D([], [], color="black", ls="--", label="fitted sigmoid (floor at chance)"),
             Line2D([], [], color="black", ls=":", label="threshold (midpoint), band: 95% CI")]
    ax.legend(handles=ax.get_legend_handles_labels()[0] + (extra if fits else []), fontsize=8, loc="best")
    ax.set_title(title or f"{metric} over {x_col}, one curve per {group_col}")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_grokking_curves(curves: pd.DataFrame, path: str | Path, *, runs: pd.DataFrame | None = None,
                         cell_col: str = "cell", run_col: str = "run_id", step_col: str = "step",
                         train_col: str = "train_acc", val_col: str = "val_acc", max_cells: int = 49,
                         train_threshold: float = TRAIN_THRESHOLD, val_threshold: float = VAL_THRESHOLD,
                         title: str | None = None) -> Path | None:
    """Training and validation accuracy over steps (log scale) in one small panel per cell:
    every run of the cell, the one that reached the highest validation accuracy drawn bold.
    The cell of a run comes from curves[cell_col] or, if absent, from runs[[run_col, cell_col]]."""
    _need(curves, run_col, step_col, train_col, val_col)
    data = curves
    if cell_col not in data.columns:
        if runs is None:
            raise ValueError(f"the curves table has no column {cell_col!r}; "
                             f"pass runs with {run_col!r} and {cell_col!r}")
        _need(runs, run_col, cell_col)
        data = data.merge(runs[[run_col, cell_col]].drop_duplicates(run_col), on=run_col, how="inner")
    data = data[pd.to_numeric(data[step_col], errors="coerce") > 0]  # a log axis has no step 0
    if data.empty:
        return None
    cells = list(dict.fromkeys(sorted(data[cell_col].unique(), key=_cell_key)))[:max_cells]
    cols = math.ceil(math.sqrt(len(cells)))
    rows = math.ceil(len(cells) / cols)
    fig = _new_figure(3.2 * cols, 2.5 * rows + 0.8)
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
    fig.legend(handles=[Line2D([], [], color="C0", ls="--", label="training accuracy"),
                        Line2D([], [], color="C3", ls="-", label="validation accuracy"),
                        Line2D([], [], color="gray", ls=":", label=f"thresholds {train_threshold} / {val_threshold}"),
                        Line2D([], [], color="gray", lw=1.6, label="bold: run with the best validation accuracy")],
               loc="outside lower center", ncol=4, fontsize=8)
    fig.suptitle(title or "Grokking: accuracy over training, one panel per (N, D) cell")
    return _save(fig, path)


def plot_phase_diagram(table: pd.DataFrame, path: str | Path, *, x_col: str = "param.train.weight_decay",
                       y_col: str = "d_value", phase_col: str = "phase", facet_col: str | None = "n_params",
                       title: str | None = None) -> Path | None:
    """Each run as a point over (x_col, y_col), colored by its phase (see
    analysis.grokking_phases), one panel per value of facet_col. None when either axis is
    missing or took fewer than two distinct values (e.g. the learning rate was not searched)."""
    _need(table, phase_col)
    if x_col not in table.columns or y_col not in table.columns:
        return None
    data = table.assign(_x=pd.to_numeric(table[x_col], errors="coerce"),
                        _y=pd.to_numeric(table[y_col], errors="coerce"))
    data = data.dropna(subset=["_x", "_y", phase_col])
    if data.empty or data["_x"].nunique() < 2 or data["_y"].nunique() < 2:
        return None
    facets = [(None, data)]
    if facet_col and facet_col in data.columns and data[facet_col].nunique() > 1:
        facets = list(data.groupby(facet_col))
    cols = min(len(facets), 4)
    rows = math.ceil(len(facets) / cols)
    fig = _new_figure(4.2 * cols, 3.6 * rows + 0.6)
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True, sharey=True)
    logx, logy = _is_log(data["_x"]), _is_log(data["_y"])
    for k, (value, part) in enumerate(facets):
        ax = axes[k // cols][k % cols]
        x, y = _jitter(part["_x"].to_numpy(), part["_y"].to_numpy(), logx, logy)
        for phase in PHASES:
            mask = (part[phase_col] == phase).to_numpy()
            if mask.any():
                ax.scatter(x[mask], y[mask], s=28, color=PHASE_COLORS[phase], edgecolor="black", lw=0.3, label=phase)
        ax.set_xscale("log" if logx else "linear")
        ax.set_yscale("log" if logy else "linear")
        ax.grid(alpha=0.25)
        if value is not None:
            ax.set_title(f"{facet_col} = {value:,.6g}", fontsize=9)
        ax.set_xlabel(label(x_col) + (", log scale" if logx else ""), fontsize=8)
        if k % cols == 0:
            ax.set_ylabel(label(y_col) + (", log scale" if logy else ""), fontsize=8)
    for k in range(len(facets), rows * cols):
        axes[k // cols][k % cols].set_visible(False)
    fig.legend(handles=[Line2D([], [], marker="o", ls="", color=PHASE_COLORS[p], markeredgecolor="black", label=p)
                        for p in PHASES], loc="outside lower center", ncol=4, fontsize=9,
               title="phase (Liu et al. 2022)", title_fontsize=8)
    fig.suptitle(title or f"Learning phase of each run over {_short(x_col)} x {_short(y_col)}")
    return _save(fig, path)


def plot_scaling_fit(fit: ScalingLawFit, n: np.ndarray | None, d: np.ndarray | None, loss: np.ndarray,
                     path: str | Path, *, title: str | None = None) -> Path | None:
    """The fitted law against the data: iso-loss contours over (N, D) with the runs on them
    (a loss curve for a one-variable law), and the residuals log L - log L_fit."""
    loss = np.asarray(loss, dtype=float)
    if loss.size == 0:
        return None
    n = None if n is None else np.asarray(n, dtype=float)
    d = None if d is None else np.asarray(d, dtype=float)
    pred = fit.predict(n, d)
    resid = np.log(loss) - np.log(pred)
    fig = _new_figure(13, 5.5)
    ax, axr = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.3, 1]})
    n_label = f"N: parameters ({fit.convention or 'total'}, count), log scale"
    d_label = "D: training examples (count), log scale"
    norm = Normalize(vmin=loss.min(), vmax=loss.max())
    if fit.variables == ("N", "D"):
        gn = np.logspace(np.log10(n.min()) - 0.2, np.log10(n.max()) + 0.2, 120)
        gd = np.logspace(np.log10(d.min()) - 0.2, np.log10(d.max()) + 0.2, 120)
        surface = fit.predict(gn[None, :], gd[:, None])
        levels = np.unique(np.quantile(surface, np.linspace(0.03, 0.97, 9)))
        contours = ax.contour(gn, gd, surface, levels=levels, cmap="viridis", norm=norm)
        ax.clabel(contours, fmt="%.3g", fontsize=8, colors="black")
        points = ax.scatter(n, d, c=loss, cmap="viridis", norm=norm, s=22, edgecolor="black", lw=0.4)
        ax.set_yscale("log")
        ax.set_ylabel(d_label)
        ax.set_xlabel(n_label)
        ax.legend(handles=[Line2D([], [], color="gray", label="iso-loss contours of the fit (labelled, nats)"),
                           Line2D([], [], marker="o", ls="", color="gray", markeredgecolor="black",
                                  label="runs, colored by observed loss")], fontsize=8, loc="upper right")
        fig.colorbar(points, ax=ax, label="loss (nats)")
        rx, rx_label, rc, rc_label = n, n_label, d, "D (count)"
    else:
        x = n if fit.variables == ("N",) else d
        xs = np.logspace(np.log10(x.min()) - 0.1, np.log10(x.max()) + 0.1, 200)
        ax.scatter(x, loss, s=22, color="C0", edgecolor="black", lw=0.4, label="runs")
        ax.plot(xs, fit.predict(xs, xs), color="C3", label="fit")
        ax.axhline(fit.E.value, color="gray", ls=":", label=f"E = {fit.E.value:.3g} (irreducible loss)")
        ax.set_yscale("log")
        ax.set_ylabel("loss (nats), log scale")
        ax.set_xlabel(n_label if fit.variables == ("N",) else d_label)
        ax.legend(fontsize=8)
        rx, rx_label, rc, rc_label = x, ax.get_xlabel(), None, None
    ax.set_xscale("log")
    ax.set_title("fit and data", fontsize=10)
    if rc is not None:
        sc = axr.scatter(rx, resid, c=rc, cmap="plasma", norm=LogNorm() if rc.max() > rc.min() else None,
                         s=16, edgecolor="black", lw=0.3)
        fig.colorbar(sc, ax=axr, label=rc_label + ", log color scale")
    else:
        axr.scatter(rx, resid, color="C0", s=16, edgecolor="black", lw=0.3)
    axr.axhline(0, color="black", lw=0.8)
    axr.set_xscale("log")
    axr.set_xlabel(rx_label)
    axr.set_ylabel("residual: log L - log L_fit (natural log)")
    axr.set_title(f"residuals: RMS {np.sqrt(np.mean(resid ** 2)):.3g}, {len(resid)} runs", fontsize=9)
    axr.grid(alpha=0.3)
    fig.suptitle((title or f"Scaling law {fit.law} (Hoffmann et al. 2022, approach 3)") + "\n" + _law_text(fit),
                 fontsize=11)
    return _save(fig, path)


def plot_mirage(check: MirageCheck, x: np.ndarray, y_discontinuous: np.ndarray, y_continuous: np.ndarray,
                path: str | Path, *, x_col: str = "n_params", title: str | None = None) -> Path | None:
    """The discontinuous and the continuous metric of the same runs side by side over scale,
    each with its fitted sigmoid and threshold (when found), and the verdict."""
    x = np.asarray(x, dtype=float)
    if x.size == 0:
        return None
    fig = _new_figure(11, 4.8)
    axes = fig.subplots(1, 2)
    for ax, y, fit, metric, color in ((axes[0], y_discontinuous, check.discontinuous, check.discontinuous_metric, "C3"),
                                      (axes[1], y_continuous, check.continuous, check.continuous_metric, "C0")):
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
                ax.axvspan(fit.low or np.min(x), fit.high or np.max(x), color="gray", alpha=0.15, label="95% CI")
        ax.set_xscale("log")
        ax.set_xlabel(label(x_col) + ", log scale")
        ax.set_ylabel(label(metric))
        state = ("no threshold" if fit.threshold is None else "sharpness: insufficient data" if fit.sharp is None
                 else "sharp jump" if fit.sharp else "smooth")
        if fit.threshold is None and fit.reason:
            ax.text(0.02, 0.02, "no threshold: " + fit.reason[:70], transform=ax.transAxes, fontsize=7,
                    color="dimgray", va="bottom")
        evidence = "" if fit.evidence is None else f", evidence {fit.evidence:.1f}"
        ax.set_title(f"{metric}: {state}{evidence}", fontsize=10)
        ax.legend(fontsize=8, loc="best")
        ax.grid(alpha=0.3)
    group = ("" if check.group is None else f" (at D = {check.group:g})" if isinstance(check.group, (int, float))
             else f" (at {check.group})")
    fig.suptitle(title or f"Mirage check{group}: verdict '{check.verdict}'")
    return _save(fig, path)


def _short(col: str) -> str:
    return col.removeprefix("param.")


def _need(table: pd.DataFrame, *cols: str) -> None:
    missing = [c for c in cols if c not in table.columns]
    if missing:
        raise ValueError(f"the table has no column(s) {missing}; it has {list(table.columns)}")


def _numeric(table: pd.DataFrame, *cols: str) -> pd.DataFrame:
    out = table[list(cols)].apply(pd.to_numeric, errors="coerce").dropna()
    for c in cols[:-1]:
        out = out[out[c] > 0]  # scale axes are logarithmic
    return out


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _figure(width: float, height: float):
    fig = _new_figure(width, height)
    return fig, fig.add_subplot()


def _grid_ticks(axis, values: np.ndarray) -> None:
    """Ticks at the measured grid values of a log axis, labelled compactly (20k, 1.2M), when
    there are few enough of them to read."""
    from matplotlib.ticker import FixedLocator, NullLocator

    values = np.unique(np.asarray(values, dtype=float))
    if 1 < values.size <= 12:
        axis.set_major_locator(FixedLocator(values))
        axis.set_minor_locator(NullLocator())
        axis.set_ticklabels([_compact(v) for v in values])


def _compact(v: float) -> str:
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= size:
            return f"{v / size:.3g}{suffix}"
    return f"{v:.3g}"


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def _edges(centers: np.ndarray) -> np.ndarray:
    """Cell edges on a log axis: geometric midpoints, extended by half a step at each end."""
    logs = np.log10(centers)
    if logs.size == 1:
        return 10 ** np.array([logs[0] - 0.25, logs[0] + 0.25])
    mids = (logs[1:] + logs[:-1]) / 2
    return 10 ** np.concatenate([[logs[0] - (mids[0] - logs[0])], mids, [logs[-1] + (logs[-1] - mids[-1])]])


def _errorbar(ax, x, y, *, xerr=None, yerr=None, **kwargs) -> None:
    def err(values, bounds):
        if bounds is None:
            return None
        lo = [v - b if b is not None else 0 for v, b in zip(values, bounds[0])]
        hi = [b - v if b is not None else 0 for v, b in zip(values, bounds[1])]
        return [np.maximum(lo, 0), np.maximum(hi, 0)]

    ax.errorbar(x, y, xerr=err(x, xerr), yerr=err(y, yerr), ls="none", ms=8, capsize=3, mec="black", **kwargs)


def _colors(k: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(v) for v in np.linspace(0.0, 0.85, max(k, 1))]


def _is_log(values: pd.Series) -> bool:
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
            x[i] = x[i] * 10 ** shift if logx else x[i] + shift * (np.ptp(x) or 1)
    return x, y


def _cell_key(cell) -> tuple:
    """Sort cells like "N=1000/D=0.2" by their numbers, not as text."""
    import re

    return tuple(float(v) for v in re.findall(r"\d*\.?\d+(?:e[-+]?\d+)?", str(cell))), str(cell)


def _law_text(fit: ScalingLawFit) -> str:
    def fmt(name: str) -> str:
        est = getattr(fit, name)
        ci = "" if est.low is None else f" [{est.low:.3g}, {est.high:.3g}]"
        return f"{name} = {est.value:.3g}{ci}"

    names = ["E"] + (["A", "alpha"] if fit.A is not None else []) + (["B", "beta"] if fit.B is not None else [])
    return ", ".join(fmt(k) for k in names) + f"  ({int(fit.ci * 100)}% CI, {fit.n_boot} bootstrap fits)"
