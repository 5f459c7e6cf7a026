"""The study's report: read back from MLflow, analysed, drawn, and logged to the parent run.

`build_report` is analysis and drawing only (a StudyResults in, files in a folder out), one
section per question (emergence, grokking, scaling law, mirage, regularization); `log_report`
is the MLflow write; `make_report` does both, and is what `grokscale report` and the end of
`grokscale run` call. Everything comes from MLflow, so any machine with the tracking URI can
make the report.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from orchestrator.analysis import (
    CriticalSizes,
    ScalingLawFit,
    cell_regularization,
    critical_sizes,
    curve_events,
    extrapolation_backtest,
    fit_envelope,
    fit_isoflop,
    fit_power_law,
    fit_scaling_law,
    loss_law_frontier,
    mirage_checks,
)
from orchestrator.analysis.fit_check import check_fit
from orchestrator.report import plots
from orchestrator.report.frontier_plots import plot_frontiers, plot_isoflop_curves
from orchestrator.store import names
from orchestrator.store.names import USABLE_STATUSES, RunStatus
from orchestrator.store.results import THRESHOLDS, StudyResults, load_results

PLOTS = ("emergence_heatmap", "metric_vs_n", "grokking_curves", "phase_wd_x_d", "phase_wd_x_lr", "scaling_fit",
         "mirage", "isoflop_curves", "frontier")


@dataclass
class Report:
    directory: Path
    plots: dict[str, Path] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # plot or analysis -> why it was not made
    summary: pd.DataFrame | None = None  # one row per cell
    metrics: dict[str, float] = field(default_factory=dict)  # fitted numbers, logged as MLflow metrics
    results: dict = field(default_factory=dict)  # everything, JSON-safe

    def draw(self, name: str, fn, *args, **kwargs) -> None:
        """Draw one plot; a table it cannot be drawn from is noted as skipped, not raised."""
        try:
            path = fn(*args, **kwargs)
        except (ValueError, KeyError) as err:
            path, why = None, f"{type(err).__name__}: {err}"
        else:
            why = "not enough distinct values to draw it"
        if path is None:
            self.skipped[name] = why
        else:
            self.plots[name] = Path(path)

    def metric(self, name: str, value: float) -> None:
        """A fitted number, logged to the parent run as `report/<name>`."""
        self.metrics[_key(names.REPORT_METRIC_PREFIX + name)] = float(value)


@dataclass
class Inputs:
    """What every section reads: the study's config, its runs and curves, and the axes."""

    config: dict
    runs: pd.DataFrame  # every run
    usable: pd.DataFrame  # the runs whose metrics mean what they say
    curves: pd.DataFrame
    out: Path
    n_col: str
    d_col: str
    metric: str  # the accuracy whose emergence is measured
    chance: float | None


def chance_level(config: dict) -> float | None:
    """The accuracy of guessing, from the task: what "never left chance" is measured against."""
    task = config.get("task") or {}
    name = task.get("name")
    if name == "modular":
        return 1.0 / int(task.get("p", 97))
    if name == "sparse_parity":
        return 0.5
    if name == "addition":
        return 10.0 ** -(int(task.get("n_digits", 3)) + 1)  # every answer digit right by luck
    return None  # an LM's token accuracy: the analysis takes the smallest scale's level


def _n_col(config: dict) -> str:
    non_embedding = (config.get("grid") or {}).get("n_convention") == "non_embedding"
    return names.PARAM_N_PARAMS_NON_EMBEDDING if non_embedding else names.PARAM_N_PARAMS


def _emergence_metric(config: dict, runs: pd.DataFrame) -> str:
    objectives = config.get("objectives") or []
    first = objectives[0]["metric"] if objectives else "max_val_acc"
    return first if "acc" in first and first in runs else "max_val_acc"


def _key(text: str) -> str:
    """An MLflow metric name: letters, digits, _ - . / : and spaces only."""
    return re.sub(r"[^\w.\-/: ]", "_", text)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _per_cell_best(runs: pd.DataFrame, metric: str, minimize: bool) -> pd.DataFrame:
    ok = runs.dropna(subset=[metric])
    idx = ok.groupby("cell")[metric].idxmin() if minimize else ok.groupby("cell")[metric].idxmax()
    return ok.loc[idx.to_numpy()]


