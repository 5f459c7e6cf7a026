"""Coverage of intervals over backtests: exact binomial intervals, held or not, and the widening
that would have covered the nominal share."""

import math

import numpy as np
import pytest

from orchestrator.analysis.coverage import Check, clopper_pearson, coverage


def test_clopper_pearson_matches_known_values():
    # 7 of 10: (0.3475, 0.9333), the textbook exact interval.
    low, high = clopper_pearson(7, 10)
    assert low == pytest.approx(0.3475, abs=1e-4) and high == pytest.approx(0.9333, abs=1e-4)
    assert clopper_pearson(0, 5)[0] == 0.0 and clopper_pearson(5, 5)[1] == 1.0


def test_held_and_scale_on_each_side_and_in_log():
    assert Check(1.5, 1.0, 0.5, 2.0).held and Check(1.5, 1.0, 0.5, 2.0).scale == pytest.approx(0.5)
    assert not Check(3.0, 1.0, 0.5, 2.0).held and Check(3.0, 1.0, 0.5, 2.0).scale == pytest.approx(2.0)
    assert Check(100.0, 10.0, 5.0, None, log=True).held  # open above
    assert Check(1000.0, 10.0, 1.0, 100.0, log=True).scale == pytest.approx(2.0)  # two decades over one
    assert Check(0.5, 1.0, 1.0, 2.0).scale == math.inf  # no half-width on the truth's side


def test_a_calibrated_interval_covers_about_nominal_and_a_narrow_one_is_flagged():
    rng = np.random.default_rng(0)
    z90 = 1.6449
    truths = rng.normal(0, 1, 2000)
    calibrated = coverage("ok", [Check(t, 0.0, -z90, z90) for t in truths])
    assert calibrated.rate == pytest.approx(0.9, abs=0.02) and not calibrated.flagged
    assert calibrated.factor == pytest.approx(1.0, abs=0.05)
    narrow = coverage("narrow", [Check(t, 0.0, -z90 / 3, z90 / 3) for t in truths])
    assert narrow.flagged and narrow.factor == pytest.approx(3.0, abs=0.15)
    assert coverage("none", []).rate is None
