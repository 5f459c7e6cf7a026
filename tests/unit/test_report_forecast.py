"""The report's downstream forecast on planted runs: a loss law L(N, D) and an accuracy that is a
sigmoid of the loss, so the final accuracy rises from chance to about 0.5 over the 4 smallest of 7
sizes and is near 1 at the largest. Fitted on the small sizes only, the chain forecasts the
largest sizes within its intervals; the direct sigmoid over log N is reported beside it."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from orchestrator.analysis.downstream import sigmoid
from orchestrator.report.report import build_report
from orchestrator.store.results import StudyResults

CONFIG = {
    "name": "fc",
    "task": {"name": "addition", "n_digits": 3},
    "train": {},
    "objectives": [{"metric": "max_val_acc", "direction": "maximize"}],
    "report": {"forecast": [{"n": 2e5, "d": 2e4}]},
}
NS = [600, 1200, 2500, 5000, 10000, 20000, 50000]
DS = [5000, 10000, 20000]
E, A, ALPHA, B, BETA = 0.1, 40.0, 0.5, 2.0, 0.3
SIG = (0.97, 12.0, 0.8, 0.001)  # a, k, L0, b: exact match rises as the loss falls past ~0.8
STEPS = [250 * i for i in range(1, 13)]


def law(n, d):
    return E + A / n**ALPHA + B / d**BETA


def planted(noise: float = 0.005, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    runs, curves = [], []
    for n in NS:
        for d in DS:
            rid = f"r{len(runs)}"
            final = law(n, d) * np.exp(rng.normal(0, noise))
            # Each evaluation's loss falls towards the final one; the accuracy follows the sigmoid.
            for step in STEPS:
                loss = final * (1 + 1.5 * np.exp(-step / 700))
                acc = float(np.clip(sigmoid(loss, *SIG) + rng.normal(0, noise), 0, 1))
                curves.append(
                    {"run_id": rid, "step": step, "val_loss": loss, "val_acc": acc, "train_acc": acc}
                )
            runs.append(
                {
                    "run_id": rid,
                    "cell": f"N={n}_D={d}",
                    "status": "completed",
                    "seed": 0,
                    "trial_number": 0,
                    "n_params": float(n),
                    "n_train": float(d),
                    "d_value": float(d),
                    "val_loss": curves[-1]["val_loss"],
                    "val_acc": curves[-1]["val_acc"],
                    "max_val_acc": max(c["val_acc"] for c in curves[-12:]),
                    "min_val_loss": final,
                }
            )
    return pd.DataFrame(runs), pd.DataFrame(curves)


def test_the_chain_forecasts_the_largest_sizes_from_the_smaller_ones(tmp_path):
    runs, curves = planted()
    report = build_report(StudyResults("parent", "0", CONFIG, runs, curves), tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())["forecast"]
    three = next(b for b in results["backtests"] if b["holdout"] == 3)  # fit on 600-5000, predict 10k-50k
    assert three["fit_sizes"] == [600, 1200, 2500, 5000]
    preds = three["predictions"]
    assert len(preds) == 9 and three["covered_all"] >= 7  # the truth inside the 90% intervals
    # Four sizes do not pin the loss law's floor E down: the small runs themselves say so, and
    # every forecast that relies on it carries that reason.
    assert all(p["predictable"] or "step 1 (the loss law) rejected" in p["reason"] for p in preds)
    big = [p for p in preds if p["n"] == 50000]
    assert all(p["actual"] > 0.9 and abs(p["error"]) < 0.1 for p in big)  # the rise, forecast
    assert all("direct" in p for p in preds)  # the baseline, beside it
    ahead = {(p["n"], p["d"]): p for p in results["predictions"]}
    assert (2e5, 2e4) in ahead and (50000 * 2.5, 5000.0) in ahead  # listed target, next size up
    assert "forecast" in report.plots


def test_too_few_sizes_skip_the_forecast_with_its_reason(tmp_path):
    runs, curves = planted()
    small = runs[runs["n_params"] <= 1200]
    report = build_report(
        StudyResults("parent", "0", CONFIG, small, curves[curves["run_id"].isin(small["run_id"])]), tmp_path
    )
    assert "4 or more model sizes" in report.skipped["forecast"]
