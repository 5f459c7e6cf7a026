"""The report's predictions section: the critical data size D*(N) as a power law, predicted at
each model size from the smaller ones (analysis/critical_data.py), and each run's
generalization step predicted at its memorization step by its decay clock
(analysis/grokking_time.py), both backtested against what the study measured.

Written to `predictions/predictions.json` and `predictions/predictions.md` in the report folder,
so they reach the parent run under the `report/predictions/` artifact path; the backtest errors
are also logged as `report/predictions/...` metrics (a law refused is not)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from orchestrator.analysis.critical_data import (
    CriticalDataBacktest,
    CriticalDataLaw,
    critical_data_backtest,
    critical_data_sizes,
    fit_critical_data,
)
from orchestrator.analysis.grokking_time import StepBacktest, generalization_backtest
from orchestrator.report.document import Inputs, Report
from orchestrator.report.summary import json_default
from orchestrator.store import names

FOLDER = "predictions"
LITERATURE = (
    "Huang et al. 2024 (Fig. 1) draw D* shrinking as models grow; Zhu et al. 2024 measure it growing; "
    "Varma et al. 2023 define it over D and weight decay, not N"
)


def predictions(inp: Inputs, report: Report, results: dict, phases: pd.DataFrame) -> None:
    """Both predictions and their backtests, into results["predictions"] and the predictions folder."""
    out: dict = {"critical_data": critical_data(inp), "generalization_step": generalization_step(inp, phases)}
    results["predictions"] = out
    folder = inp.out / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "predictions.json").write_text(json.dumps(out, indent=2, default=json_default))
    (folder / "predictions.md").write_text(markdown(out, inp))
    law, steps = out["critical_data"], out["generalization_step"]
    if law.get("law") and law["law"].get("exponent") is not None:
        report.metric("predictions/D_star/exponent", law["law"]["exponent"])
    for b in law.get("backtest") or []:
        if b.get("error") is not None:
            report.metric(f"predictions/D_star/backtest_error/N_{b['n']:g}", b["error"])
    for key in (
        "median_abs_error",
        "baseline_median_abs_error",
        "late_median_abs_error",
        "late_baseline_median_abs_error",
    ):
        if steps.get(key) is not None:
            report.metric(f"predictions/generalization_step/{key}", steps[key])


def critical_data(inp: Inputs) -> dict:
    """D*(N) brackets, the law through them, its backtest and its prediction at the next size."""
    usable = inp.usable
    if usable.empty or inp.n_col not in usable or inp.d_col not in usable:
        return {"reason": "no completed runs with N and D"}
    points = critical_data_sizes(
        usable[inp.n_col].to_numpy(float), usable[inp.d_col].to_numpy(float), generalized(usable)
    )
    law: CriticalDataLaw = fit_critical_data(points)
    backtests: tuple[CriticalDataBacktest, ...] = critical_data_backtest(points)
    sizes = sorted(p.n for p in points)
    out: dict = {
        "d_col": inp.d_col,
        "n_col": inp.n_col,
        "points": [p.to_dict() for p in points],
        "law": law.to_dict(),
        "backtest": [b.to_dict() for b in backtests],
        "literature": LITERATURE,
    }
    if len(sizes) >= 2:  # the next size of a geometric grid: the step between the last two, once more
        nxt = sizes[-1] ** 2 / sizes[-2]
        pred = law.predict(nxt)
        out["next"] = {
            "n": nxt,
            "predicted": None if pred is None else pred.value,
            "predicted_low": None if pred is None else pred.low,
            "predicted_high": None if pred is None else pred.high,
        }
    if not backtests:
        out["backtest_reason"] = (
            f"{len(sizes)} model size(s): a backtest predicts a size from at least 2 smaller "
            f"ones with D* bracketed"
        )
    return out


def generalized(runs: pd.DataFrame) -> np.ndarray:
    """Whether each run generalized: its trainer recorded a generalization step, or its best
    validation accuracy reached its own threshold."""
    gen = (
        runs["generalization_step"].notna().to_numpy()
        if "generalization_step" in runs
        else np.zeros(len(runs), bool)
    )
    if "max_val_acc" in runs and "val_threshold" in runs:
        gen = gen | (runs["max_val_acc"].astype(float) >= runs["val_threshold"].astype(float)).to_numpy()
    return gen


def generalization_step(inp: Inputs, phases: pd.DataFrame) -> dict:
    """The decay-clock prediction of each run's generalization step, backtested leave-one-out."""
    if phases.empty or "phase" not in phases:
        return {"reason": "no curves recorded: no memorization step to predict from"}
    train = dict(inp.config.get("train") or {})
    if {"tokens", "epochs"} & set(train):
        return {
            "reason": "the study sets its length in tokens or epochs: each run's steps, and so its decay "
            "clock, are not in the runs table"
        }
    table = phases.copy()
    for col in (
        "memorization_step",
        "generalization_step",
    ):  # the curve's events, under the run's own thresholds
        if f"{col}_curve" in table:
            table[col] = table[f"{col}_curve"]
    clocks, failed = run_clocks(table, train)
    pools = ("cell", inp.d_col) if inp.d_col in table else ("cell",)  # a cell's own runs, then those at its D
    bt: StepBacktest = generalization_backtest(table, clocks, pools=pools)
    out = bt.to_dict()
    if failed:
        out["clock_errors"] = failed
    return out


