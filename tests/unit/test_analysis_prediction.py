"""Prediction, against planted answers: a power law D*(N) recovered from grid brackets and
predicted at the next size before it is "trained"; generalization steps planted proportional to
a decay clock recovered from the memorization step; and the refusals."""

import numpy as np
import pandas as pd
import pytest

from orchestrator.analysis.critical_data import critical_data_backtest, critical_data_sizes, fit_critical_data
from orchestrator.analysis.grokking_time import generalization_backtest

NS = np.array([1e4, 3e4, 1e5, 3e5, 1e6])


def grid_runs(d_star, ds, ns=NS, trials=2):
    """One row per run: every (N, D) cell, `trials` runs each; a run generalizes when D >= D*(N)
    (the first trial only, as a cell's tuning would find one good run)."""
    n, d, ok = [], [], []
    for size in ns:
        for v in ds:
            for t in range(trials):
                n.append(size)
                d.append(v)
                ok.append(bool(v >= d_star(size)) and t == 0)
    return np.array(n), np.array(d), np.array(ok)


@pytest.mark.parametrize("exponent", [-0.3, 0.25])
def test_planted_power_law_recovered_and_next_size_predicted(exponent):
    d_star = lambda n: 2000 * (n / 1e4) ** exponent  # noqa: E731
    ds = np.geomspace(100, 20000, 160)  # brackets 3.4% wide
    points = critical_data_sizes(*grid_runs(d_star, ds))
    assert [p.censoring for p in points] == ["interval"] * 5
    for p in points:
        assert p.low < d_star(p.n) <= p.high and p.high / p.low == pytest.approx(1.034, abs=1e-3)
    law = fit_critical_data(points)
    assert law.reason is None
    assert law.exponent.value == pytest.approx(exponent, abs=0.01)
    assert law.exponent.low <= exponent <= law.exponent.high
    assert law.direction == ("shrinks" if exponent < 0 else "grows")
    backtests = critical_data_backtest(points)
    assert [b.n for b in backtests] == list(NS[2:])
    last = backtests[-1]  # leave-last-out: fitted on the four smaller sizes
    assert last.fitted_sizes == tuple(NS[:4])
    assert abs(last.error) < 0.03 and last.agrees
    assert last.predicted.low <= d_star(1e6) <= last.predicted.high
    assert last.predicted.value == pytest.approx(d_star(1e6), rel=0.03)
    nxt = law.predict(3e6)  # the size the study would train next
    assert nxt.value == pytest.approx(d_star(3e6), rel=0.03)


def test_coarse_grid_keeps_the_gap_and_censoring_is_honest():
    d_star = lambda n: 500 * (n / 1e4) ** -0.5  # noqa: E731
    ds = np.array([100.0, 200.0, 400.0, 800.0])
    points = critical_data_sizes(*grid_runs(d_star, ds))
    by_n = {p.n: p for p in points}
    assert (by_n[1e4].censoring, by_n[1e4].low, by_n[1e4].high) == ("interval", 400, 800)
    assert (by_n[1e6].censoring, by_n[1e6].low, by_n[1e6].high) == ("left", None, 100)
    assert by_n[1e6].value is None
    law = fit_critical_data(points)
    assert law.direction == "shrinks"
    # The prediction's interval is that of every line through the brackets: it holds the truth.
    pred = law.predict(3e6)
    assert pred.low is not None and pred.low <= d_star(3e6) <= pred.high
    last = critical_data_backtest(points)[-1]
    assert last.observed.censoring == "left" and last.error is None and last.agrees


def test_refusals_insufficient_censored_and_not_a_power_law():
    ds = np.array([100.0, 200.0, 400.0])
    # Every size generalizes at the smallest D: nothing is bracketed on both sides.
    points = critical_data_sizes(*grid_runs(lambda n: 50.0, ds))
    law = fit_critical_data(points)
    assert law.exponent is None and law.predict(1e7) is None
    assert "insufficient data: 0 model size(s)" in law.reason and "D* <= 100" in law.reason
    # Never generalizes: right-censored.
    right = critical_data_sizes(*grid_runs(lambda n: 1e9, ds))
    assert {p.censoring for p in right} == {"right"} and right[0].low == 400
    # A zigzag no line passes through.
    zigzag = {1e4: 150.0, 3e4: 1000.0, 1e5: 150.0, 3e5: 1000.0, 1e6: 150.0}
    law = fit_critical_data(
        critical_data_sizes(*grid_runs(zigzag.get, np.array([100.0, 200, 400, 800, 1600])))
    )
    assert law.exponent is None and "no power law passes through every bracket" in law.reason
    # Too few sizes to backtest: a prediction needs two smaller sizes bracketed.
    assert critical_data_backtest(points[:2]) == ()
    assert "no law on the smaller sizes" in critical_data_backtest(points)[0].reason


def test_non_monotone_cell_is_noted():
    n = np.array([1e4] * 4)
    d = np.array([100.0, 200.0, 400.0, 800.0])
    ok = np.array([True, False, True, True])
    (p,) = critical_data_sizes(n, d, ok)
    assert (p.low, p.high) == (200, 400) and "not monotone" in p.note
    with pytest.raises(ValueError, match="same length"):
        critical_data_sizes(n, d[:2], ok)


