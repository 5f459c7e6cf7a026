"""The report's compute-optimal section (orchestrator/report/scaling_section.py) on an IsoFLOP study with a
planted answer: runs whose losses follow Hoffmann et al.'s law at each budget, as MLflow would
give them back (a runs table and per-evaluation curves). The report must find the planted
N_opt(C) exponent, draw the IsoFLOP curves and the frontier, and backtest the largest budget."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from orchestrator.report.report import build_report
from orchestrator.store.results import StudyResults

E, A, ALPHA, B, BETA = 1.69, 406.4, 0.34, 410.7, 0.28  # Hoffmann et al. (2022)
K = 6.0
A_TRUE = BETA / (ALPHA + BETA)  # N_opt ∝ C^a


def law(n, d):
    return E + A / n**ALPHA + B / d**BETA


def isoflop_study(rng):
    budgets = [1e18, 1e19, 1e20, 1e21]
    rows, curves = [], []
    for j, c in enumerate(budgets):
        n_opt = (ALPHA * A / (BETA * B)) ** (1 / (ALPHA + BETA)) * (c / K) ** A_TRUE
        for i, n in enumerate(n_opt * np.geomspace(1 / 8, 8, 7)):
            d = c / (K * n)
            for trial in range(2):  # a learning-rate search: the worse trial is 3% off
                loss = law(n, d) * (1.0 + 0.03 * trial) * np.exp(rng.normal(0, 0.002))
                run = f"r{j}-{i}-{trial}"
                rows.append(
                    {
                        "run_id": run,
                        "cell": f"N{i}_C{c:g}",
                        "status": "completed",
                        "trial_number": trial,
                        "seed": 0,
                        "n_params": n,
                        "n_train": d,
                        "d_value": d,
                        "min_val_loss": loss,
                        "val_loss": loss,
                        "flops": c * 1.001,
                        "tokens": d,
                        "max_val_acc": 0.5,
                        "train_threshold": 0.99,
                        "val_threshold": 0.95,
                    }
                )
                for f in np.geomspace(c / 30, c, 8):  # the run's curve: loss falls as it trains
                    val = law(n, f / (K * n)) * (1 + 0.03 * trial)
                    curves.append(
                        {
                            "run_id": run,
                            "step": int(f / c * 1000),
                            "flops": f,
                            "train_acc": 0.5,
                            "val_acc": 0.5,
                            "train_loss": loss,
                            "val_loss": val,
                        }
                    )
    config = {
        "name": "iso",
        "task": {"name": "charlm"},
        "grid": {"flops": budgets, "n_convention": "total"},
        "objectives": [{"metric": "min_val_loss", "direction": "minimize"}],
        "train": {},
    }
    return StudyResults("parent", "0", config, pd.DataFrame(rows), pd.DataFrame(curves))


def test_isoflop_report_finds_the_planted_frontier_and_backtests_it(tmp_path):
    report = build_report(isoflop_study(np.random.default_rng(0)), tmp_path)
    iso = report.results["frontier_isoflop"]
    assert iso["a"] == pytest.approx(A_TRUE, abs=0.03)
    assert iso["a_low"] <= A_TRUE <= iso["a_high"] or abs(iso["a"] - A_TRUE) < 0.01
    assert len(iso["frontier"]) == 4 and all(p["trusted"] for p in iso["frontier"])
    assert {"isoflop_curves", "frontier"} <= set(report.plots)
    assert (tmp_path / "isoflop_curves.png").stat().st_size > 20_000
    backtest = {b["approach"]: b for b in report.results["frontier_backtest"]}
    assert abs(backtest["isoflop"]["N_opt_error"]) < 0.2
    assert report.metrics["report/frontier_isoflop/a"] == pytest.approx(iso["a"])
    env = report.results["frontier_envelope"]
    assert env["approach"] == "envelope"


def test_a_grokking_study_gets_no_frontier(tmp_path):
    res = isoflop_study(np.random.default_rng(1))
    res.config["grid"] = {"d": [0.3, 0.5]}
    res.runs["min_val_loss"] = np.random.default_rng(2).choice([0.01, 4.0], size=len(res.runs))
    report = build_report(res, tmp_path)
    assert "frontier" not in report.plots and "frontier" in report.skipped


def test_a_language_model_study_gets_no_grokking_sections(tmp_path):
    """Next-token accuracies never cross the memorization and generalization thresholds: a
    language-model study's report says why it has no phases, predictions or mirage check,
    instead of calling every run "confusion"."""
    report = build_report(isoflop_study(np.random.default_rng(3)), tmp_path)
    for section in ("grokking", "predictions", "mirage"):
        assert "language-modelling task" in report.skipped[section]
    assert "exact-match accuracy" in report.skipped["forecast"]  # its own reason, not the grokking one
    assert "phases" not in report.results and "predictions" not in report.results
    assert not {"grokking_curves", "phase_wd_x_d", "mirage"} & set(report.plots)
    res = isoflop_study(np.random.default_rng(3))
    res.config["task"] = {"name": "modular"}  # the same runs under a grokking task: the sections are made
    other = build_report(res, tmp_path / "modular")
    assert "grokking" not in other.skipped and "phases" in other.results
