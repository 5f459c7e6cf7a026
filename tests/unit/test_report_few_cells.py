"""A study with one model size and three data sizes (three cells): too few for the report's
power law in D (three parameters need four cells). The report says so instead of failing, which
made `grokscale run` exit 1 after every run had trained."""

from __future__ import annotations

import json

import pandas as pd

from orchestrator.report.report import build_report
from orchestrator.store.results import StudyResults

CONFIG = {
    "name": "few_cells",
    "task": {"name": "modular", "p": 23},
    "objectives": [{"metric": "max_val_acc", "direction": "maximize"}],
    "train": {},
}


def test_three_cells_skip_the_power_law_with_its_reason(tmp_path):
    rows = [
        {
            "run_id": f"r{i}",
            "cell": f"D={d}",
            "status": "completed",
            "trial_number": 0,
            "seed": 0,
            "n_params": 5000.0,
            "n_train": float(d),
            "d_value": float(d),
            "max_val_acc": acc,
            "min_val_loss": loss,
        }
        for i, (d, acc, loss) in enumerate([(100, 0.1, 3.0), (200, 0.5, 2.0), (400, 0.9, 1.5)])
    ]
    res = StudyResults("parent", "0", CONFIG, pd.DataFrame(rows), pd.DataFrame())
    report = build_report(res, tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())
    assert report.skipped["power_law_D"] == "a power law in D needs >= 4 cells; got 3"
    assert "power_law_D" not in results


def test_one_model_size_gets_no_mirage_check_but_its_reason(tmp_path):
    """The mirage check fits thresholds over N: a study of one N (a grokking study over data) is
    told so once, not given one "not emergent" row per D and an empty plot."""
    rows = [
        {
            "run_id": f"r{i}",
            "cell": f"D={d}",
            "status": "completed",
            "trial_number": 0,
            "seed": 0,
            "n_params": 5000.0,
            "n_train": float(d),
            "d_value": float(d),
            "max_val_acc": acc,
            "val_acc": acc,
            "val_loss": loss,
            "min_val_loss": loss,
        }
        for i, (d, acc, loss) in enumerate([(100, 0.1, 3.0), (200, 0.5, 2.0), (400, 0.9, 1.5)])
    ]
    report = build_report(StudyResults("parent", "0", CONFIG, pd.DataFrame(rows), pd.DataFrame()), tmp_path)
    assert report.skipped["mirage"] == (
        "the mirage check compares thresholds over N; this study has 1 value(s) of N, a threshold needs 3"
    )
    assert "mirage" not in report.results and "mirage" not in report.plots
    assert "metric_vs_n" not in report.plots and "one model size" in report.skipped["metric_vs_n"]