def with_thresholds(runs: pd.DataFrame, config: dict) -> pd.DataFrame:
    """`runs` with the event thresholds of each run: as read back from MLflow (results.py), else
    the study's `train:` section, else the trainer's defaults."""
    train = config.get("train") or {}
    runs = runs.copy()
    for col, default in THRESHOLDS.items():
        fixed = float(train.get(col, default))
        runs[col] = runs[col].fillna(fixed) if col in runs else fixed
    return runs


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


def build_report(res: StudyResults, out_dir: str | Path) -> Report:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = Report(out)
    config = res.config
    runs = with_thresholds(res.runs, config)
    usable = runs[runs["status"].isin(USABLE_STATUSES)].copy()
    if "val_loss" in usable:  # the mean probability given to the right answer: a continuous accuracy
        usable["val_p_answer"] = np.exp(-usable["val_loss"].astype(float))
    inp = Inputs(config, runs, usable, res.curves, out, _n_col(config), names.PARAM_N_TRAIN,
                 _emergence_metric(config, runs), chance_level(config))
    results: dict = {"study": config.get("name"), "metric": inp.metric, "chance": inp.chance, "n_col": inp.n_col,
                     "d_col": inp.d_col, "runs": len(runs), "usable_runs": len(usable),
                     "statuses": runs["status"].value_counts().to_dict()}
    critical = _emergence(inp, report, results)
    phases = _grokking(inp, report, results)
    _scaling(inp, report, results)
    _mirage(inp, report, results)
    regs = _regularization(inp, results)
    report.summary = _summary(runs, phases, regs, inp.metric, inp.n_col, inp.d_col, critical)
    results["skipped"] = report.skipped
    results["plots"] = sorted(report.plots)
    report.results = results
    report.summary.to_csv(out / "summary.csv", index=False)
    (out / "summary.md").write_text(_markdown(report.summary))
    (out / "results.json").write_text(json.dumps(results, indent=2, default=_json_default))
    return report


def _emergence(inp: Inputs, report: Report, results: dict) -> CriticalSizes | None:
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
    report.draw("emergence_heatmap", plots.plot_emergence_heatmap, inp.usable, inp.out / "emergence_heatmap.png",
                metric=inp.metric, n_col=inp.n_col, d_col=inp.d_col, critical=critical)
    report.draw("metric_vs_n", plots.plot_metric_vs_scale, inp.usable, inp.out / "metric_vs_n.png",
                metric=inp.metric, x_col=inp.n_col, group_col=inp.d_col, fits=dict(critical.n_star))
    return critical


def _grokking(inp: Inputs, report: Report, results: dict) -> pd.DataFrame:
    """Events and phase of every run from its curves; the classic picture per cell."""
    if inp.curves.empty:
        report.skipped["grokking"] = "no curves recorded"
        return pd.DataFrame()
    events = run_events(inp.curves, inp.usable)
    phases = inp.usable.merge(events, on="run_id", how="inner", suffixes=("", "_curve"))
    results["phases"] = phases["phase"].value_counts().to_dict() if "phase" in phases else {}
    # The lines drawn are the thresholds most runs used (all of them, unless a study searched them).
    train_t, val_t = (float(inp.runs[col].mode().iloc[0]) for col in THRESHOLDS)
    report.draw("grokking_curves", plots.plot_grokking_curves, inp.curves, inp.out / "grokking_curves.png",
                runs=inp.runs, train_threshold=train_t, val_threshold=val_t)
    train = inp.config.get("train") or {}
    wd, lr = f"{names.PARAM_SEARCHED_PREFIX}train.weight_decay", f"{names.PARAM_SEARCHED_PREFIX}train.lr"
    for col, fixed in ((wd, train.get("weight_decay", 1.0)), (lr, train.get("lr", 1e-3))):
        if col not in phases:  # not searched: every run had the study's fixed value
            phases[col] = float(fixed)
    report.draw("phase_wd_x_d", plots.plot_phase_diagram, phases, inp.out / "phase_wd_x_d.png",
                x_col=wd, y_col=inp.d_col, facet_col=inp.n_col)
    report.draw("phase_wd_x_lr", plots.plot_phase_diagram, phases, inp.out / "phase_wd_x_lr.png",
                x_col=wd, y_col=lr, facet_col=inp.d_col)
    return phases


