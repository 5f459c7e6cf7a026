"""The report's downstream forecast (Bhagia et al. 2024): the task's accuracy at sizes not trained,
through the loss. It applies to a study whose runs record a held-out loss and an accuracy at
every evaluation (`val_loss`, `val_acc`: addition's exact match, a grokking task's accuracy), not
to a language model's next-token accuracy.

- Backtests: each of the largest sizes predicted from the smaller ones only (analysis/
  forecast_backtest.py), the truth against the 90% interval, beside a direct sigmoid of the
  accuracy over log N on the same small runs.
- Forecasts: from every run, at the next size up the grid (the largest N times the grid's last
  ratio) at each D, and at the targets the study lists in `report.forecast`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from orchestrator.analysis.downstream import Evaluations, forecast_downstream
from orchestrator.analysis.forecast_backtest import Backtest, backtest_forecasts
from orchestrator.report.document import Inputs, Report
from orchestrator.report.plots import errorbar, new_figure, save

LOSS, METRIC = "val_loss", "val_acc"
MIN_SIZES = 4  # one held out, three to fit on


def forecast(inp: Inputs, report: Report, results: dict) -> None:
    runs = inp.usable.dropna(subset=[c for c in (LOSS, METRIC, inp.n_col, inp.d_col) if c in inp.usable])
    if runs[inp.n_col].nunique() < MIN_SIZES:
        report.skipped["forecast"] = (
            f"a forecast backtested on held-out sizes needs {MIN_SIZES} or more model "
            f"sizes; this study has {runs[inp.n_col].nunique()}"
        )
        return
    curves = inp.curves.merge(runs[["run_id", inp.n_col, inp.d_col]], on="run_id").dropna(
        subset=[LOSS, METRIC]
    )
    ev = Evaluations(
        curves[inp.n_col].to_numpy(float),
        curves[inp.d_col].to_numpy(float),
        curves[LOSS].to_numpy(float),
        curves[METRIC].to_numpy(float),
        curves["step"].to_numpy(float),
    )
    n, d = runs[inp.n_col].to_numpy(float), runs[inp.d_col].to_numpy(float)
    loss, metric = runs[LOSS].to_numpy(float), runs[METRIC].to_numpy(float)
    backtests = backtest_forecasts(n, d, loss, metric, ev, chance=inp.chance)
    sizes = np.unique(n)
    targets = [(sizes[-1] * sizes[-1] / sizes[-2], dv) for dv in np.unique(d)]
    listed = (inp.config.get("report") or {}).get("forecast") or []
    targets += [(float(t["n"]), float(t["d"])) for t in listed]
    ahead = forecast_downstream(n, d, loss, ev, targets, chance=inp.chance)
    results["forecast"] = {
        "fit": ahead.to_dict(),
        "predictions": [p.to_dict() for p in ahead.predictions],
        "backtests": [b.to_dict() for b in backtests],
    }
    for b in backtests:
        trusted = [h for h in b.held_out if h.prediction.predictable]
        if trusted:
            report.metric(
                f"forecast/holdout_{b.holdout}/coverage", sum(h.covered for h in trusted) / len(trusted)
            )
    report.draw(
        "forecast",
        plot_backtest,
        backtests[-1],
        runs,
        inp.out / "forecast.png",
        n_col=inp.n_col,
        d_col=inp.d_col,
    )


def plot_backtest(
    backtest: Backtest, runs: pd.DataFrame, path: str | Path, *, n_col: str, d_col: str
) -> Path | None:
    """The accuracy over N per D: every run's, the chained forecast of the held-out sizes (with its
    90% interval; open markers where the small runs said it may not be trusted) and the direct
    sigmoid's, both fitted on the sizes left of the dotted line. Open squares: the small runs said
    the forecast may not be trusted (results.json gives each reason)."""
    fig = new_figure(8, 5)
    ax = fig.subplots()
    for i, (dv, part) in enumerate(runs.groupby(d_col)):
        color = f"C{i}"
        part = part.sort_values(n_col)
        ax.plot(
            part[n_col],
            part[METRIC],
            color=color,
            marker=".",
            lw=1,
            label=f"D = {dv:g}: what the runs reached",
        )
        held = sorted((h for h in backtest.held_out if h.prediction.d == dv), key=lambda h: h.prediction.n)
        if not held:
            continue
        xs = [h.prediction.n for h in held]
        errorbar(
            ax,
            xs,
            [h.prediction.metric.value for h in held],
            yerr=([h.prediction.metric.low for h in held], [h.prediction.metric.high for h in held]),
            fmt="s",
            color=color,
            mec=color,
            mfc=color if all(h.prediction.predictable for h in held) else "white",
            label=f"D = {dv:g}: chained forecast (90%)",
        )
        if all(h.direct is not None for h in held):
            ax.plot(
                xs, [h.direct for h in held], color=color, ls="--", label=f"D = {dv:g}: direct sigmoid in N"
            )
    ax.axvline(max(backtest.fit_sizes), color="gray", ls=":", lw=1)
    ax.set_ylim(-0.05, 1.05)  # an accuracy; an interval's tail past 1 is the added residual noise
    ax.set_xscale("log")
    ax.set_xlabel(f"N: parameters ({n_col}), log scale")
    ax.set_ylabel(f"{METRIC} (final)")
    ax.set_title(f"Forecast of the {backtest.holdout} largest sizes from the smaller ones")
    ax.legend(fontsize=7)
    return save(fig, path)
