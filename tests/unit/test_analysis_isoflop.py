"""Approach 2 (IsoFLOP parabolas) gives back planted minima, refuses what it cannot decide, and
backtests its extrapolation."""

import json

import numpy as np
import pytest

from orchestrator.analysis import extrapolation_backtest, fit_isoflop
from orchestrator.analysis.isoflop import group_budgets

A_TRUE, G_TRUE = 0.5, 0.1  # planted N_opt = G (C/6)^a
BUDGETS = np.logspace(17, 20, 4)
OFFSETS = np.linspace(-1.5, 1.2, 5)  # ln(N / N*): asymmetric about the minimum


def l_star(c):
    """The planted minimum loss per budget: a pure power law in C, so the backtest can be exact."""
    return 2.0 * (c / 1e17) ** -0.05


def planted_runs(budgets=BUDGETS, offsets=OFFSETS, curvature=0.1, seeds=1, noise=0.0, seed=0):
    """Runs on exact parabolas in ln N: loss = L*(C) + curvature (ln N - ln N*)^2, N* = G (C/6)^a.
    The sizes are N* e^offset, asymmetric about the minimum so its middle size is not the answer."""
    rng = np.random.default_rng(seed)
    n, c, loss = [], [], []
    for budget in budgets:
        n_star = G_TRUE * (budget / 6) ** A_TRUE
        for off in np.repeat(offsets, seeds):
            n.append(n_star * np.exp(off))
            c.append(budget)
            loss.append(l_star(budget) + curvature * off**2 + rng.normal(0, noise))
    return np.array(n), np.array(c), np.array(loss)


def test_noise_free_parabolas_give_back_their_minima_and_the_power_law():
    fit = fit_isoflop(*planted_runs(), n_boot=20)
    for budget, point in zip(BUDGETS, fit.frontier.points):
        n_star = G_TRUE * (budget / 6) ** A_TRUE
        assert point.flops == budget and point.trusted
        assert point.N_opt.value == pytest.approx(n_star, rel=1e-9)
        assert point.L_opt.value == pytest.approx(l_star(budget), rel=1e-9)
        assert point.D_opt.value == pytest.approx(budget / (6 * n_star), rel=1e-9)
        assert point.tokens_per_param.value == pytest.approx(budget / (6 * n_star**2), rel=1e-9)
    assert fit.frontier.a.value == pytest.approx(A_TRUE, abs=1e-9)
    assert fit.frontier.b.value == pytest.approx(1 - A_TRUE, abs=1e-9)
    assert fit.frontier.G.value == pytest.approx(G_TRUE, rel=1e-7)
    assert fit.frontier.residual_rms < 1e-9 and fit.frontier.n_fit == 4
    assert all(b.resample == "residuals" for b in fit.budgets)
    assert all(p.N_opt.low == pytest.approx(p.N_opt.value) for p in fit.frontier.points)  # no noise, no width


def test_noisy_runs_give_intervals_that_cover_the_truth_most_of_the_time():
    covered, widths = [], []
    for seed in range(10):
        fit = fit_isoflop(*planted_runs(seeds=3, noise=0.003, seed=seed), n_boot=200, seed=seed)
        a = fit.frontier.a
        assert a.low < a.value < a.high and abs(a.value - A_TRUE) < 0.02
        for budget, point in zip(BUDGETS, fit.frontier.points):
            covered.append(point.N_opt.low < G_TRUE * (budget / 6) ** A_TRUE < point.N_opt.high)
            widths.append(np.log(point.N_opt.high / point.N_opt.low))
            assert point.D_opt.low < point.D_opt.value < point.D_opt.high  # N's interval, mapped and swapped
    # The noise moves ln N_opt by about 0.0047 (sd, measured): a 95% interval is about 4 sd wide.
    assert np.mean(covered) >= 0.8 and 0.01 < np.median(widths) < 0.03


