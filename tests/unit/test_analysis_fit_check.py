"""A scaling fit that does not describe its data is rejected, with its reasons; a clean fit of a
planted law is accepted (orchestrator/analysis/fit_check.py)."""

import numpy as np

from orchestrator.analysis import fit_scaling_law
from orchestrator.analysis.fit_check import check_fit

# Hoffmann et al. (2022)'s fitted law, as the planted truth.
E, A, ALPHA, B, BETA = 1.69, 406.4, 0.34, 410.7, 0.28


def planted(noise=0.005, seed=0):
    n, d = (g.ravel() for g in np.meshgrid(np.logspace(6, 9, 6), np.logspace(8, 11, 6)))
    loss = E + A / n**ALPHA + B / d**BETA
    return n, d, loss * np.exp(np.random.default_rng(seed).normal(0, noise, n.size))


def test_a_planted_law_is_accepted():
    n, d, loss = planted()
    fit = fit_scaling_law(n, d, loss, n_boot=100)
    check = check_fit(fit, n, d, loss)
    assert check.accepted and check.reasons == () and check.r2_log > 0.95


def test_losses_set_by_something_else_are_rejected_for_their_residuals():
    # A grokking study: the loss depends on which runs generalized, not on N and D.
    n, d, _ = planted()
    loss = np.random.default_rng(1).choice([0.01, 4.0], size=n.size)
    check = check_fit(fit_scaling_law(n, d, loss, n_boot=50), n, d, loss)
    assert not check.accepted and any(r.startswith("residuals") for r in check.reasons)


def test_a_step_in_d_drives_parameters_to_their_bounds_and_is_rejected():
    # The quickstart's shape: 3 N x 3 D, loss near zero once D passes a threshold, else high.
    n = np.repeat([5e3, 1.5e4, 5.7e4], 3).astype(float)
    d = np.tile([696.0, 1218.0, 1740.0], 3)
    loss = np.where(d > 1000, 1e-3, 3.5) * np.exp(np.random.default_rng(2).normal(0, 0.05, n.size))
    check = check_fit(fit_scaling_law(n, d, loss, n_boot=50), n, d, loss)
    assert not check.accepted
    assert any("bound" in r or "interval" in r for r in check.reasons), check.reasons


def test_too_few_noisy_points_give_intervals_that_span_decades():
    n, d, loss = planted(noise=0.08, seed=3)
    keep = np.random.default_rng(4).choice(n.size, 7, replace=False)
    fit = fit_scaling_law(n[keep], d[keep], loss[keep], n_boot=100)
    check = check_fit(fit, n[keep], d[keep], loss[keep])
    assert not check.accepted and any("interval" in r for r in check.reasons), check.reasons
