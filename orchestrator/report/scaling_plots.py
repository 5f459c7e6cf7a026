"""Figures of scaling: the fitted law against its data, and the compute-optimal analysis, drawn
from `orchestrator.analysis` results only.

`plot_scaling_fit`: the law L(N, D) (or L(N), L(D)) over the runs, and its residuals.
`plot_isoflop_curves`: each budget's runs, its fitted parabola in ln N and its minimum.
`plot_frontiers`: N_opt(C) and tokens per parameter from each approach, side by side on shared
axes, so a reader sees at once whether approaches 1-3 agree. As in `plots.py`: matplotlib's
object API on an Agg canvas; each returns the path written, or None when there is nothing to draw.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.colors import LogNorm, Normalize
from matplotlib.lines import Line2D
from matplotlib.ticker import NullFormatter

from orchestrator.analysis.frontier import ComputeOptimalFrontier
from orchestrator.analysis.isoflop import IsoFlopFit
from orchestrator.analysis.scaling import ScalingLawFit
from orchestrator.report.plots import errorbar, new_figure, save

APPROACH_LABELS = {
    "envelope": "approach 1: envelope of training curves",
    "isoflop": "approach 2: IsoFLOP minima",
    "loss_law": "approach 3: from L(N, D)",
}
APPROACH_STYLE = {"envelope": ("C0", "s"), "isoflop": ("C3", "o"), "loss_law": ("C2", "D")}


def plot_scaling_fit(
    fit: ScalingLawFit,
    n: np.ndarray | None,
    d: np.ndarray | None,
    loss: np.ndarray,
    path: str | Path,
    *,
    title: str | None = None,
) -> Path | None:
    """The fitted law against the data: iso-loss contours over (N, D) with the runs on them
    (a loss curve for a one-variable law), and the residuals log L - log L_fit."""
    loss = np.asarray(loss, dtype=float)
    if loss.size == 0:
        return None
    n = None if n is None else np.asarray(n, dtype=float)
    d = None if d is None else np.asarray(d, dtype=float)
    pred = fit.predict(n, d)
    resid = np.log(loss) - np.log(pred)
    fig = new_figure(13, 5.5)
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
        ax.legend(
            handles=[
                Line2D([], [], color="gray", label="iso-loss contours of the fit (labelled, nats)"),
                Line2D(
                    [],
                    [],
                    marker="o",
                    ls="",
                    color="gray",
                    markeredgecolor="black",
                    label="runs, colored by observed loss",
                ),
            ],
            fontsize=8,
            loc="upper right",
        )
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
        sc = axr.scatter(
            rx,
            resid,
            c=rc,
            cmap="plasma",
            norm=LogNorm() if rc.max() > rc.min() else None,
            s=16,
            edgecolor="black",
            lw=0.3,
        )
        fig.colorbar(sc, ax=axr, label=rc_label + ", log color scale")
    else:
        axr.scatter(rx, resid, color="C0", s=16, edgecolor="black", lw=0.3)
    axr.axhline(0, color="black", lw=0.8)
    axr.set_xscale("log")
    axr.set_xlabel(rx_label)
    axr.set_ylabel("residual: log L - log L_fit (natural log)")
    axr.set_title(f"residuals: RMS {np.sqrt(np.mean(resid**2)):.3g}, {len(resid)} runs", fontsize=9)
    axr.grid(alpha=0.3)
    fig.suptitle(
        (title or f"Scaling law {fit.law} (Hoffmann et al. 2022, approach 3)")
        + "\n"
        + _scaling_law_text(fit),
        fontsize=11,
    )
    return save(fig, path)


def plot_isoflop_curves(fit: IsoFlopFit, path: str | Path, *, title: str | None = None) -> Path | None:
    """Loss against N at each budget (one color per budget), the fitted parabola over the sampled
    sizes and its minimum with the N_opt interval; a hollow marker: a minimum not trusted."""
    budgets = [b for b in fit.budgets if b.n]
    if not budgets:
        return None
    fig = new_figure(8, 5.5)
    ax = fig.add_subplot()
    flops = np.array([b.flops for b in budgets])
    norm = LogNorm(vmin=flops.min(), vmax=max(flops.max(), flops.min() * 1.001))
    cmap = _cmap()
    for b in budgets:
        color = cmap(norm(b.flops))
        ax.scatter(b.n, b.loss, color=color, s=24, edgecolor="black", lw=0.4, zorder=3)
        if b.coef is not None:
            x = np.linspace(np.log(min(b.n)) - 0.15, np.log(max(b.n)) + 0.15, 100)
            ax.plot(np.exp(x), b.coef[0] + b.coef[1] * x + b.coef[2] * x * x, color=color, lw=1.2)
        if b.N_opt is not None:
            face = color if b.trusted else "white"
            errorbar(
                ax,
                [b.N_opt.value],
                [b.L_opt.value],
                xerr=([b.N_opt.low], [b.N_opt.high]),
                marker="*",
                color=color,
                mfc=face,
                zorder=4,
            )
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    trusted = [x for b in budgets for x in b.n]
    ax.set_xlim(min(trusted) / 4, max(trusted) * 4)  # an untrusted minimum's interval runs off the edge
    ax.set_xlabel("N: parameters (count), log scale")
    ax.set_ylabel("final loss (nats)")
    sm = _scalar_mappable(cmap, norm)
    fig.colorbar(sm, ax=ax, label="compute budget C (FLOPs), log color scale")
    ax.legend(
        handles=[
            Line2D([], [], marker="o", ls="", color="gray", mec="black", label="runs"),
            Line2D([], [], color="gray", label="parabola in ln N"),
            Line2D(
                [],
                [],
                marker="*",
                ls="",
                color="gray",
                mec="black",
                ms=10,
                label=f"minimum, {int(fit.frontier.ci * 100)}% interval of N_opt",
            ),
            Line2D(
                [],
                [],
                marker="*",
                ls="",
                color="gray",
                mfc="white",
                mec="black",
                ms=10,
                label="minimum not trusted (e.g. not bracketed)",
            ),
        ],
        fontsize=8,
    )
    ax.grid(alpha=0.3)
    ax.set_title(
        title or f"IsoFLOP profiles (Hoffmann et al. 2022, approach 2)\n{_frontier_text(fit.frontier)}",
        fontsize=10,
    )
    return save(fig, path)


def plot_frontiers(
    frontiers: Sequence[ComputeOptimalFrontier], path: str | Path, *, title: str | None = None
) -> Path | None:
    """Left: N_opt against C from each approach (its points with intervals, its power law as a
    line over the budgets drawn). Right: the tokens per parameter D_opt / N_opt, the same way."""
    frontiers = [f for f in frontiers if f.points or f.a is not None]
    if not frontiers:
        return None
    budgets = np.array([p.flops for f in frontiers for p in f.points if p.N_opt is not None])
    if budgets.size == 0:
        return None
    fig = new_figure(13, 5.5)
    ax_n, ax_t = fig.subplots(1, 2)
    c = np.geomspace(budgets.min() / 2, budgets.max() * 2, 100)
    values: dict[str, list[float]] = {"n": [], "t": []}  # what the y axes must show
    for f in frontiers:
        color, marker = APPROACH_STYLE.get(f.approach, ("C7", "o"))
        label = APPROACH_LABELS.get(f.approach, f.approach)
        if f.a is not None:
            n = f.n_opt(c)
            values["n"] += list(n)
            values["t"] += list(c / (f.flops_per_token * n * n))
            ax_n.plot(c, n, color=color, lw=1.3, label=f"{label}: a = {_est(f.a)}")
            ax_t.plot(
                c, c / (f.flops_per_token * n * n), color=color, lw=1.3, label=f"{label}: b = {_est(f.b)}"
            )
        else:
            ax_n.plot([], [], color=color, label=textwrap.fill(f"{label}: no power law ({f.reason})", 70))
        for p in f.points:
            if p.N_opt is None:
                continue
            face = color if p.trusted else "white"
            values["n"].append(p.N_opt.value)
            values["t"].append(p.tokens_per_param.value)
            errorbar(
                ax_n,
                [p.flops],
                [p.N_opt.value],
                yerr=([p.N_opt.low], [p.N_opt.high]),
                marker=marker,
                color=color,
                mfc=face,
            )
            errorbar(
                ax_t,
                [p.flops],
                [p.tokens_per_param.value],
                yerr=([p.tokens_per_param.low], [p.tokens_per_param.high]),
                marker=marker,
                color=color,
                mfc=face,
            )
    for ax, ylabel, key in (
        (ax_n, "N_opt: compute-optimal parameters (count), log scale", "n"),
        (ax_t, "D_opt / N_opt: tokens per parameter, log scale", "t"),
    ):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels ran into each other
        shown = [v for v in values[key] if v and np.isfinite(v) and v > 0]
        if shown:  # the estimates set the range; an interval spanning decades runs off the edge
            ax.set_ylim(min(shown) / 10, max(shown) * 10)
        ax.set_xlabel("compute budget C (FLOPs), log scale")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # no fitted line (every approach refused): no legend
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14))
    ax_t.axhline(20, color="gray", ls=":", lw=1)  # Hoffmann et al.'s ~20 tokens per parameter
    ax_t.annotate("20 tokens/param (Chinchilla)", (c[0], 20), fontsize=8, color="gray", va="bottom")
    k = sorted({f.flops_per_token for f in frontiers})
    fig.suptitle(
        title
        or f"Compute-optimal frontier, C = {'/'.join(f'{v:g}' for v in k)}*N*D (hollow: a point not trusted)",
        fontsize=11,
    )
    return save(fig, path)


def _scaling_law_text(fit: ScalingLawFit) -> str:
    def fmt(name: str) -> str:
        est = getattr(fit, name)
        ci = "" if est.low is None else f" [{est.low:.3g}, {est.high:.3g}]"
        return f"{name} = {est.value:.3g}{ci}"

    names = (
        ["E"] + (["A", "alpha"] if fit.A is not None else []) + (["B", "beta"] if fit.B is not None else [])
    )
    return ", ".join(fmt(k) for k in names) + f"  ({int(fit.ci * 100)}% CI, {fit.n_boot} bootstrap fits)"


def _est(est) -> str:
    return f"{est.value:.3g}" + ("" if est.low is None else f" [{est.low:.3g}, {est.high:.3g}]")


def _frontier_text(f: ComputeOptimalFrontier) -> str:
    if f.a is None:
        return f"no power law: {f.reason}"
    return (
        f"N_opt = G (C/{f.flops_per_token:g})^a, a = {_est(f.a)}, G = {_est(f.G)}; "
        f"{f.n_fit} budgets, {int(f.ci * 100)}% intervals"
    )


def _cmap():
    from matplotlib import colormaps

    return colormaps["viridis"]


def _scalar_mappable(cmap, norm):
    from matplotlib.cm import ScalarMappable

    return ScalarMappable(norm=norm, cmap=cmap)
