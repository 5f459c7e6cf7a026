"""The study's report: read back from MLflow, analysed, drawn, and logged to the parent run.

`build_report` is analysis and drawing only (a StudyResults in, files in a folder out), one
section per question (emergence, grokking, scaling law, mirage, regularization: sections.py,
scaling_section.py; D*(N) and generalization steps predicted and backtested: prediction_section.py;
what grid.refine added, below the summary table in summary.md: sections.py);
`log_report` is the MLflow write; `make_report` does both, and is what `grokscale report` and
the end of `grokscale run` call. Everything comes from MLflow, so any
machine with the tracking URI can make the report.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import pandas as pd

from orchestrator.report import prediction_section, scaling_section, sections
from orchestrator.report.document import Report, read_inputs
from orchestrator.report.summary import json_default, markdown, summary_table
from orchestrator.store import names
from orchestrator.store.results import StudyResults, load_results

PLOTS = ("emergence_heatmap", "metric_vs_n", "grokking_curves", "phase_wd_x_d", "phase_wd_x_lr", "scaling_fit",
         "mirage", "isoflop_curves", "frontier")
# Next-token accuracies stay far below the thresholds that define memorizing and generalizing,
# and a byte has no exact-match answer: every run would be called "confusion", which says nothing.
LANGUAGE_MODEL_SKIP = ("a language-modelling task: grokking phases, their predictions and the mirage check are "
                       "about accuracy thresholds and exact-match answers, which next-token prediction does not have")


def build_report(res: StudyResults, out_dir: str | Path) -> Report:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = Report(out)
    inp = read_inputs(res, out)
    results: dict = {"study": inp.config.get("name"), "metric": inp.metric, "chance": inp.chance,
                     "n_col": inp.n_col, "d_col": inp.d_col, "runs": len(inp.runs), "usable_runs": len(inp.usable),
                     "statuses": inp.runs["status"].value_counts().to_dict()}
    critical = sections.emergence(inp, report, results)
    if inp.language_model:  # no run of a language model memorizes, groks, or has an exact-match answer
        phases = pd.DataFrame()
        for section in ("grokking", "predictions", "mirage"):
            report.skipped[section] = LANGUAGE_MODEL_SKIP
    else:
        phases = sections.grokking(inp, report, results)
        prediction_section.predictions(inp, report, results, phases)
    scaling_section.scaling(inp, report, results)
    if not inp.language_model:
        sections.mirage(inp, report, results)
    regs = sections.regularization(inp, results)
    refined = sections.refinement(res.refine, inp, report, results)
    report.summary = summary_table(inp.runs, phases, regs, inp.metric, inp.n_col, inp.d_col, critical)
    results["skipped"] = report.skipped
    results["plots"] = sorted(report.plots)
    report.results = results
    report.summary.to_csv(out / "summary.csv", index=False)
    (out / "summary.md").write_text(markdown(report.summary) + (f"\n{refined}" if refined else ""))
    (out / "results.json").write_text(json.dumps(results, indent=2, default=json_default))
    return report


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