def _scaling(inp: Inputs, report: Report, results: dict) -> None:
    """Scaling law on the best (lowest) validation loss per cell: each cell at its tuned
    regularization. A law that does not describe its data (analysis/fit_check.py) is reported as
    rejected with its reasons: its numbers are kept in results.json for the record, but neither
    logged as metrics nor drawn."""
    usable = inp.usable
    if "min_val_loss" not in usable or not usable["min_val_loss"].notna().any():
        report.skipped["scaling_fit"] = "no validation loss recorded"
        return
    best = _per_cell_best(usable, "min_val_loss", minimize=True)
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
            report.draw("scaling_fit", plots.plot_scaling_fit, fit, n, d, loss, inp.out / "scaling_fit.png")
            law_fit = fit
        else:
            report.skipped["scaling_fit"] = f"fit rejected: {check.reason}"
    else:
        report.skipped["scaling_fit"] = (f"a law in N and D needs >= 2 distinct N, >= 2 distinct D and >= 6 "
                                         f"cells; got {len(np.unique(n))} N, {len(np.unique(d))} D, {len(loss)} cells")
    for variable, x in (("N", n), ("D", d)):
        if len(np.unique(x)) >= 3:
            one = fit_power_law(x, loss, variable=variable, convention=convention if variable == "N" else None)
            check = check_fit(one, x if variable == "N" else None, x if variable == "D" else None, loss)
            results[f"power_law_{variable}"] = {**one.to_dict(), "check": check.to_dict()}
            accepted[f"power_law_{variable}"] = check.accepted
    for name, ok in accepted.items():
        if not ok:
            continue
        for k, v in results[name].items():
            if _finite(v):
                report.metric(f"{name}/{k}", v)
    _compute_optimal(inp, report, results, law_fit)


def _compute_optimal(inp: Inputs, report: Report, results: dict, fit: ScalingLawFit | None) -> None:
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
    per_token = _flops_per_token(usable, inp.n_col)
    frontiers = []
    if fit is not None:  # only an accepted L(N, D) gives a frontier
        law = loss_law_frontier(fit, budgets, flops_per_token=per_token)
        results["frontier_loss_law"] = law.to_dict()
        frontiers.append(law)
    if (inp.config.get("grid") or {}).get("flops") and "min_val_loss" in usable and "flops" in usable:
        # Each cell at its tuned learning rate: the best trial of the cell (Porian et al. 2024 tune per size).
        best = _per_cell_best(usable, "min_val_loss", minimize=True)
        grid = np.array(budgets)
        run_flops = best["flops"].astype(float).to_numpy()
        budget = grid[np.argmin(np.abs(np.log(run_flops[:, None]) - np.log(grid[None, :])), axis=1)]
        n, loss = best[inp.n_col].to_numpy(float), best["min_val_loss"].to_numpy(float)
        iso = fit_isoflop(n, budget, loss, flops_per_token=per_token)
        results["frontier_isoflop"] = iso.to_dict()
        results["frontier_backtest"] = [b.to_dict() for b in
                                        extrapolation_backtest(n, budget, loss, flops_per_token=per_token)]
        report.draw("isoflop_curves", plot_isoflop_curves, iso, inp.out / "isoflop_curves.png")
        frontiers.insert(0, iso.frontier)
    curves = inp.curves
    if not curves.empty and {"flops", "val_loss"} <= set(curves.columns):
        c = curves.dropna(subset=["flops", "val_loss"]).merge(usable[["run_id", inp.n_col]], on="run_id")
        if not c.empty:
            env = fit_envelope(c["run_id"].to_numpy(), c[inp.n_col].to_numpy(float), c["flops"].to_numpy(float),
                               c["val_loss"].to_numpy(float), flops_per_token=per_token)
            results["frontier_envelope"] = env.to_dict()
            frontiers.insert(0, env.frontier)
    if frontiers:
        report.draw("frontier", plot_frontiers, frontiers, inp.out / "frontier.png")
    for key in ("frontier_isoflop", "frontier_loss_law", "frontier_envelope"):
        for k in ("a", "b"):
            v = (results.get(key) or {}).get(k)
            if _finite(v):
                report.metric(f"{key}/{k}", v)


