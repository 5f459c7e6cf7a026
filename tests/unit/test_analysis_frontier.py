"""The compute-optimal frontier: approach 3 in closed form from L(N, D), approach 1 from the
lower envelope of training curves, the loss-law backtest, and the speed of all three."""

import json
import time

import numpy as np
import pytest

from orchestrator.analysis import (
    Estimate,
    ScalingLawFit,
    extrapolation_backtest,
    fit_envelope,
    fit_isoflop,
    fit_scaling_law,
    loss_law_frontier,
)

# Hoffmann et al. (2022), eq. 10.
E, A, B, ALPHA, BETA = 1.69, 406.4, 410.7, 0.34, 0.28
A_OPT = BETA / (ALPHA + BETA)  # 0.4516
G_OPT = (ALPHA * A / (BETA * B)) ** (1 / (ALPHA + BETA))  # 1.3447


def chinchilla(n, d):
    return E + A / n**ALPHA + B / d**BETA


def exact_law(k_boot: int = 0) -> ScalingLawFit:
    """The Chinchilla law as a fit result, without fitting."""
    boot = np.tile([E, A, ALPHA, B, BETA], (k_boot, 1)) if k_boot else None
    return ScalingLawFit(
        ("N", "D"),
        "total",
        Estimate(E),
        Estimate(A),
        Estimate(ALPHA),
        Estimate(B),
        Estimate(BETA),
        objective=0.0,
        n_points=0,
        n_inits=0,
        n_boot=k_boot,
        ci=0.95,
        boot=boot,
    )


ISOFLOP_BUDGETS = np.logspace(18, 22, 5)
CURVE_SIZES = np.logspace(7, 10, 25)


def isoflop_runs(budgets=ISOFLOP_BUDGETS, noise=0.0, seed=0):
    """5 sizes per budget around the law's optimum (a factor 10 either side), final loss from the law."""
    rng = np.random.default_rng(seed)
    n = np.concatenate([G_OPT * (c / 6) ** A_OPT * np.logspace(-1, 1, 5) for c in budgets])
    c = np.repeat(budgets, 5)
    return n, c, chinchilla(n, c / (6 * n)) * np.exp(rng.normal(0, noise, n.size))


def training_curves(sizes=CURVE_SIZES, c_end=1e22, n_eval=40):
    """One curve per size, every run trained to c_end, evaluated at log-spaced tokens from 1e8;
    each point is the law's loss (as if the schedule matched every length)."""
    run, n, flops, loss = [], [], [], []
    for i, size in enumerate(sizes):
        d = np.logspace(8, np.log10(c_end / (6 * size)), n_eval)
        run += [f"r{i}"] * n_eval
        n.append(np.full(n_eval, size))
        flops.append(6 * size * d)
        loss.append(chinchilla(size, d))
    return run, np.concatenate(n), np.concatenate(flops), np.concatenate(loss)


def test_closed_form_matches_a_numerical_search_along_each_isoflop():
    budgets = [1e19, 1e21, 5.76e23]  # 5.76e23: Chinchilla's budget
    fr = loss_law_frontier(exact_law(), budgets)
    assert fr.a.value == pytest.approx(A_OPT) and fr.b.value == pytest.approx(1 - A_OPT)
    assert fr.G.value == pytest.approx(G_OPT)
    for c, point in zip(budgets, fr.points):
        n = np.logspace(6, 13, 200001)
        best = n[np.argmin(chinchilla(n, c / (6 * n)))]
        assert point.N_opt.value == pytest.approx(best, rel=1e-3)
        assert point.L_opt.value == pytest.approx(chinchilla(best, c / (6 * best)), rel=1e-9)
        assert point.tokens_per_param.value == pytest.approx(point.D_opt.value / point.N_opt.value)
    # At Chinchilla's budget the fitted law gives about 40B parameters (their Table 3 reads
    # eq. 10 as ~40B for 5.76e23 FLOPs, against the 70B trained).
    assert 3e10 < fr.points[-1].N_opt.value < 5e10
    assert fr.points[0].N_opt.low is None  # a law without resamples has no interval


def test_flops_per_token_changes_the_budget_not_the_exponents():
    six, eight = (loss_law_frontier(exact_law(), [1e20], flops_per_token=k) for k in (6.0, 8.0))
    assert six.a.value == eight.a.value and six.G.value == eight.G.value
    assert eight.points[0].N_opt.value == pytest.approx(G_OPT * (1e20 / 8) ** A_OPT)
    assert eight.to_dict()["flops_per_token"] == 8.0


def test_a_one_variable_law_has_no_frontier():
    fit = ScalingLawFit(
        ("N",), "total", Estimate(E), Estimate(A), Estimate(ALPHA), None, None, 0.0, 0, 0, 0, 0.95
    )
    fr = loss_law_frontier(fit, [1e20])
    assert fr.a is None and fr.reason.startswith("insufficient data") and fr.to_dict()["frontier"] == []


