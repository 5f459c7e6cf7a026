"""The report's sections on emergence, grokking, the mirage check and regularization: each
reads the Inputs, draws its figures into the Report and records its numbers in `results`."""

from __future__ import annotations

import pandas as pd

from orchestrator.analysis import CriticalSizes, cell_regularization, critical_sizes, curve_events, mirage_checks
from orchestrator.report.document import Inputs, Report
from orchestrator.report.grokking_plots import plot_grokking_curves, plot_phase_diagram
from orchestrator.report.plots import plot_emergence_heatmap, plot_metric_vs_scale, plot_mirage
from orchestrator.store import names
from orchestrator.store.results import THRESHOLDS


def emergence(inp: Inputs, report: Report, results: dict) -> CriticalSizes | None:
    """Where the metric leaves chance, over N at each D and over D at each N."""
    if inp.usable.empty:
        report.skipped["emergence"] = "no completed runs"
        return None
    critical = critical_sizes(inp.usable, metric=inp.metric, n_col=inp.n_col, d_col=inp.d_col, chance=inp.chance)
    results["critical_sizes"] = critical.to_dict()
    for axis, lines in (("D_star", critical.d_star), ("N_star", critical.n_star)):
        other = "N" if axis == "D_star" else "D"
        for at, fit in lines:
            if fit.threshold is not None:
                report.metric(f"{axis}/{other}_{at:g}", fit.threshold)
    report.draw("emergence_heatmap", plot_emergence_heatmap, inp.usable, inp.out / "emergence_heatmap.png",
                metric=inp.metric, n_col=inp.n_col, d_col=inp.d_col, critical=critical)
    report.draw("metric_vs_n", plot_metric_vs_scale, inp.usable, inp.out / "metric_vs_n.png",
                metric=inp.metric, x_col=inp.n_col, group_col=inp.d_col, fits=dict(critical.n_star))
    return critical


def grokking(inp: Inputs, report: Report, results: dict) -> pd.DataFrame:
    """Events and phase of every run from its curves; the classic picture per cell."""
    if inp.curves.empty:
        report.skipped["grokking"] = "no curves recorded"
        return pd.DataFrame()
    events = run_events(inp.curves, inp.usable)
    phases = inp.usable.merge(events, on="run_id", how="inner", suffixes=("", "_curve"))
    results["phases"] = phases["phase"].value_counts().to_dict() if "phase" in phases else {}
    # The lines drawn are the thresholds most runs used (all of them, unless a study searched them).
    train_t, val_t = (float(inp.runs[col].mode().iloc[0]) for col in THRESHOLDS)
    report.draw("grokking_curves", plot_grokking_curves, inp.curves, inp.out / "grokking_curves.png",
                runs=inp.runs, train_threshold=train_t, val_threshold=val_t)
    train = inp.config.get("train") or {}
    wd, lr = f"{names.PARAM_SEARCHED_PREFIX}train.weight_decay", f"{names.PARAM_SEARCHED_PREFIX}train.lr"
    for col, fixed in ((wd, train.get("weight_decay", 1.0)), (lr, train.get("lr", 1e-3))):
        if col not in phases:  # not searched: every run had the study's fixed value
            phases[col] = float(fixed)
    report.draw("phase_wd_x_d", plot_phase_diagram, phases, inp.out / "phase_wd_x_d.png",
                x_col=wd, y_col=inp.d_col, facet_col=inp.n_col)
    report.draw("phase_wd_x_lr", plot_phase_diagram, phases, inp.out / "phase_wd_x_lr.png",
                x_col=wd, y_col=lr, facet_col=inp.d_col)
    return phases


def run_events(curves: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Grokking events and phase of each run from its curves, under the thresholds its own
    trainer used (the `train_threshold` and `val_threshold` columns of `runs`): with the
    defaults, a study with `val_threshold: 0.9` would get phases that contradict the events its
    runs recorded."""
    frames = []
    for (train_t, val_t), part in runs.groupby(list(THRESHOLDS), sort=False):
        mine = curves[curves["run_id"].isin(part["run_id"])]
        if not mine.empty:
            frames.append(curve_events(mine, train_threshold=float(train_t), val_threshold=float(val_t)))
    return pd.concat(frames, ignore_index=True) if frames else curve_events(curves.iloc[:0])


def mirage(inp: Inputs, report: Report, results: dict) -> None:
    """The discontinuous metric against its continuous counterparts, over N at each D."""
    usable = inp.usable
    pairs = [(p, c) for p, c in (("val_acc", "val_token_acc"), ("val_acc", "val_answer_logprob"),
                                 ("val_acc", "val_p_answer"))
             if p in usable and c in usable and usable[c].notna().any()]
    if not pairs or usable.empty:
        report.skipped["mirage"] = "no continuous counterpart of the accuracy was recorded"
        return
    best_values = {"val_answer_logprob": 0.0, "val_p_answer": 1.0, "val_token_acc": 1.0, "val_acc": 1.0}
    checks = mirage_checks(usable, x_col=inp.n_col, group_col=inp.d_col, pairs=tuple(pairs[:2]),
                           best_values=best_values, chance_discontinuous=inp.chance)
    results["mirage"] = [c.to_dict() for c in checks]
    for c in checks:
        disc = c.discontinuous
        if disc.threshold is not None and disc.sharp is None:
            continue  # the data cannot decide whether the jump is sharp: no number is better than a guess
        report.metric(f"mirage/{c.continuous_metric}/D_{c.group:g}/emergent_discontinuous",
                      float(disc.threshold is not None and bool(disc.sharp)))
    if checks:
        # Draw the check at the largest D that emerged under the discontinuous metric, else the largest D.
        shown = max(checks, key=lambda c: (c.discontinuous.threshold is not None, c.group or 0))
        part = usable[usable[inp.d_col] == shown.group] if shown.group is not None else usable
        report.draw("mirage", plot_mirage, shown, part[inp.n_col].to_numpy(float),
                    part[shown.discontinuous_metric].to_numpy(float), part[shown.continuous_metric].to_numpy(float),
                    inp.out / "mirage.png", x_col=inp.n_col)


def regularization(inp: Inputs, results: dict) -> list:
    """The best trial and the importance of each searched value, per cell."""
    objective = (inp.config.get("objectives") or [{"metric": "max_val_acc", "direction": "maximize"}])[0]
    if objective["metric"] not in inp.usable:
        return []
    regs = cell_regularization(inp.usable, objective=objective["metric"], direction=objective["direction"])
    results["regularization"] = [r.to_dict() for r in regs]
    return regs
