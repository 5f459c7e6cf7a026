"""Grokking events and phases on hand-made curves, with the steps computed by hand."""

import numpy as np
import pandas as pd
import pytest

from orchestrator.analysis import curve_events, grokking_events, grokking_phase, grokking_phases

STEPS = np.arange(0, 10001, 100)


def ramp(step_at: int | None, low=0.0, high=1.0):
    """Accuracy `low` before step_at and `high` from it on (never reaching it when None)."""
    if step_at is None:
        return np.full(STEPS.size, low)
    return np.where(step_at <= STEPS, high, low)


def test_a_grokking_curve():
    ev = grokking_events(STEPS, ramp(300), ramp(5000, low=0.02))
    assert (ev.memorization_step, ev.generalization_step, ev.delay) == (300, 5000, 4700)
    assert ev.ratio == pytest.approx(5000 / 300)
    assert ev.phase == "grokking" and ev.last_step == 10000


def test_thresholds_are_inclusive_and_explicit():
    train = np.where(STEPS >= 200, 0.99, 0.5)  # exactly at the default 0.99
    val = np.where(STEPS >= 1000, 0.95, np.where(STEPS >= 400, 0.9, 0.1))
    assert grokking_events(STEPS, train, val).generalization_step == 1000
    ev = grokking_events(STEPS, train, val, val_threshold=0.9)
    assert (ev.memorization_step, ev.generalization_step, ev.phase) == (200, 400, "comprehension")
    assert grokking_events(STEPS, train, val, train_threshold=0.995).memorization_step is None


def test_comprehension_memorization_and_confusion():
    assert grokking_events(STEPS, ramp(300), ramp(600)).phase == "comprehension"  # 2x later
    mem = grokking_events(STEPS, ramp(300), ramp(None, low=0.3))
    assert (mem.phase, mem.generalization_step, mem.delay, mem.ratio) == ("memorization", None, None, None)
    conf = grokking_events(STEPS, ramp(None, high=0.5, low=0.5), ramp(None, low=0.1))
    assert (conf.phase, conf.memorization_step) == ("confusion", None)


def test_the_ratio_rule_and_an_absolute_delay():
    assert grokking_phase(300, 2999) == "comprehension"  # just under 10x
    assert grokking_phase(300, 3000) == "grokking"  # 10x: one decade later
    assert grokking_phase(300, 3000, min_ratio=20) == "comprehension"
    # Liu et al.'s toy-model rule adds an absolute lag: 10x later but only 900 steps later
    assert grokking_phase(100, 1000, min_delay=1000) == "comprehension"
    assert grokking_phase(100, 1100, min_delay=1000) == "grokking"
    assert grokking_phase(None, 500) == "comprehension"  # generalized without the strict train threshold
    assert grokking_phase(float("nan"), float("nan")) == "confusion"


def test_unsorted_curves_and_missing_values():
    order = np.random.default_rng(0).permutation(STEPS.size)
    train, val = ramp(300), ramp(5000, low=0.02)
    val = val.astype(float)
    val[STEPS == 5000] = np.nan  # a missing evaluation is below threshold
    ev = grokking_events(STEPS[order], train[order], val[order])
    assert (ev.memorization_step, ev.generalization_step) == (300, 5100)


def test_phases_of_a_runs_table():
    runs = pd.DataFrame(
        {
            "memorization_step": [300, 300, 300, np.nan, 300, 300],
            "generalization_step": [5000, 600, np.nan, np.nan, np.nan, 5000],
            "status": ["completed", "completed", "completed", "completed", "diverged", "failed"],
        }
    )
    out = grokking_phases(runs)
    assert out["phase"].tolist()[:5] == [
        "grokking",
        "comprehension",
        "memorization",
        "confusion",
        "confusion",
    ]
    assert pd.isna(out["phase"].iloc[5])  # a failed run has no phase
    assert out["grokking_ratio"].iloc[0] == pytest.approx(5000 / 300) and pd.isna(
        out["grokking_ratio"].iloc[2]
    )
    assert "phase" not in runs.columns  # the input is not modified


def test_events_from_a_long_curves_table():
    curves = pd.concat(
        [
            pd.DataFrame({"run_id": "a", "step": STEPS, "train_acc": ramp(300), "val_acc": ramp(5000)}),
            pd.DataFrame({"run_id": "b", "step": STEPS, "train_acc": ramp(200), "val_acc": ramp(400)}),
        ]
    )
    out = curve_events(curves).set_index("run_id")
    assert out.loc["a", "phase"] == "grokking" and out.loc["b", "phase"] == "comprehension"
    assert out.loc["b", "delay"] == 200