def run_clocks(runs: pd.DataFrame, train: dict) -> tuple[dict, dict]:
    """Each run's decay clock (orchestrator/sweep/stopping/clock.py) at every evaluation of its
    whole budget, from the study's `train:` with the run's searched values; and, per run whose
    train config does not validate, why."""
    from orchestrator.sweep.stopping.clock import decay_clock
    from trainers.spec import TrainConfig

    searched = [c for c in runs.columns if c.startswith(f"{names.PARAM_SEARCHED_PREFIX}train.")]
    clocks, failed = {}, {}
    for _, r in runs.iterrows():
        fields = {
            **train,
            **{
                c.removeprefix(f"{names.PARAM_SEARCHED_PREFIX}train."): r[c]
                for c in searched
                if not (isinstance(r[c], float) and math.isnan(r[c]))
            },
        }
        try:
            tc = TrainConfig(**fields)
        except (ValueError, TypeError) as err:
            failed[str(r["run_id"])] = str(err).splitlines()[0]
            continue
        steps = np.unique(np.r_[np.arange(0, tc.steps, tc.eval_every), tc.steps])
        clocks[str(r["run_id"])] = (steps.astype(float), np.array([decay_clock(tc, int(s)) for s in steps]))
    return clocks, failed


def markdown(out: dict, inp: Inputs) -> str:
    """The predictions as the report's markdown: tables of brackets, backtests and steps."""
    lines = ["# Predictions, backtested", ""]
    cd = out["critical_data"]
    lines += [f"## Critical data size D*(N) ({inp.d_col} over {inp.n_col})", ""]
    if "points" not in cd:
        lines += [cd.get("reason", ""), ""]
    else:
        lines += ["| N | D* bracket | censoring | note |", "|---|---|---|---|"]
        for p in cd["points"]:
            lines.append(f"| {p['n']:,.0f} | {bracket_text(p)} | {p['censoring']} | {p['note'] or ''} |")
        law = cd["law"]
        lines.append("")
        if law["exponent"] is None:
            lines.append(f"Power law: refused, {law['reason']}.")
        else:
            lines.append(
                f"Power law: D* ∝ N^{law['exponent']:.3g} (every line through the brackets: "
                f"[{_g(law['exponent_low'])}, {_g(law['exponent_high'])}]); D* {law['direction']} with N. "
                f"Literature: {cd['literature']}."
            )
        lines += [
            "",
            "| held-out N | fitted on N | predicted D* [interval] | observed bracket | error | agrees |",
            "|---|---|---|---|---|---|",
        ]
        for b in cd["backtest"]:
            fitted = ", ".join(f"{n:,.0f}" for n in b["fitted_sizes"])
            pred = (
                f"{_g(b['predicted'])} [{_g(b['predicted_low'])}, {_g(b['predicted_high'])}]"
                if b["predicted"] is not None
                else f"none: {b['reason']}"
            )
            err = "" if b["error"] is None else f"{b['error']:+.1%}"
            if b["agrees"] is None:
                agrees = ""
            elif b["agrees"]:
                agrees = "yes"
            else:
                agrees = "no"
            lines.append(
                f"| {b['n']:,.0f} | {fitted} | {pred} | {bracket_text(b['observed'])} | {err} | {agrees} |"
            )
        if not cd["backtest"]:
            lines.append(f"| | | {cd.get('backtest_reason', '')} | | | |")
        nxt = cd.get("next")
        if nxt:
            pred = (
                "none (no law)"
                if nxt["predicted"] is None
                else f"{_g(nxt['predicted'])} [{_g(nxt['predicted_low'])}, {_g(nxt['predicted_high'])}]"
            )
            lines += ["", f"Next model size N = {nxt['n']:,.0f} (not trained): D* predicted {pred}."]
    gs = out["generalization_step"]
    lines += ["", "## Generalization step, predicted at the memorization step by the decay clock", ""]
    if "predictions" not in gs:
        lines += [gs.get("reason", ""), ""]
        return "\n".join(lines) + "\n"
    lines.append(
        f"Scored runs (generalized, predicted): {gs['n_scored']}; median |error| clock "
        f"{_pct(gs['median_abs_error'])}, baseline (median step of the pool) "
        f"{_pct(gs['baseline_median_abs_error'])}; outcome inside the interval "
        f"{_pct(gs['within_interval'])}; predicted to generalize but never did: {gs['missed']}; predicted "
        f"not to but did: {gs['surprised']}." + (f" {gs['reason']}." if gs.get("reason") else "")
    )
    if gs.get("n_immediate"):
        lines.append(
            f"\n{gs['n_immediate']} of the scored runs generalized at the evaluation at which they "
            'memorized: the clock\'s "now" is trivially right for them. '
            f"Over the {gs['n_scored'] - gs['n_immediate']} that generalized later: clock "
            f"{_pct(gs.get('late_median_abs_error'))}, baseline "
            f"{_pct(gs.get('late_baseline_median_abs_error'))}."
        )
    lines += [
        "",
        "| run | cell | memorized at | predicted [interval] | observed | error | baseline error | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in gs["predictions"]:
        if p["predicted"] is None and p["reason"]:
            pred = ""
        elif p["predicted"] is None:
            pred = "not within budget"
        else:
            pred = f"{p['predicted']:,.0f} [{_g(p['low'])}, {_g(p['high'])}]"
        obs = "never" if p["observed"] is None else f"{p['observed']:,.0f}"
        err = "" if p["error"] is None else f"{p['error']:+.1%}"
        base = "" if p["baseline_error"] is None else f"{p['baseline_error']:+.1%}"
        note = p["reason"] or (f"pool: {p['pool']} ({p['n_pool']} runs)" if p["pool"] else "")
        lines.append(
            f"| {p['run_id'][:8]} | {p['group']} | {_g(p['memorization_step'])} | {pred} | {obs} | {err} | "
            f"{base} | {note} |"
        )
    return "\n".join(lines) + "\n"


def bracket_text(p: dict, name: str = "") -> str:
    """A critical data size's bracket: "<= high", "> low" or "(low, high]"; with a name (the
    results pages), "D* <= high", "D* > low" or "low < D* <= high"."""
    low, high = _g(p["low"]), _g(p["high"])
    if p["censoring"] == "left":
        return f"{name} <= {high}".lstrip()
    if p["censoring"] == "right":
        return f"{name} > {low}".lstrip()
    return f"{low} < {name} <= {high}" if name else f"({low}, {high}]"


def _g(v) -> str:
    return "unbounded" if v is None else f"{v + 0.0:,.4g}"  # + 0.0: no "-0"


def _pct(v) -> str:
    return "n/a" if v is None else f"{v:.1%}"
