"""Phase regions against a planted layout: runs drawn from known regions of the (log weight
decay, training fraction) plane, the regions recovered at held-out points; too few or too
scattered runs give no regions, with the reason."""

import numpy as np
import pytest

from orchestrator.analysis.phase_regions import phase_regions


def planted(log_wd: np.ndarray, frac: np.ndarray) -> np.ndarray:
    """A Liu et al.-like layout over log10 wd in [-1, 1] x fraction in [0.1, 0.9]: confusion
    at too much decay, memorization at too little decay or data, comprehension at much data
    and decay, grokking in between (boundaries curved in log wd)."""
    out = np.where(frac < 0.3 + 0.1 * log_wd, "memorization", "grokking")
    out = np.where((out == "grokking") & (log_wd < -0.4), "memorization", out)
    out = np.where((out == "grokking") & (frac > 0.65 - 0.15 * log_wd), "comprehension", out)
    return np.where(log_wd > 0.7, "confusion", out)


def draw(rng, n: int, fractions: np.ndarray | None = None):
    log_wd = rng.uniform(-1, 1, n)
    frac = rng.choice(fractions, n) if fractions is not None else rng.uniform(0.1, 0.9, n)
    return 10**log_wd, frac, planted(log_wd, frac)


@pytest.mark.parametrize("fractions", [None, np.linspace(0.1, 0.9, 9)], ids=["continuous", "grid-of-9"])
def test_planted_regions_recovered_at_held_out_points(fractions):
    rng = np.random.default_rng(0)
    wd, frac, phase = draw(rng, 300, fractions)
    regions = phase_regions(wd, frac, phase, log_x=True, log_y=False)
    assert regions.reason is None and regions.labels is not None
    assert regions.loo_accuracy > 0.85
    assert regions.x_edges[0] == pytest.approx(wd.min()) and regions.x_edges[-1] == pytest.approx(wd.max())
    test_wd, test_frac, truth = draw(rng, 400, fractions)
    inside = (
        (test_wd >= wd.min()) & (test_wd <= wd.max()) & (test_frac >= frac.min()) & (test_frac <= frac.max())
    )
    guess = regions.classify(test_wd[inside], test_frac[inside])
    accuracy = np.mean(guess == truth[inside])
    assert accuracy > 0.92, (
        accuracy
    )  # 0.86-0.92 with 100 runs: the boundaries are only as sharp as the runs are dense
    assert set(guess) == {"comprehension", "grokking", "memorization", "confusion"}


def test_a_linear_axis_misreads_a_log_layout():
    """The same runs measured on a linear weight-decay axis: decades below 1 are squeezed into
    a sliver, so the held-out accuracy drops. The search space's scale matters."""
    rng = np.random.default_rng(1)
    wd, frac, phase = draw(rng, 60)
    test_wd, test_frac, truth = draw(rng, 400)
    inside = (
        (test_wd >= wd.min()) & (test_wd <= wd.max()) & (test_frac >= frac.min()) & (test_frac <= frac.max())
    )
    acc = {
        log: np.mean(
            phase_regions(wd, frac, phase, log_x=log, log_y=False).classify(
                test_wd[inside], test_frac[inside]
            )
            == truth[inside]
        )
        for log in (True, False)
    }
    assert acc[True] > acc[False] + 0.03, acc


def test_too_few_runs_or_values_give_no_regions():
    rng = np.random.default_rng(2)
    wd, frac, phase = draw(rng, 6)  # the quickstart's 3 fractions x 2 trials in one N
    few = phase_regions(wd, frac, phase, log_x=True, log_y=False)
    assert few.labels is None and "6 runs" in few.reason and "16" in few.reason
    assert list(few.classify([1.0], [0.5])) == [None]
    wd, frac, phase = draw(rng, 40, fractions=np.array([0.3, 0.7]))
    two = phase_regions(wd, frac, phase, log_x=True, log_y=False)
    assert two.labels is None and "2 distinct values of y" in two.reason


def test_phases_unrelated_to_the_plane_give_no_regions():
    rng = np.random.default_rng(3)
    wd, frac = 10 ** rng.uniform(-1, 1, 80), rng.uniform(0.1, 0.9, 80)
    noise = rng.choice(["comprehension", "grokking", "memorization", "confusion"], 80)
    regions = phase_regions(wd, frac, noise, log_x=True, log_y=False)
    assert regions.labels is None and regions.loo_accuracy < 0.6 and "do not form regions" in regions.reason


def test_unlabelled_and_bad_rows_are_dropped_and_lengths_checked():
    rng = np.random.default_rng(4)
    wd, frac, phase = draw(rng, 40)
    phase = phase.astype(object)
    phase[:5] = None
    wd[5] = -1.0  # not on a log axis
    regions = phase_regions(wd, frac, phase, log_x=True, log_y=False)
    assert regions.n_points == 34 and regions.to_dict()["drawn"]
    with pytest.raises(ValueError, match="same length"):
        phase_regions(wd[:3], frac, phase, log_x=True, log_y=False)