def test_an_unbracketed_minimum_is_flagged_and_left_out_of_the_power_law():
    n, c, loss = planted_runs()
    # At the largest budget sample only sizes above the optimum: the fitted minimum is below them.
    big = c == BUDGETS[-1]
    n[big] = G_TRUE * (BUDGETS[-1] / 6) ** A_TRUE * np.exp(np.linspace(0.5, 2.0, big.sum()))
    loss[big] = l_star(BUDGETS[-1]) + 0.1 * np.linspace(0.5, 2.0, big.sum()) ** 2
    fit = fit_isoflop(n, c, loss, n_boot=20)
    last = fit.frontier.points[-1]
    assert not last.trusted and last.reason.startswith("minimum not bracketed")
    assert not fit.budgets[-1].bracketed and fit.frontier.n_fit == 3
    assert fit.frontier.a.value == pytest.approx(A_TRUE, abs=1e-9)  # from the three good budgets


def test_too_few_budgets_is_insufficient_data_not_a_number():
    n, c, loss = planted_runs(budgets=BUDGETS[:2])
    fit = fit_isoflop(n, c, loss, n_boot=10)
    assert fit.frontier.a is None and fit.frontier.G is None
    assert fit.frontier.reason.startswith("insufficient data: 2 budget(s)")
    assert all(p.trusted for p in fit.frontier.points)  # the per-budget minima are still reported
    out = fit.to_dict()
    assert out["a"] is None and out["a_low"] is None and len(out["frontier"]) == 2
    json.dumps(out)


def test_a_concave_budget_and_a_budget_with_two_sizes_are_refused_with_reasons():
    n, c, loss = planted_runs()
    flip = c == BUDGETS[0]
    loss[flip] = 2 * l_star(BUDGETS[0]) - loss[flip]  # opens downward
    keep = ~((c == BUDGETS[1]) & (np.arange(c.size) % 5 > 1))  # two sizes left at the second budget
    fit = fit_isoflop(n[keep], c[keep], loss[keep], n_boot=10)
    first, second = fit.budgets[:2]
    assert first.N_opt is None and "not convex" in first.reason
    assert second.coef is None and second.reason.startswith("2 model size(s)")
    assert fit.frontier.reason.startswith("insufficient data: 2 budget(s) with a bracketed minimum (of 4)")


def test_budgets_rounded_in_a_csv_are_grouped_and_bad_input_refused():
    flops = np.array([1e18, 1.0000001e18, 3e18, 2.9999999e18, 1e19])
    groups = group_budgets(flops, 1e-3)
    assert [list(map(int, idx)) for _, idx in groups] == [[0, 1], [3, 2], [4]]
    with pytest.raises(ValueError, match="loss: every value must be finite and > 0"):
        fit_isoflop([1e6, 2e6], [1e18, 1e18], [1.0, -1.0])
    with pytest.raises(ValueError, match="same length"):
        fit_isoflop([1e6, 2e6], [1e18], [1.0, 1.0])


def test_backtest_on_exact_power_laws_predicts_the_largest_budget():
    n, c, loss = planted_runs(budgets=np.logspace(17, 20, 5))
    (iso,) = extrapolation_backtest(n, c, loss, predictors=("isoflop",), n_boot=20)
    assert iso.flops == 1e20 and iso.n_budgets == 4 and iso.n_runs == 20 and iso.reason is None
    assert iso.N_opt_error == pytest.approx(0, abs=1e-7) and iso.L_opt_error == pytest.approx(0, abs=1e-7)
    assert iso.N_opt_observed.value == pytest.approx(G_TRUE * (1e20 / 6) ** A_TRUE, rel=1e-9)


def test_backtest_without_enough_smaller_budgets_says_why():
    (iso,) = extrapolation_backtest(*planted_runs(budgets=BUDGETS[:3]), predictors=("isoflop",), n_boot=10)
    assert iso.N_opt_predicted is None and iso.N_opt_error is None
    assert iso.reason.startswith("no fit on the smaller budgets: insufficient data: 2 budget(s)")
    assert json.loads(json.dumps(iso.to_dict()))["N_opt_observed"] > 0