def clock_runs(rng, cells: dict, per_cell=8, budget=10_000, every=10):
    """Runs with a constant schedule: clock(t) = lr x wd x t. Each memorizes at 100-300 steps and
    generalizes once it has gone the cell's Δ e-folds of decay since (rounded up to the eval grid)."""
    steps = np.arange(0, budget + 1, every, dtype=float)
    rows, clocks = [], {}
    for cell, delta in cells.items():
        for i in range(per_cell):
            run = f"{cell}-{i}"
            rate = 10 ** rng.uniform(-3.3, -2)
            mem = float(rng.integers(10, 30) * every)
            gen = mem + delta / rate
            gen = float(np.ceil(gen / every) * every) if gen <= budget else np.nan
            rows.append({"run_id": run, "cell": cell, "memorization_step": mem, "generalization_step": gen})
            clocks[run] = (steps, rate * steps)
    return pd.DataFrame(rows), clocks


def test_planted_clock_recovered_and_beats_the_step_baseline():
    rng = np.random.default_rng(0)
    runs, clocks = clock_runs(rng, {"N=1k/D=0.3": 6.0, "N=1k/D=0.5": 2.0})
    bt = generalization_backtest(runs, clocks)
    assert bt.reason is None and bt.n_scored == runs["generalization_step"].notna().sum()
    assert bt.median_abs_error < 0.02  # the eval grid's rounding only
    assert bt.baseline_median_abs_error > 0.3  # without the clock, the step is not predictable
    assert bt.missed == 0 and bt.surprised == 0
    never = [p for p in bt.predictions if p.observed is None]
    assert never and all(p.within_budget is False and p.predicted is None for p in never)
    assert all(p.pool == "cell" for p in bt.predictions)  # 8 runs per cell: no need to pool wider
    scored = [p for p in bt.predictions if p.error is not None]
    assert all(p.low <= p.observed + 10 and p.observed <= p.high + 10 for p in scored)


def test_small_cells_pool_by_data_size_then_study():
    """One run per cell (one N each), Δ set by D: each run learns from the runs at its D."""
    rng = np.random.default_rng(2)
    runs, clocks = clock_runs(rng, {"D=0.3": 6.0, "D=0.5": 2.0}, per_cell=5, budget=100_000)
    runs["d"] = runs["cell"]
    runs["cell"] = [f"N={i}/{d}" for i, d in enumerate(runs["d"])]
    bt = generalization_backtest(runs, clocks, pools=("cell", "d"))
    assert {p.pool for p in bt.predictions} == {"d"} and {p.n_pool for p in bt.predictions} == {4}
    assert bt.median_abs_error < 0.02
    study = generalization_backtest(runs, clocks)  # cells only: falls back to the whole study, both D mixed
    assert {p.pool for p in study.predictions} == {"study"}
    assert study.median_abs_error > 5 * bt.median_abs_error
    with pytest.raises(ValueError, match="at least one column"):
        generalization_backtest(runs, clocks, pools=())


def test_runs_that_generalize_as_they_memorize_are_scored_apart():
    """A run that generalizes at its memorization step is predicted "now" by any clock that has
    learned Δ = 0 from its like: it flatters the median error. The late runs are scored alone."""
    rng = np.random.default_rng(3)
    runs, clocks = clock_runs(rng, {"a": 3.0}, per_cell=8, budget=100_000)
    now = runs.index[:5]
    runs.loc[now, "generalization_step"] = runs.loc[now, "memorization_step"]  # comprehension: no delay
    bt = generalization_backtest(runs, clocks)
    assert bt.n_scored == 8 and bt.n_immediate == 5
    late = [p for p in bt.predictions if p.observed != p.memorization_step]
    assert len(late) == 3
    assert bt.late_median_abs_error == pytest.approx(np.median([abs(p.error) for p in late]))
    # Most of each run's pool learned Δ = 0, so the clock says "now" for every run: exact for
    # the five, far off for the three that took the planted 3 e-folds. The median over all eight
    # says the clock is perfect; over the late three it says what happened.
    assert bt.median_abs_error == 0.0 and bt.late_median_abs_error > 0.5
    assert bt.to_dict()["n_immediate"] == 5


def test_clock_refusals():
    rng = np.random.default_rng(1)
    runs, clocks = clock_runs(rng, {"a": 3.0}, per_cell=4)
    clocks["a-0"] = (clocks["a-0"][0], np.zeros_like(clocks["a-0"][0]))  # no weight decay
    runs.loc[1, "memorization_step"] = np.nan  # never memorized: not predicted at all
    runs.loc[2, "generalization_step"] = 50.0  # generalized before memorizing
    bt = generalization_backtest(runs, clocks)
    by_run = {p.run_id: p for p in bt.predictions}
    assert "a-1" not in by_run
    assert "clock does not move" in by_run["a-0"].reason
    assert "before it memorized" in by_run["a-2"].reason
    assert "0 other run(s)" in by_run["a-3"].reason  # a-0 has no clock, a-1 no memorization, a-2 went early
    assert bt.n_scored == 0 and "insufficient data" in bt.reason
    lone = generalization_backtest(runs.iloc[:0], clocks)
    assert "no run memorized" in lone.reason
    with pytest.raises(ValueError, match="no column 'cell'"):
        generalization_backtest(runs.drop(columns="cell"), clocks)
