"""The report's scaling section: the scaling law on the best loss per cell, kept only when its
fit check accepts it, and the compute-optimal frontier from each approach the study supports."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from orchestrator.analysis import (
    ScalingLawFit,
    extrapolation_backtest,
    fit_envelope,
    fit_isoflop,
    fit_power_law,
    fit_scaling_law,
    loss_law_frontier,
)
from orchestrator.analysis.fit_check import check_fit
from orchestrator.report.document import Inputs, Report
from orchestrator.report.scaling_plots import plot_frontiers, plot_isoflop_curves, plot_scaling_fit
from orchestrator.store import names


def scaling(inp: Inputs, report: Report, results: dict) -> None:
    """Scaling law on the best (lowest) validation loss per cell: each cell at its tuned
    regularization. A law that does not describe its data (analysis/fit_check.py) is reported as
    rejected with its reasons: its numbers are kept in results.json for the record, but neither
    logged as metrics nor drawn."""
    usable = inp.usable
    if "min_val_loss" not in usable or not usable["min_val_loss"].notna().any():
        report.skipped["scaling_fit"] = "no validation loss recorded"
        return
    best = per_cell_best(usable, "min_val_loss", minimize=True)
    n, d, loss = (best[c].to_numpy(float) for c in (inp.n_col, inp.d_col, "min_val_loss"))
    convention = "non_embedding" if inp.n_col == names.PARAM_N_PARAMS_NON_EMBEDDING else "total"
    accepted: dict[str, bool] = {}
    law_fit: ScalingLawFit | None = None
    if len(np.unique(n)) >= 2 and len(np.unique(d)) >= 2 and len(loss) >= 6:
        fit: ScalingLawFit = fit_scaling_law(n, d, loss, convention=convention)
        check = check_fit(fit, n, d, loss)
        results["scaling_law"] = {**fit.to_dict(), "check": check.to_dict()}
        accepted["scaling_law"] = check.accepted
        if check.accepted:
            report.draw("scaling_fit", plot_scaling_fit, fit, n, d, loss, inp.out / "scaling_fit.png")
            law_fit = fit
        else:
            report.skipped["scaling_fit"] = f"fit rejected: {check.reason}"
    else:
        report.skipped["scaling_fit"] = (
            f"a law in N and D needs >= 2 distinct N, >= 2 distinct D and >= 6 "
            f"cells; got {len(np.unique(n))} N, {len(np.unique(d))} D, {len(loss)} cells"
        )
    for variable, x in (("N", n), ("D", d)):
        if len(np.unique(x)) >= 3 and len(loss) < 4:  # 3 parameters: E, A, alpha
            report.skipped[f"power_law_{variable}"] = (
                f"a power law in {variable} needs >= 4 cells; got {len(loss)}"
            )
        elif len(np.unique(x)) >= 3:
            one = fit_power_law(
                x, loss, variable=variable, convention=convention if variable == "N" else None
            )
            check = check_fit(one, x if variable == "N" else None, x if variable == "D" else None, loss)
            results[f"power_law_{variable}"] = {**one.to_dict(), "check": check.to_dict()}
            accepted[f"power_law_{variable}"] = check.accepted
    for name, ok in accepted.items():
        if not ok:
            continue
        for k, v in results[name].items():
            if _finite(v):
                report.metric(f"{name}/{k}", v)
    compute_optimal(inp, report, results, law_fit)


def compute_optimal(inp: Inputs, report: Report, results: dict, fit: ScalingLawFit | None) -> None:
    """The compute-optimal frontier, where the study holds what it needs: approach 3 from the
    accepted L(N, D) fit (D as tokens trained: one pass, the LM default); approach 2 from an
    IsoFLOP grid (`grid.flops`); approach 1 from the runs' curves of loss against cumulative FLOPs."""
    budgets = [float(c) for c in ((inp.config.get("grid") or {}).get("flops") or [])]
    usable = inp.usable
    if fit is None and not budgets:
        report.skipped["frontier"] = "neither an IsoFLOP grid (grid.flops) nor an accepted L(N, D) law"
        return
    if not budgets and "flops" in usable:
        total = usable["flops"].astype(float).dropna()
        if len(total):
            budgets = list(np.geomspace(total.min(), total.max(), 5))
    if not budgets:
        report.skipped["frontier"] = "no FLOPs recorded by the runs and no grid.flops"
        return
    per_token = flops_per_token(usable, inp.n_col)
    frontiers = []
    if fit is not None:  # only an accepted L(N, D) gives a frontier
        law = loss_law_frontier(fit, budgets, flops_per_token=per_token)
        results["frontier_loss_law"] = law.to_dict()
        frontiers.append(law)
    if (inp.config.get("grid") or {}).get("flops") and "min_val_loss" in usable and "flops" in usable:
        # Each cell at its tuned learning rate: the best trial of the cell (Porian et al. 2024 tune per size).
        best = per_cell_best(usable, "min_val_loss", minimize=True)
        grid = np.array(budgets)
        run_flops = best["flops"].astype(float).to_numpy()
        budget = grid[np.argmin(np.abs(np.log(run_flops[:, None]) - np.log(grid[None, :])), axis=1)]
        n, loss = best[inp.n_col].to_numpy(float), best["min_val_loss"].to_numpy(float)
        iso = fit_isoflop(n, budget, loss, flops_per_token=per_token)
        results["frontier_isoflop"] = iso.to_dict()
        results["frontier_backtest"] = [
            b.to_dict() for b in extrapolation_backtest(n, budget, loss, flops_per_token=per_token)
        ]
        report.draw("isoflop_curves", plot_isoflop_curves, iso, inp.out / "isoflop_curves.png")
        frontiers.insert(0, iso.frontier)
    curves = inp.curves
    if not curves.empty and {"flops", "val_loss"} <= set(curves.columns):
        c = curves.dropna(subset=["flops", "val_loss"]).merge(usable[["run_id", inp.n_col]], on="run_id")
        if not c.empty:
            env = fit_envelope(
                c["run_id"].to_numpy(),
                c[inp.n_col].to_numpy(float),
                c["flops"].to_numpy(float),
                c["val_loss"].to_numpy(float),
                flops_per_token=per_token,
            )
            results["frontier_envelope"] = env.to_dict()
            frontiers.insert(0, env.frontier)
    if frontiers:
        report.draw("frontier", plot_frontiers, frontiers, inp.out / "frontier.png")
    for key in ("frontier_isoflop", "frontier_loss_law", "frontier_envelope"):
        for k in ("a", "b"):
            v = (results.get(key) or {}).get(k)
            if _finite(v):
                report.metric(f"{key}/{k}", v)


def flops_per_token(usable: pd.DataFrame, n_col: str) -> float:
    """C = K N D with N as the report counts it (n_col): the K the runs' own accounting gives
    (FLOPs / (tokens x N): 6 plus attention and, for non-embedding N, the unembedding), else 6."""
    if {"flops", "tokens"} <= set(usable.columns):
        k = usable["flops"].astype(float) / (usable["tokens"].astype(float) * usable[n_col].astype(float))
        k = k[np.isfinite(k) & (k > 0)]
        if len(k):
            return float(k.median())
    return 6.0


def per_cell_best(runs: pd.DataFrame, metric: str, minimize: bool) -> pd.DataFrame:
    """The run with the best `metric` in each cell: what the fits read (and `grokscale plan`)."""
    ok = runs.dropna(subset=[metric])
    idx = ok.groupby("cell")[metric].idxmin() if minimize else ok.groupby("cell")[metric].idxmax()
    return ok.loc[idx.to_numpy()]


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