def _flops_per_token(usable: pd.DataFrame, n_col: str) -> float:
    """C = K N D with N as the report counts it (n_col): the K the runs' own accounting gives
    (FLOPs / (tokens x N): 6 plus attention and, for non-embedding N, the unembedding), else 6."""
    if {"flops", "tokens"} <= set(usable.columns):
        k = usable["flops"].astype(float) / (usable["tokens"].astype(float) * usable[n_col].astype(float))
        k = k[np.isfinite(k) & (k > 0)]
        if len(k):
            return float(k.median())
    return 6.0


def _mirage(inp: Inputs, report: Report, results: dict) -> None:
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
        report.draw("mirage", plots.plot_mirage, shown, part[inp.n_col].to_numpy(float),
                    part[shown.discontinuous_metric].to_numpy(float), part[shown.continuous_metric].to_numpy(float),
                    inp.out / "mirage.png", x_col=inp.n_col)


def _regularization(inp: Inputs, results: dict) -> list:
    """The best trial and the importance of each searched value, per cell."""
    objective = (inp.config.get("objectives") or [{"metric": "max_val_acc", "direction": "maximize"}])[0]
    if objective["metric"] not in inp.usable:
        return []
    regs = cell_regularization(inp.usable, objective=objective["metric"], direction=objective["direction"])
    results["regularization"] = [r.to_dict() for r in regs]
    return regs


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return None if not np.isfinite(value) else float(value)
    return str(value)


def _summary(runs: pd.DataFrame, phases: pd.DataFrame, regs: list, metric: str, n_col: str, d_col: str,
             critical: CriticalSizes | None) -> pd.DataFrame:
    rows = []
    by_reg = {r.cell: r for r in regs}
    for cell, part in runs.groupby("cell", sort=False):
        usable = part[part["status"].isin(USABLE_STATUSES)]
        row = {"cell": cell, "N": int(part[n_col].iloc[0]), "D": int(part[d_col].iloc[0]), "runs": len(part),
               **{s.value: int((part["status"] == s.value).sum())
                  for s in (RunStatus.COMPLETED, RunStatus.DIVERGED, RunStatus.FAILED)},
               f"best {metric}": float(usable[metric].max()) if metric in usable and len(usable) else None}
        if not phases.empty and "phase" in phases:
            counts = phases[phases["cell"] == cell]["phase"].value_counts()
            row["phases"] = ", ".join(f"{k} {v}" for k, v in counts.items())
        reg = by_reg.get(cell)
        if reg is not None:
            row["best params"] = json.dumps(reg.best_params, default=_json_default)
            row["importance"] = ("" if reg.importances is None else
                                 ", ".join(f"{k.removeprefix('train.')} {v:.2f}" for k, v in reg.importances.items()))
        rows.append(row)
    table = pd.DataFrame(rows)
    return table.sort_values(["N", "D"], ignore_index=True) if not table.empty else table


def _markdown(table: pd.DataFrame) -> str:
    if table.empty:
        return "(no runs)\n"
    cols = list(table.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in table.iterrows():
        lines.append("| " + " | ".join("" if pd.isna(v) else (f"{v:.4g}" if isinstance(v, float) else str(v))
                                       for v in r) + " |")
    return "\n".join(lines) + "\n"


def log_report(tracking_uri: str, parent_run_id: str, report: Report) -> None:
    """Plots, the summary table, the fitted numbers and the JSON, onto the study's parent run."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    client.log_artifacts(parent_run_id, str(report.directory), artifact_path=names.ARTIFACT_REPORT)
    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, 0) for k, v in sorted(report.metrics.items())]
    for i in range(0, len(metrics), 1000):  # MLflow's limit of metrics per batch
        client.log_batch(parent_run_id, metrics=metrics[i:i + 1000])
    client.set_tag(parent_run_id, names.TAG_REPORT, ", ".join(sorted(report.plots)) or "no plots")


def make_report(tracking_uri: str, experiment: str, out_dir: str | Path | None = None) -> Report:
    res = load_results(tracking_uri, experiment)
    if out_dir is None:
        out_dir = tempfile.mkdtemp(prefix="grokscale-report-")
    report = build_report(res, out_dir)
    log_report(tracking_uri, res.parent_run_id, report)
    return report