@pytest.fixture(scope="module")
def all_three():
    """Approaches 1-3 with 200 bootstrap resamples each on 25 runs, and their CPU time."""
    n, c, loss = isoflop_runs(noise=0.002)  # 5 budgets x 5 sizes
    curves = training_curves(sizes=np.logspace(7, 10, 25))
    start = time.process_time()
    iso = fit_isoflop(n, c, loss, n_boot=200)
    env = fit_envelope(*curves, n_boot=200)
    fit = fit_scaling_law(n, c / (6 * n), loss, n_boot=200)
    law = loss_law_frontier(fit, [1e20])
    return {"iso": iso, "env": env, "fit": fit, "law": law, "cpu": time.process_time() - start}


def test_fitted_planted_law_gives_back_a_b_and_g_with_intervals(all_three):
    fit, fr = all_three["fit"], all_three["law"]
    assert fit.boot.shape == (fit.n_boot, 5) and fit.n_boot > 150
    assert fr.a.value == pytest.approx(A_OPT, abs=0.02) and fr.b.value == pytest.approx(1 - A_OPT, abs=0.02)
    assert fr.G.value == pytest.approx(G_OPT, rel=0.5)  # G multiplies C^0.45: a small change in a moves it
    for name in ("a", "G"):
        est = getattr(fr, name)
        assert est.low <= est.value <= est.high
    point = fr.points[0]
    assert point.N_opt.low < G_OPT * (1e20 / 6) ** A_OPT < point.N_opt.high
    out = json.loads(json.dumps(fr.to_dict()))
    assert {"a_low", "a_high", "b_low", "G_high"} <= set(out) and out["frontier"][0]["flops"] == 1e20


def test_envelope_of_planted_curves_follows_the_optimum():
    env = fit_envelope(*training_curves(), n_boot=100, budgets=[1e19, 1e21])
    fr = env.frontier
    assert fr.reason is None and fr.a.value == pytest.approx(A_OPT, abs=0.03)
    assert fr.a.low <= fr.a.value <= fr.a.high and fr.b.value == pytest.approx(1 - fr.a.value)
    for point in fr.points:  # the envelope picks the grid size nearest the optimum
        assert abs(np.log10(point.N_opt.value / (G_OPT * (point.flops / 6) ** A_OPT))) < 0.1
        assert point.L_opt.value == pytest.approx(chinchilla(point.N_opt.value, point.D_opt.value), rel=1e-3)
    assert len(env.flops) == 200 and env.run[0] != env.run[-1]
    json.dumps(env.to_dict())


def test_envelope_through_too_few_sizes_is_insufficient_data():
    run, n, flops, loss = training_curves(sizes=np.array([1e7, 1e10]))
    env = fit_envelope(run, n, flops, loss, n_boot=20)
    assert env.frontier.a is None and env.frontier.reason.startswith("insufficient data: the envelope passes")
    with pytest.raises(ValueError, match="2 different N"):
        fit_envelope(["x", "x", "y"], [1e6, 2e6, 1e6], [1e15, 2e15, 1e15], [3.0, 2.0, 3.0])


def test_loss_law_backtest_predicts_the_largest_budget():
    n, c, loss = isoflop_runs(noise=0.002)
    iso, law = extrapolation_backtest(n, c, loss, n_boot=40)
    assert (iso.approach, law.approach) == ("isoflop", "loss_law") and law.flops == 1e22 and law.n_runs == 20
    assert law.reason is None and abs(law.N_opt_error) < 0.25 and abs(law.L_opt_error) < 0.01
    assert iso.reason is None and abs(iso.N_opt_error) < 0.25
    # Approach 2's loss extrapolation is a pure power law in C: without the irreducible E it
    # overstates the improvement (measured: -7% over one decade here); the full law does not.
    assert -0.15 < iso.L_opt_error < -0.02 and abs(law.L_opt_error) < abs(iso.L_opt_error) / 3


def test_all_three_approaches_with_bootstraps_take_seconds_on_25_runs(all_three):
    assert all_three["iso"].frontier.n_boot > 150 and all_three["env"].frontier.n_boot > 150
    assert all_three["iso"].frontier.a.value == pytest.approx(A_OPT, abs=0.02)
    # CPU seconds, not wall time, so a loaded machine does not fail it. Measured on the shared
    # 2-core machine: ~8 s, nearly all in L(N, D)'s grid of 4,500 starts; approaches 1 and 2
    # take well under a second together.
    assert all_three["cpu"] < 30, all_three["cpu"]


def test_plots_draw_the_records_and_skip_empty_ones(all_three, tmp_path):
    from orchestrator.report.scaling_plots import plot_frontiers, plot_isoflop_curves

    fronts = [all_three["env"].frontier, all_three["iso"].frontier, all_three["law"]]
    assert plot_isoflop_curves(all_three["iso"], tmp_path / "iso.png").stat().st_size > 10_000
    assert plot_frontiers(fronts, tmp_path / "frontier.png").stat().st_size > 10_000
    assert plot_frontiers([], tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()
