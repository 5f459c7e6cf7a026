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
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

import pandas as pd

from orchestrator.report import (
    forecast_section,
    prediction_section,
    scaling_section,
    sections,
    transfer_section,
)
from orchestrator.report.document import Report, read_inputs
from orchestrator.report.summary import json_default, markdown, summary_table
from orchestrator.store import names
from orchestrator.store.results import StudyResults, load_results

T = TypeVar("T")

PLOTS = (
    "emergence_heatmap",
    "metric_vs_n",
    "grokking_curves",
    "phase_wd_x_d",
    "phase_wd_x_lr",
    "scaling_fit",
    "mirage",
    "isoflop_curves",
    "frontier",
    "transfer",
    "forecast",
)
# Next-token accuracies stay far below the thresholds that define memorizing and generalizing,
# and a byte has no exact-match answer: every run would be called "confusion", which says nothing.
LANGUAGE_MODEL_SKIP = (
    "a language-modelling task: grokking phases, their predictions and the mirage check are "
    "about accuracy thresholds and exact-match answers, which next-token prediction does not have"
)
LANGUAGE_MODEL_FORECAST_SKIP = (
    "a language-modelling task: the downstream forecast maps loss to a task's exact-match accuracy, "
    "which next-token prediction does not have (for evaluations of your own: grokscale fit downstream)"
)


def section(
    report: Report,
    name: str,
    fn: Callable[[], T],
    default: T,
    needs: Iterable[str] = (),
    have: Iterable[str] = (),
) -> T:
    """Run one report section. Inputs the runs did not report (`needs` missing from `have`) skip
    it with that reason; a section that fails is skipped with its error, its traceback kept in
    results.json: a section's trouble is the section's, never the study's."""
    missing = [c for c in needs if c not in set(have)]
    if missing:
        report.skipped[name] = f"the runs did not report {', '.join(missing)}"
        return default
    try:
        return fn()
    except Exception as err:  # noqa: BLE001 - the report never crashes a study (module docstring)
        report.skipped[name] = f"failed: {type(err).__name__}: {err}"
        report.errors[name] = traceback.format_exc(limit=8)
        return default


def build_report(res: StudyResults, out_dir: str | Path) -> Report:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = Report(out)
    inp = read_inputs(res, out)
    results: dict = {
        "study": inp.config.get("name"),
        "metric": inp.metric,
        "chance": inp.chance,
        "n_col": inp.n_col,
        "d_col": inp.d_col,
        "runs": len(inp.runs),
        "usable_runs": len(inp.usable),
        "statuses": inp.runs["status"].value_counts().to_dict(),
    }
    runs_have, curves_have = list(inp.usable.columns), list(inp.curves.columns)
    critical = section(
        report,
        "emergence",
        lambda: sections.emergence(inp, report, results),
        None,
        needs=(inp.metric, inp.n_col, inp.d_col),
        have=runs_have,
    )
    phases = pd.DataFrame()
    if inp.language_model:  # no run of a language model memorizes, groks, or has an exact-match answer
        for name in ("grokking", "predictions", "mirage"):
            report.skipped[name] = LANGUAGE_MODEL_SKIP
    else:
        phases = section(
            report,
            "grokking",
            lambda: sections.grokking(inp, report, results),
            pd.DataFrame(),
            needs=("train_acc", "val_acc"),
            have=curves_have,
        )
        section(
            report,
            "predictions",
            lambda: prediction_section.predictions(inp, report, results, phases),
            None,
            needs=("train_acc", "val_acc"),
            have=curves_have,
        )
    if inp.language_model:
        report.skipped["forecast"] = LANGUAGE_MODEL_FORECAST_SKIP
    else:
        section(
            report,
            "forecast",
            lambda: forecast_section.forecast(inp, report, results),
            None,
            needs=("val_loss", "val_acc"),
            have=curves_have,
        )
    section(
        report,
        "scaling",
        lambda: scaling_section.scaling(inp, report, results),
        None,
        needs=(inp.n_col, inp.d_col),
        have=runs_have,
    )
    if not inp.language_model:
        section(report, "mirage", lambda: sections.mirage(inp, report, results), None)
    section(
        report,
        "transfer",
        lambda: transfer_section.transfer(inp, report, results),
        None,
        needs=(inp.n_col,),
        have=runs_have,
    )
    regs = section(report, "regularization", lambda: sections.regularization(inp, results), [])
    refined = section(report, "refinement", lambda: sections.refinement(res.refine, inp, report, results), "")
    report.summary = section(
        report,
        "summary",
        lambda: summary_table(inp.runs, phases, regs, inp.metric, inp.n_col, inp.d_col, critical),
        pd.DataFrame(),
    )
    results["skipped"] = report.skipped
    results["section_errors"] = report.errors
    results["plots"] = sorted(report.plots)
    report.results = results
    report.summary.to_csv(out / "summary.csv", index=False)
    (out / "summary.md").write_text(markdown(report.summary) + (f"\n{refined}" if refined else ""))
    (out / "results.json").write_text(json.dumps(results, indent=2, default=json_default))
    return report


