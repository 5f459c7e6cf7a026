"""Every figure renders to a PNG from synthetic results, and says None when there is nothing
to draw. (The pixels were checked by eye when the figures were written; these tests check
that each one renders, at a readable size, from the analysis' own results.)"""

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from orchestrator.analysis import (
    Estimate,
    ScalingLawFit,
    critical_sizes,
    fit_power_law,
    grokking_phases,
    mirage_check,
)
from orchestrator.report import grokking_plots, plots, scaling_plots

NS, DS = [2e4, 5e4, 1.2e5, 3e5], [(0.2, 700), (0.35, 1200), (0.5, 1700)]


@pytest.fixture(scope="module")
def study():
    """A small study: 4 N x 3 D cells, 3 trials x 2 seeds, ability when log10 N + 3 D > 5.7."""
    rng = np.random.default_rng(0)
    runs, curves, k = [], [], 0
    steps = np.unique(np.logspace(1, 4, 30).astype(int))
    for n in NS:
        for dv, d in DS:
            for trial in range(3):
                wd, lr = float(10 ** rng.uniform(-1, 1)), float(10 ** rng.uniform(-3.5, -2.5))
                for seed in range(2):
                    k += 1
                    ok = np.log10(n) + 3 * dv > 5.7 and wd > 0.3
                    mem = 200
                    if not ok:
                        gen = None
                    elif wd < 1:
                        gen = 3000
                    else:
                        gen = 400
                    runs.append(
                        {
                            "run_id": f"r{k}",
                            "cell": f"N={int(n)}/D={dv}",
                            "n_params": n,
                            "n_train": d,
                            "d_value": dv,
                            "seed": seed,
                            "trial_number": trial,
                            "status": "completed",
                            "param.train.weight_decay": wd,
                            "param.train.lr": lr,
                            "max_val_acc": 0.98 if ok else 0.05 + 0.02 * rng.random(),
                            "memorization_step": mem,
                            "generalization_step": gen,
                        }
                    )
                    val_at = gen or 1e9
                    curves += [
                        {
                            "run_id": f"r{k}",
                            "step": s,
                            "train_acc": float(s >= mem),
                            "val_acc": 0.98 if s >= val_at else 0.02,
                        }
                        for s in steps
                    ]
    return pd.DataFrame(runs), pd.DataFrame(curves)


def assert_png(path, min_width=500):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    height, width = imread(path).shape[:2]
    assert width >= min_width and height >= 300


def test_emergence_heatmap_and_metric_vs_scale(study, tmp_path):
    runs, _ = study
    lines = critical_sizes(runs, n_boot=20)
    assert_png(plots.plot_emergence_heatmap(runs, tmp_path / "heat.png", critical=lines))
    assert_png(plots.plot_metric_vs_scale(runs, tmp_path / "vs_n.png", fits=dict(lines.n_star)))
    assert plots.plot_emergence_heatmap(runs.iloc[:0], tmp_path / "empty.png") is None
    assert not (tmp_path / "empty.png").exists()
    with pytest.raises(ValueError, match="no column"):
        plots.plot_metric_vs_scale(runs, tmp_path / "x.png", metric="val_token_acc")


def test_grokking_curves_one_panel_per_cell(study, tmp_path):
    runs, curves = study
    assert_png(grokking_plots.plot_grokking_curves(curves, tmp_path / "curves.png", runs=runs), min_width=900)
    assert grokking_plots.plot_grokking_curves(curves.iloc[:0], tmp_path / "none.png", runs=runs) is None
    with pytest.raises(ValueError, match="pass runs"):
        grokking_plots.plot_grokking_curves(curves, tmp_path / "x.png")


def test_phase_diagrams_and_a_parameter_that_was_not_searched(study, tmp_path):
    runs, _ = study
    phased = grokking_phases(runs)
    assert_png(grokking_plots.plot_phase_diagram(phased, tmp_path / "wd_d.png"))
    assert_png(grokking_plots.plot_phase_diagram(phased, tmp_path / "wd_lr.png", y_col="param.train.lr"))
    fixed_lr = phased.assign(**{"param.train.lr": 1e-3})
    assert grokking_plots.plot_phase_diagram(fixed_lr, tmp_path / "lr.png", y_col="param.train.lr") is None
    assert (
        grokking_plots.plot_phase_diagram(
            phased.drop(columns="param.train.lr"), tmp_path / "lr.png", y_col="param.train.lr"
        )
        is None
    )


def test_scaling_fit_two_and_one_variable(tmp_path):
    n, d = (a.ravel() for a in np.meshgrid(np.logspace(7, 10, 5), np.logspace(9, 12, 6)))
    loss = (1.69 + 406.4 / n**0.34 + 410.7 / d**0.28) * np.exp(
        np.random.default_rng(0).normal(0, 0.01, n.size)
    )
    fit = ScalingLawFit(
        variables=("N", "D"),
        convention="total",
        E=Estimate(1.69, 1.6, 1.8),
        A=Estimate(406.4, 350, 450),
        alpha=Estimate(0.34, 0.33, 0.35),
        B=Estimate(410.7, 300, 500),
        beta=Estimate(0.28, 0.27, 0.29),
        objective=0.0,
        n_points=n.size,
        n_inits=4500,
        n_boot=100,
        ci=0.95,
    )
    assert_png(scaling_plots.plot_scaling_fit(fit, n, d, loss, tmp_path / "law.png"), min_width=1000)
    x = np.logspace(7, 10, 7)
    one = fit_power_law(x, 1.69 + 406.4 / x**0.34, n_boot=10)
    assert_png(
        scaling_plots.plot_scaling_fit(one, x, None, 1.69 + 406.4 / x**0.34, tmp_path / "law_n.png"),
        min_width=1000,
    )
    assert scaling_plots.plot_scaling_fit(one, x[:0], None, x[:0], tmp_path / "none.png") is None


