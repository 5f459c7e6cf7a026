"""docs/results/forecast_addition.md: the downstream forecast (Bhagia et al. 2024) of exact match on
3-digit addition, from a real run of sweeps/forecast_addition.yaml.

Makes the study's report from its MLflow store into docs/results/forecast_addition/ (plots and
results.json), then the page: each held-out size's forecast from the smaller ones against what it
reached, beside the direct sigmoid over log N, and the claims table. Run from the repository root:
    .venv/bin/python docs/results/forecast_page.py --store /path/to/run/mlflow.db [--minutes M]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import numpy as np

from orchestrator.analysis.downstream import Evaluations
from orchestrator.analysis.forecast_backtest import MIN_FIT_SIZES, backtest_forecasts
from orchestrator.report.document import chance_level
from orchestrator.report.report import build_report
from orchestrator.store.results import load_results

HERE = Path(__file__).resolve().parent
OUT = HERE / "forecast_addition"
TRUST_VERDICT = {
    True: "**yes**: every forecast that missed was flagged before the truth was known",
    False: "**no**: a forecast called trustworthy missed",
}
KEEP = ("forecast.png", "metric_vs_n.png", "emergence_heatmap.png", "results.json")


def rows(backtest: dict) -> list[str]:
    out = ["| N | D | forecast [90%] | trusted? | direct sigmoid | reached |", "|---|---|---|---|---|---|"]
    for p in sorted(backtest["predictions"], key=lambda p: (p["n"], p["d"])):
        trusted = "yes" if p["predictable"] else f"no: {p['reason'].split(':')[0]}"
        direct = "-" if p["direct"] is None else f"{p['direct']:.3f}"
        out.append(
            f"| {p['n']:,.0f} | {p['d']:,.0f} | {p['metric']:.3f} [{p['metric_low']:.3f}, "
            f"{p['metric_high']:.3f}] | {trusted} | {direct} | {p['actual']:.3f} |"
        )
    return out


def summary(backtest: dict) -> dict:
    preds = backtest["predictions"]
    chain = [abs(p["error"]) for p in preds]
    direct = [abs(p["direct_error"]) for p in preds if p["direct_error"] is not None]
    return {
        "n": len(preds),
        "chain_mae": float(np.mean(chain)),
        "direct_mae": float(np.mean(direct)) if direct else None,
        "covered": sum(p["covered"] for p in preds),
        "trusted": sum(p["predictable"] for p in preds),
        "trusted_covered": sum(p["covered"] for p in preds if p["predictable"]),
        "chain_max": float(np.max(chain)),
        "flagged_missed": sum(not p["covered"] for p in preds if not p["predictable"]),
        "unflagged_missed": sum(not p["covered"] for p in preds if p["predictable"]),
    }


def below_the_jump(res) -> dict:
    """The backtest the page is about: fitted on the three smallest widths only (every one below
    the jump in exact match), the four larger predicted; the report itself holds out at most half."""
    runs = res.runs[res.runs["status"] == "completed"]
    curves = res.curves.merge(runs[["run_id", "n_params", "n_train"]], on="run_id").dropna(
        subset=["val_loss", "val_acc"]
    )
    ev = Evaluations(
        curves["n_params"].to_numpy(float),
        curves["n_train"].to_numpy(float),
        curves["val_loss"].to_numpy(float),
        curves["val_acc"].to_numpy(float),
        curves["step"].to_numpy(float),
    )
    sizes = runs["n_params"].nunique()
    backtests = backtest_forecasts(
        runs["n_params"].to_numpy(float),
        runs["n_train"].to_numpy(float),
        runs["val_loss"].to_numpy(float),
        runs["val_acc"].to_numpy(float),
        ev,
        chance=chance_level(res.config),
        max_holdout=sizes - MIN_FIT_SIZES,
    )
    return backtests[-1].to_dict()


def page(results: dict, widest: dict, minutes: float | None) -> str:
    fc = results["forecast"]
    s = summary(widest)
    sig = fc["fit"]["sigmoid"]
    law = fc["fit"]["loss_law"]
    took = f" ({minutes:.0f} min on the 2-core machine shared with other work)" if minutes else ""
    direct = "none could be fitted" if s["direct_mae"] is None else f"{s['direct_mae']:.3f}"
    better = s["direct_mae"] is not None and s["chain_mae"] < s["direct_mae"]
    lines = [
        "# Forecasting exact match on 3-digit addition through the loss",
        "",
        "Made by `docs/results/forecast_page.py` from a real "
        f"`grokscale run sweeps/forecast_addition.yaml`{took}: {results['runs']} runs, 7 widths (0.6k-49k "
        "parameters) x 3 training-set sizes, one run each, 3,000 steps, 12 evaluations a run.",
        "",
        "The method (Bhagia et al. 2024): step 1 fits the held-out loss L(N, D) = E + A/N^alpha + B/D^beta "
        "over the runs' final losses; step 2 fits exact match as a sigmoid of the loss over every evaluation "
        "of the same runs; chained, they forecast exact match at a size not trained. The baseline is a "
        "sigmoid of exact match fitted directly over log N to the same small runs' final values.",
        "",
        f"## Forecast of the {widest['holdout']} largest widths from the {len(widest['fit_sizes'])} smallest",
        "",
        "Exact match jumps between 4,092 parameters (0.10) and 6,992 (1.00): the three smallest widths are "
        "all below the jump. The report's own backtests hold out at most half the sizes (its `forecast` "
        "section and plot); this page holds out every size but the three smallest "
        "([forecast_addition/below_the_jump.json](forecast_addition/below_the_jump.json)).",
        "",
        f"Fitted on N = {', '.join(f'{n:,.0f}' for n in widest['fit_sizes'])}; every forecast made before "
        "looking at the larger runs.",
        "",
        *rows(widest),
        "",
        "## Claims",
        "",
        "| claim | what grokscale measured | agrees? |",
        "|---|---|---|",
        "| Bhagia et al. 2024: the two-step chain predicts a larger model's accuracy from small ones (to "
        "about 2 points on four of their tasks, about 7 on four others) | mean absolute error "
        f"{s['chain_mae']:.3f} over {s['n']} held-out runs (worst {s['chain_max']:.3f}); {s['covered']} of "
        f"{s['n']} inside their 90% intervals | {'**yes**' if s['chain_mae'] <= 0.07 else '**no**'}: within "
        f"their worse tasks' error{'' if s['chain_mae'] <= 0.07 else ' is not met'} |",
        "| This repository's question: does the chain forecast the jump that a direct sigmoid of exact match "
        f"over N on the small models cannot? | chain {s['chain_mae']:.3f} against direct {direct} (mean "
        f"absolute error) | {'**yes**' if better else '**no**'}: "
        f"{'the chain is closer' if better else 'the direct fit is as close or closer here'} |",
        f"| Whether a forecast may be trusted is decided from the small runs alone | {s['trusted']} of "
        f"{s['n']} called trustworthy, {s['trusted_covered']} of those inside their intervals; of the "
        f"{s['n'] - s['trusted']} flagged beforehand, {s['flagged_missed']} missed their interval | "
        f"{TRUST_VERDICT[s['unflagged_missed'] == 0]} |",
        "",
        "## What this shows",
        "",
        "Above the jump the task is solved: the held-out loss falls from about 0.6 nats at 4,092 parameters "
        "to 0.001 at 6,992. A law L(N, D) = E + A/N^alpha + B/D^beta fitted below the jump has no way to see "
        "that collapse coming, so the chain carries the small models' slow decline forward and forecasts "
        "exact match near 0.1 where the runs reached 1.0. The small runs say so in advance: step 1 is "
        "rejected (see its reasons below), so no forecast is called trustworthy. The direct sigmoid over N "
        "does better here only because the third width, at 0.10, already sits on the rise. Bhagia et al.'s "
        "tasks improve smoothly in loss; an algorithmic task that is either solved or not, at this scale, is "
        "the case their method does not cover, and grokscale's checks flag it rather than forecast it.",
        "",
        "## The fits (the report's, over every run)",
        "",
        f"- Step 2 (every evaluation of the fitted runs): {sig['form']}, a = {sig['a']:.3g}, k = "
        f"{sig['k']:.3g}, L0 = {sig['L0']:.3g}, b = "
        f"{sig['b']:.3g}{' (fixed at chance)' if sig['b_fixed'] else ''}; R^2 {sig['r2']:.3f}; "
        f"{'accepted' if sig['accepted'] else 'rejected: ' + '; '.join(sig['reasons'])}.",
        f"- Step 1 on every run: E = {law['E']:.3g}, A = {law['A']:.3g}, alpha = {law['alpha']:.3g}, "
        f"B = {law['B']:.3g}, beta = {law['beta']:.3g}; "
        f"{'accepted' if law.get('accepted') else 'rejected: ' + '; '.join(law.get('reasons') or [])}.",
        "",
        "![The forecast of the largest widths from the smaller ones](forecast_addition/forecast.png)",
        "",
        "Raw numbers: [forecast_addition/results.json](forecast_addition/results.json) (`forecast`: the "
        "fits, every backtest and the forecasts ahead).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", required=True, help="the run's MLflow SQLite file")
    ap.add_argument("--minutes", type=float, help="the run's wall time, for the page")
    args = ap.parse_args()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    res = load_results(f"sqlite:///{Path(args.store).resolve()}", "forecast_addition")
    work = OUT.with_name("forecast_addition_report")
    report = build_report(res, work)
    OUT.mkdir(exist_ok=True)
    for name in KEEP:
        if (work / name).exists():
            shutil.copy(work / name, OUT / name)
    shutil.rmtree(work)
    results = json.loads((OUT / "results.json").read_text())
    widest = below_the_jump(res)
    (OUT / "below_the_jump.json").write_text(json.dumps(widest, indent=2))
    (HERE / "forecast_addition.md").write_text(page(results, widest, args.minutes))
    print(f"wrote {HERE / 'forecast_addition.md'}; plots: {sorted(report.plots)}")


if __name__ == "__main__":
    main()