# The report's sections, in the order a study's end prints them, each with what it may draw or fit.
SECTIONS = {
    "emergence": ("emergence_heatmap", "metric_vs_n"),
    "grokking": ("grokking_curves", "phase_wd_x_d", "phase_wd_x_lr"),
    "predictions": (),
    "forecast": ("forecast",),
    "scaling": ("scaling_fit", "isoflop_curves", "frontier", "power_law_n", "power_law_d"),
    "mirage": ("mirage",),
    "transfer": ("transfer",),
    "regularization": (),
    "refinement": (),
    "summary": (),
}


def brief(text: str, width: int = 90) -> str:
    """The first clause of a reason, for one line; the whole reason is in results.json."""
    first = text.split("; ")[0].split(". ")[0]
    return first if len(first) <= width else first[: width - 1].rstrip() + "…"


def _said(name: str, results: dict) -> str | None:
    """What a section without plots found, in a few words (None: say what it drew)."""
    if name == "refinement" and results.get("refine") is None:
        return "not asked for (grid.refine)"
    if name == "regularization":
        cells = results.get("regularization") or []
        return (
            f"best values and their importances in {len(cells)} cells" if cells else "no objective to rank by"
        )
    if name == "summary":
        return "summary.md, one row per cell"
    if name == "predictions" and results.get("predictions"):
        return _predictions_said(results["predictions"])
    if name == "transfer" and results.get("transfer"):
        return "; ".join(
            f"{param}: " + ", ".join(f"{group} {_verdict(check)}" for group, check in by_group.items())
            for param, by_group in results["transfer"].items()
        )
    return None


def _predictions_said(predictions: dict) -> str:
    """The two predictions in a few words: D*(N)'s next size, the generalization step's error."""
    parts = []
    law = (predictions.get("critical_data") or {}).get("law") or {}
    nxt = (predictions.get("critical_data") or {}).get("next") or {}
    if nxt.get("predicted") is not None:
        parts.append(
            f"D* at N = {nxt['n']:.3g}: {nxt['predicted']:.3g} [{nxt['predicted_low']:.3g}, "
            f"{nxt['predicted_high']:.3g}] ({law.get('direction', 'undecided')} with N)"
        )
    else:
        parts.append("no D*(N) law" + _why(law.get("reason")))
    step = predictions.get("generalization_step") or {}
    if step.get("n_scored"):
        parts.append(
            f"generalization step of {step['n_scored']} runs, median error {step['median_abs_error']:.0%} "
            f"(baseline {step['baseline_median_abs_error']:.0%})"
        )
    else:
        parts.append("no generalization step scored" + _why(step.get("reason")))
    return "; ".join(parts)


def _why(reason: str | None) -> str:
    return f" ({brief(reason, 50)})" if reason else ""


def _verdict(check: dict) -> str:
    """A transfer check in a few words: its drift exponent and whether the optimum holds."""
    word = {True: "holds", False: "drifts", None: "undecided"}[check.get("transfers")]
    exponent = check.get("exponent")
    return word if exponent is None else f"N^{exponent:+.2f} {word}"


def outline(report: Report) -> list[str]:
    """One line per section: what it drew, or why it has nothing, in a few words."""
    lines = []
    for name, parts in SECTIONS.items():
        if name in report.skipped:
            lines.append(f"{name}: skipped, {brief(report.skipped[name])}")
            continue
        said = _said(name, report.results)
        if said is not None:
            lines.append(f"{name}: {said}")
            continue
        drawn = [p for p in parts if p in report.plots]
        missing = [f"no {p} ({brief(report.skipped[p], 60)})" for p in parts if p in report.skipped]
        parts_said = ([", ".join(drawn)] if drawn else []) + missing
        lines.append(f"{name}: {'; '.join(parts_said) or 'done'}")
    return lines


def log_report(tracking_uri: str, parent_run_id: str, report: Report) -> None:
    """Plots, the summary table, the fitted numbers and the JSON, onto the study's parent run."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    client.log_artifacts(parent_run_id, str(report.directory), artifact_path=names.ARTIFACT_REPORT)
    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, 0) for k, v in sorted(report.metrics.items())]
    for i in range(0, len(metrics), 1000):  # MLflow's limit of metrics per batch
        client.log_batch(parent_run_id, metrics=metrics[i : i + 1000])
    client.set_tag(parent_run_id, names.TAG_REPORT, ", ".join(sorted(report.plots)) or "no plots")


def make_report(tracking_uri: str, experiment: str, out_dir: str | Path | None = None) -> Report:
    res = load_results(tracking_uri, experiment)
    if out_dir is None:
        out_dir = tempfile.mkdtemp(prefix="grokscale-report-")
    report = build_report(res, out_dir)
    log_report(tracking_uri, res.parent_run_id, report)
    return report