def test_mirage_side_by_side(tmp_path):
    x = np.repeat(np.logspace(3, 8, 11), 2)
    token = 1 - 0.5 * (x / 1e3) ** -0.5
    check = mirage_check(x, token**20, token, n_boot=20)
    assert_png(plots.plot_mirage(check, x, token**20, token, tmp_path / "mirage.png"), min_width=900)
    assert plots.plot_mirage(check, x[:0], x[:0], x[:0], tmp_path / "none.png") is None


def test_a_searched_log_axis_is_drawn_in_log():
    """Weight decay searched log-uniform from 0.3 to 3 spans under a decade in a small sample:
    the span alone would draw it linear; the search space says log."""
    from orchestrator.report.sections import searched_log

    config = {
        "search": {
            "space": {
                "train.weight_decay": {"type": "float", "low": 0.3, "high": 3.0, "log": True},
                "train.lr": {"type": "float", "low": 1e-3, "high": 1e-2},
            }
        }
    }
    wd = pd.Series([0.35, 0.8, 2.1])
    assert grokking_plots.axis_is_log(wd) is False
    assert searched_log(config, "param.train.weight_decay") is True
    assert grokking_plots.axis_is_log(wd, searched_log(config, "param.train.weight_decay")) is True
    assert searched_log(config, "param.train.lr") is False
    assert searched_log(config, "n_train") is None and searched_log({}, "param.train.weight_decay") is None
    assert grokking_plots.axis_is_log(pd.Series([700, 1200, 1700]), None) is False
    assert grokking_plots.axis_is_log(pd.Series([0.0, 1.0]), True) is False  # zero has no place on a log axis


def test_phase_diagram_fills_regions_where_runs_are_dense(tmp_path):
    from orchestrator.report.sections import regions_by_facet

    rng = np.random.default_rng(5)
    rows = []
    for n in (1e4, 1e5):
        for frac in (0.2, 0.35, 0.5, 0.65):
            for _ in range(6 if n == 1e4 else 1):  # dense at the small N, 4 runs at the large
                wd = float(10 ** rng.uniform(np.log10(0.3), np.log10(3)))
                if frac > 0.4 and wd > 1:
                    phase = "comprehension"
                elif frac > 0.4:
                    phase = "grokking"
                else:
                    phase = "memorization"
                rows.append(
                    {"n_params": n, "n_train": frac * 3481, "param.train.weight_decay": wd, "phase": phase}
                )
    table = pd.DataFrame(rows)
    regions = regions_by_facet(table, "param.train.weight_decay", "n_train", "n_params", True, None)
    assert set(regions) == {1e4, 1e5}
    assert regions[1e4].labels is not None and regions[1e4].log_x and not regions[1e4].log_y
    assert regions[1e5].labels is None and "4 runs" in regions[1e5].reason
    assert_png(
        grokking_plots.plot_phase_diagram(
            table, tmp_path / "regions.png", y_col="n_train", log_x=True, regions=regions
        ),
        min_width=700,
    )


def test_predictions_section_writes_json_and_markdown(study, tmp_path):
    """The section end to end on the synthetic study: D* bracketed per N from the runs, the
    law's backtest, the clock's backtest on the curves, the files and the metrics."""
    import json

    from orchestrator.report import prediction_section, sections
    from orchestrator.report.document import Inputs, Report, with_thresholds

    runs, curves = study
    config = {
        "train": {"steps": 10_000, "eval_every": 100, "lr": 1e-3},
        "search": {"space": {"train.weight_decay": {"type": "float", "low": 0.1, "high": 10, "log": True}}},
    }
    runs = with_thresholds(runs, config)
    inp = Inputs(config, runs, runs, curves, tmp_path, "n_params", "n_train", "max_val_acc", 0.02)
    report, results = Report(tmp_path), {}
    phases = sections.grokking(inp, report, results)
    prediction_section.predictions(inp, report, results, phases)
    saved = json.loads((tmp_path / "predictions" / "predictions.json").read_text())
    cd = saved["critical_data"]
    # The fixture generalizes when log10 N + 3 D_value > 5.7 (and weight decay > 0.3).
    brackets = {p["n"]: (p["low"], p["high"], p["censoring"]) for p in cd["points"]}
    assert brackets == {
        2e4: (1200, 1700, "interval"),
        5e4: (700, 1200, "interval"),
        1.2e5: (700, 1200, "interval"),
        3e5: (None, 700, "left"),
    }
    assert cd["law"]["direction"] in ("shrinks", "undecided") and [b["n"] for b in cd["backtest"]] == [
        1.2e5,
        3e5,
    ]
    assert cd["backtest"][-1]["agrees"] is True and cd["next"]["n"] == pytest.approx(3e5 * 3e5 / 1.2e5)
    gs = saved["generalization_step"]
    assert gs["n_scored"] > 0 and gs["predictions"] and gs["median_abs_error"] is not None
    md = (tmp_path / "predictions" / "predictions.md").read_text()
    assert "| held-out N |" in md and "| run | cell |" in md and "Huang et al. 2024" in md
    assert results["predictions"]["critical_data"]["law"] == cd["law"]
    assert "report/predictions/generalization_step/median_abs_error" in report.metrics
