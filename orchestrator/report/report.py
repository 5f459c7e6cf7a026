"""The study's report: read back from MLflow, analysed, drawn, and logged to the parent run.

`build_report` is analysis and drawing only (a StudyResults in, files in a folder out);
`log_report` is the MLflow write; `make_report` does both, and is what `grokscale report` and
the end of `grokscale run` call. Everything comes from MLflow, so any machine with the
tracking URI can make the report.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from orchestrator.report import plots
from orchestrator.analysis import (CriticalSizes, ScalingLawFit, cell_regularization, critical_sizes, curve_events,
                                   fit_power_law, fit_scaling_law, mirage_checks)
from orchestrator.store.results import StudyResults, load_results

USABLE = ("completed", "stopped")  # runs whose metrics mean what they say (not diverged or failed)
PLOTS = ("emergence_heatmap", "metric_vs_n", "grokking_curves", "phase_wd_x_d", "phase_wd_x_lr", "scaling_fit",
         "mirage")


@dataclass
class Report:
    directory: Path
    plots: dict[str, Path] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # plot or analysis -> why it was not made
    summary: pd.DataFrame | None = None  # one row per cell
    metrics: dict[str, float] = field(default_factory=dict)  # fitted numbers, logged as MLflow metrics
    results: dict = field(default_factory=dict)  # everything, JSON-safe


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
    return "n_params_non_embedding" if (config.get("grid") or {}).get("n_convention") == "non_embedding" else "n_params"


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


def build_report(res: StudyResults, out_dir: str | Path) -> Report:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = Report(out)
    config = res.config
    runs = res.runs.copy()
    usable = runs[runs["status"].isin(USABLE)].copy()
    n_col, d_col = _n_col(config), "n_train"
    metric = _emergence_metric(config, runs)
    chance = chance_level(config)
    if "val_loss" in usable:  # the mean probability given to the right answer: a continuous accuracy
        usable["val_p_answer"] = np.exp(-usable["val_loss"].astype(float))
    results: dict = {"study": config.get("name"), "metric": metric, "chance": chance, "n_col": n_col,
                     "d_col": d_col, "runs": len(runs), "usable_runs": len(usable),
                     "statuses": runs["status"].value_counts().to_dict()}

    def draw(name: str, fn, *args, **kwargs) -> None:
        try:
            path = fn(*args, **kwargs)
        except (ValueError, KeyError) as err:  # a table this plot cannot be drawn from
            path, why = None, f"{type(err).__name__}: {err}"
        else:
            why = "not enough distinct values to draw it"
        if path is None:
            report.skipped[name] = why
        else:
            report.plots[name] = Path(path)

    # Emergence: where the metric leaves chance, over N at each D and over D at each N.
    critical: CriticalSizes | None = None
    if usable.empty:
        report.skipped["emergence"] = "no completed runs"
    else:
        critical = critical_sizes(usable, metric=metric, n_col=n_col, d_col=d_col, chance=chance)
        results["critical_sizes"] = critical.to_dict()
        for axis, lines in (("D_star", critical.d_star), ("N_star", critical.n_star)):
            other = "N" if axis == "D_star" else "D"
            for at, fit in lines:
                if fit.threshold is not None:
                    report.metrics[_key(f"report/{axis}/{other}_{at:g}")] = fit.threshold
        draw("emergence_heatmap", plots.plot_emergence_heatmap, usable, out / "emergence_heatmap.png",
             metric=metric, n_col=n_col, d_col=d_col, critical=critical)
        draw("metric_vs_n", plots.plot_metric_vs_scale, usable, out / "metric_vs_n.png", metric=metric,
             x_col=n_col, group_col=d_col, fits=dict(critical.n_star))

    # Grokking: events and phase of every run from its curves; the classic picture per cell.
    phases = pd.DataFrame()
    if res.curves.empty:
        report.skipped["grokking"] = "no curves recorded"
    else:
        events = curve_events(res.curves)
        phases = usable.merge(events, on="run_id", how="inner", suffixes=("", "_curve"))
        results["phases"] = phases["phase"].value_counts().to_dict() if "phase" in phases else {}
        draw("grokking_curves", plots.plot_grokking_curves, res.curves, out / "grokking_curves.png", runs=runs)
        train = config.get("train") or {}
        for col, fixed in (("param.train.weight_decay", train.get("weight_decay", 1.0)),
                           ("param.train.lr", train.get("lr", 1e-3))):
            if col not in phases:  # not searched: every run had the study's fixed value
                phases[col] = float(fixed)
        draw("phase_wd_x_d", plots.plot_phase_diagram, phases, out / "phase_wd_x_d.png",
             x_col="param.train.weight_decay", y_col=d_col, facet_col=n_col)
        draw("phase_wd_x_lr", plots.plot_phase_diagram, phases, out / "phase_wd_x_lr.png",
             x_col="param.train.weight_decay", y_col="param.train.lr", facet_col=d_col)

    # Scaling law on the best (lowest) validation loss per cell: each cell at its tuned regularization.
    if "min_val_loss" in usable and usable["min_val_loss"].notna().any():
        best = _per_cell_best(usable, "min_val_loss", minimize=True)
        n, d, loss = (best[c].to_numpy(float) for c in (n_col, d_col, "min_val_loss"))
        convention = "non_embedding" if n_col == "n_params_non_embedding" else "total"
        fit: ScalingLawFit | None = None
        if len(np.unique(n)) >= 2 and len(np.unique(d)) >= 2 and len(loss) >= 6:
            fit = fit_scaling_law(n, d, loss, convention=convention)
            results["scaling_law"] = fit.to_dict()
            draw("scaling_fit", plots.plot_scaling_fit, fit, n, d, loss, out / "scaling_fit.png")
        else:
            report.skipped["scaling_fit"] = (f"a law in N and D needs >= 2 distinct N, >= 2 distinct D and >= 6 "
                                             f"cells; got {len(np.unique(n))} N, {len(np.unique(d))} D, {len(loss)} cells")
        for variable, x in (("N", n), ("D", d)):
            if len(np.unique(x)) >= 3:
                one = fit_power_law(x, loss, variable=variable, convention=convention if variable == "N" else None)
                results[f"power_law_{variable}"] = one.to_dict()
        for name in ("scaling_law", "power_law_N", "power_law_D"):
            for k, v in (results.get(name) or {}).items():
                if _finite(v):
                    report.metrics[_key(f"report/{name}/{k}")] = float(v)
    else:
        report.skipped["scaling_fit"] = "no validation loss recorded"

    # Mirage: the discontinuous metric against its continuous counterparts, over N at each D.
    pairs = [(p, c) for p, c in (("val_acc", "val_token_acc"), ("val_acc", "val_answer_logprob"),
                                 ("val_acc", "val_p_answer")) if p in usable and c in usable and usable[c].notna().any()]
    if pairs and not usable.empty:
        best_values = {"val_answer_logprob": 0.0, "val_p_answer": 1.0, "val_token_acc": 1.0, "val_acc": 1.0}
        checks = mirage_checks(usable, x_col=n_col, group_col=d_col, pairs=tuple(pairs[:2]), best_values=best_values,
                               chance_discontinuous=chance)
        results["mirage"] = [c.to_dict() for c in checks]
        for c in checks:
            report.metrics[_key(f"report/mirage/{c.continuous_metric}/D_{c.group:g}/emergent_discontinuous")] = \
                float(c.discontinuous.threshold is not None and c.discontinuous.sharp)
        if checks:
            # Draw the check at the largest D that emerged under the discontinuous metric, else the largest D.
            shown = max(checks, key=lambda c: (c.discontinuous.threshold is not None, c.group or 0))
            part = usable[usable[d_col] == shown.group] if shown.group is not None else usable
            draw("mirage", plots.plot_mirage, shown, part[n_col].to_numpy(float),
                 part[shown.discontinuous_metric].to_numpy(float), part[shown.continuous_metric].to_numpy(float),
                 out / "mirage.png", x_col=n_col)
    else:
        report.skipped["mirage"] = "no continuous counterpart of the accuracy was recorded"

    # Regularization: the best trial and the importance of each searched value, per cell.
    objective = (config.get("objectives") or [{"metric": "max_val_acc", "direction": "maximize"}])[0]
    regs = []
    if objective["metric"] in usable:
        regs = cell_regularization(usable, objective=objective["metric"], direction=objective["direction"])
        results["regularization"] = [r.to_dict() for r in regs]

    report.summary = _summary(runs, phases, regs, metric, n_col, d_col, critical)
    results["skipped"] = report.skipped
    results["plots"] = sorted(report.plots)
    report.results = results
    report.summary.to_csv(out / "summary.csv", index=False)
    (out / "summary.md").write_text(_markdown(report.summary))
    (out / "results.json").write_text(json.dumps(results, indent=2, default=_json_default))
    return report


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return None if not np.isfinite(value) else float(value)
    if isinstance(value, Path):
        return str(value)
    return str(value)


def _summary(runs: pd.DataFrame, phases: pd.DataFrame, regs: list, metric: str, n_col: str, d_col: str,
             critical: CriticalSizes | None) -> pd.DataFrame:
    rows = []
    by_reg = {r.cell: r for r in regs}
    for cell, part in runs.groupby("cell", sort=False):
        usable = part[part["status"].isin(USABLE)]
        row = {"cell": cell, "N": int(part[n_col].iloc[0]), "D": int(part[d_col].iloc[0]), "runs": len(part),
               "completed": int((part["status"] == "completed").sum()),
               "diverged": int((part["status"] == "diverged").sum()),
               "failed": int((part["status"] == "failed").sum()),
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
    client.log_artifacts(parent_run_id, str(report.directory), artifact_path="report")
    import time

    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, 0) for k, v in sorted(report.metrics.items())]
    for i in range(0, len(metrics), 1000):
        client.log_batch(parent_run_id, metrics=metrics[i:i + 1000])
    client.set_tag(parent_run_id, "grokscale.report", ", ".join(sorted(report.plots)) or "no plots")


def make_report(tracking_uri: str, experiment: str, out_dir: str | Path | None = None) -> Report:
    res = load_results(tracking_uri, experiment)
    if out_dir is None:
        out_dir = tempfile.mkdtemp(prefix="grokscale-report-")
    report = build_report(res, out_dir)
    log_report(tracking_uri, res.parent_run_id, report)
    return report
