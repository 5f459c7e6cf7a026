"""Emergence thresholds: the midpoint of a known sigmoid is found, and no threshold is claimed
where there is none."""

import json

import numpy as np
import pandas as pd
import pytest

from orchestrator.analysis import critical_sizes, emergence_threshold

MID = 5.2  # log10 of the true threshold


def sigmoid(x, mid=MID, width=0.3, floor=0.01, ceiling=0.99):
    return floor + (ceiling - floor) / (1 + np.exp(-(np.log10(x) - mid) / width))


def noisy_sigmoid(seeds=3, noise=0.03, rng_seed=0, **kwargs):
    x = np.repeat(np.logspace(3, 7, 9), seeds)
    return x, sigmoid(x, **kwargs) + np.random.default_rng(rng_seed).normal(0, noise, x.size)


def test_midpoint_of_a_noisy_sigmoid_within_5_percent_in_log_scale():
    x, y = noisy_sigmoid()
    fit = emergence_threshold(x, y, chance=0.01)
    assert fit.reason is None and fit.threshold is not None
    assert abs(np.log10(fit.threshold) - MID) <= 0.05 * MID
    assert abs(np.log10(fit.threshold) - MID) < 0.1  # in fact within 0.1 decades
    assert fit.low < fit.threshold < fit.high and np.log10(fit.high / fit.low) < 0.3
    assert fit.bootstrap == "cases" and fit.n_boot == 200
    assert fit.ceiling == pytest.approx(0.99, abs=0.03)
    assert fit.width_decades == pytest.approx(2 * np.log(9) * 0.3, rel=0.2)
    assert fit.bracket == (pytest.approx(10**5.0), pytest.approx(10**5.5))
    assert fit.sharp and fit.evidence > 6


def test_one_point_per_scale_uses_residual_bootstrap_and_is_reproducible():
    x = np.logspace(3, 7, 9)
    a = emergence_threshold(x, sigmoid(x) + np.random.default_rng(1).normal(0, 0.02, x.size), seed=7)
    b = emergence_threshold(x, sigmoid(x) + np.random.default_rng(1).normal(0, 0.02, x.size), seed=7)
    assert a.bootstrap == "residuals" and a.to_dict() == b.to_dict()
    assert abs(np.log10(a.threshold) - MID) < 0.1 and a.low < a.threshold < a.high


@pytest.mark.parametrize("level", [0.02, 0.3])
def test_flat_curves_have_no_threshold(level):
    x = np.repeat(np.logspace(3, 7, 9), 3)
    fit = emergence_threshold(x, level + np.random.default_rng(0).normal(0, 0.01, x.size))
    assert fit.threshold is None and fit.low is None and fit.high is None and not fit.sharp
    assert fit.reason.startswith("never leaves chance")
    assert json.loads(json.dumps(fit.to_dict()))["threshold"] is None


def test_a_curve_already_high_at_the_smallest_scale_has_no_threshold():
    x = np.logspace(3, 7, 9)
    fit = emergence_threshold(x, 0.9 + 0.02 * np.log10(x / 1e3), chance=0.01)
    assert fit.threshold is None and fit.reason.startswith("already high at the smallest scale")


def test_a_midpoint_beyond_the_largest_scale_is_not_a_threshold():
    x = np.logspace(3, 7, 9)
    fit = emergence_threshold(x, sigmoid(x, mid=7.2, width=0.5), chance=0.01)
    assert fit.threshold is None and "outside the measured range" in fit.reason
    assert fit.mid_log10 == pytest.approx(7.2, abs=0.05)  # still reported, for the record


def test_fewer_than_three_scales_is_no_threshold():
    fit = emergence_threshold([1e3, 1e3, 1e4, 1e4], [0.0, 0.0, 1.0, 1.0], chance=0.0)
    assert fit.threshold is None and fit.reason.startswith("fewer than 3 distinct scales")


def test_a_step_between_two_grid_scales_sits_halfway_between_them():
    x = np.logspace(3, 7, 9)  # half-decade grid
    fit = emergence_threshold(x, np.where(x > 2e5, 0.98, 0.02), chance=0.02)
    assert fit.bracket == (pytest.approx(1e5), pytest.approx(10**5.5))
    assert np.log10(fit.threshold) == pytest.approx(5.25, abs=0.02)
    assert fit.sharp


def test_a_loss_is_handled_with_lower_is_better():
    x, acc = noisy_sigmoid()
    up = emergence_threshold(x, acc, chance=0.01)
    down = emergence_threshold(x, 1 - acc, chance=0.99, best_value=0.0, higher_is_better=False)
    assert down.threshold == pytest.approx(up.threshold, rel=1e-9)
    assert down.floor == pytest.approx(0.99) and down.ceiling == pytest.approx(1 - up.ceiling)
    np.testing.assert_allclose(down.predict(x[:5]), 1 - up.predict(x[:5]))


def test_critical_size_lines_follow_a_known_boundary():
    # The ability appears when N * D > 1e8 (a width of 0.15 decades), on a 5 x 7 grid, 2 seeds.
    rng = np.random.default_rng(0)
    rows = [
        {
            "n_params": n,
            "n_train": d,
            "seed": s,
            "status": "completed",
            "max_val_acc": sigmoid(n * d, mid=8.0, width=0.15) + rng.normal(0, 0.01),
        }
        for n in np.logspace(3, 5, 5)
        for d in np.logspace(2.5, 5.5, 7)
        for s in range(2)
    ]
    rows.append(
        {"n_params": 1e3, "n_train": 1e4, "seed": 9, "status": "failed", "max_val_acc": 1.0}
    )  # ignored
    lines = critical_sizes(pd.DataFrame(rows), n_boot=50)
    d_star = {n: f for n, f in lines.d_star}
    for n, fit in d_star.items():
        assert fit.threshold is not None, fit.reason
        assert np.log10(fit.threshold) == pytest.approx(8 - np.log10(n), abs=0.1)
    ds, n_star = zip(*lines.n_star)  # in increasing D
    assert ds == pytest.approx(np.logspace(2.5, 5.5, 7))
    assert n_star[0].reason.startswith("never leaves chance")  # N*D <= 3e7 at the smallest D
    assert n_star[-1].reason.startswith("already high")  # N*D >= 3e8 at the largest D
    assert np.log10(n_star[3].threshold) == pytest.approx(4.0, abs=0.1)  # D = 1e4
    out = json.loads(json.dumps(lines.to_dict()))
    assert len(out["d_star"]) == 5 and len(out["n_star"]) == 7 and out["n_star"][0]["threshold"] is None


# Refusals: what the data cannot decide is reported as such.


def test_three_scales_and_a_clean_step_give_insufficient_data_and_the_whole_bracket():
    # The quickstart's shape: 2 runs at each of 1k, 3k and 10k parameters, a clean step 3k -> 10k.
    x = [1e3, 1e3, 3e3, 3e3, 1e4, 1e4]
    y = [0.01, 0.02, 0.015, 0.02, 0.97, 0.99]
    fit = emergence_threshold(x, y, chance=0.01)
    assert fit.threshold is not None and fit.bracket == (3e3, 1e4)
    assert (
        fit.sharp is None and "insufficient data: 3 scales" in fit.sharp_reason and "AICc" in fit.sharp_reason
    )
    assert fit.censored  # no scale inside the rise: the threshold is anywhere in the bracket
    assert fit.low <= 3e3 and fit.high >= 1e4  # was [5,477, 5,636] before: narrower than the gap
    assert json.loads(json.dumps(fit.to_dict()))["sharp"] is None


def test_a_scale_inside_the_rise_is_not_censored_and_five_scales_decide_sharpness():
    x = np.repeat(np.logspace(3, 5, 5), 2)
    fit = emergence_threshold(x, sigmoid(x, mid=4.0, width=0.25) + np.tile([-0.01, 0.01], 5), chance=0.01)
    assert fit.sharp is not None and fit.sharp_reason is None
    assert not fit.censored and not fit.low_unbounded and not fit.high_unbounded
    assert fit.low < fit.threshold < fit.high


def test_four_scales_are_not_enough_to_call_a_jump_sharp():
    x = np.repeat(np.logspace(3, 6, 4), 3)
    fit = emergence_threshold(
        x, sigmoid(x, mid=4.5, width=0.3) + np.random.default_rng(0).normal(0, 0.01, x.size), chance=0.01
    )
    assert fit.threshold is not None and fit.sharp is None and "4 scales" in fit.sharp_reason


def test_a_threshold_the_resamples_push_past_the_grid_has_an_unbounded_interval():
    # The jump starts at 3e6, but at the two largest scales one run of two stays at chance:
    # resampling runs often leaves no jump below 1e7, so the interval has no upper end in the grid.
    x = np.repeat(np.logspace(3, 7, 9), 2)
    y = np.where(x < 3e6, 0.02, 0.95)
    y[-4:] = [0.02, 0.95, 0.02, 0.97]
    fit = emergence_threshold(x, y, chance=0.02)
    assert fit.threshold is not None and fit.bracket == (pytest.approx(1e6), pytest.approx(10**6.5))
    assert fit.high_unbounded and fit.high is None
    assert not fit.low_unbounded and fit.low is not None and fit.low <= fit.threshold


def test_a_clean_acceptance_is_sharp_bounded_and_uncensored():
    x, y = noisy_sigmoid()
    fit = emergence_threshold(x, y, chance=0.01)
    assert fit.sharp is True and fit.sharp_reason is None
    assert not (fit.censored or fit.low_unbounded or fit.high_unbounded)
