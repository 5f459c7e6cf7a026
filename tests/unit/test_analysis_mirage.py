"""The mirage check (Schaeffer et al. 2023): a smooth power law is not emergent under a
continuous metric, while a thresholded version of it jumps under the discontinuous metric."""

import json

import numpy as np
import pandas as pd
import pytest

from orchestrator.analysis import emergence_threshold, mirage_check, mirage_checks

N = np.repeat(np.logspace(3, 8, 11), 3)  # 11 model sizes over 5 decades, 3 seeds each


def token_error(seed=0):
    """Per-token error falling as a smooth power law in N (exponent 0.5), with seed noise."""
    return np.clip(
        0.5 * (N / 1e3) ** -0.5 * np.exp(np.random.default_rng(seed).normal(0, 0.05, N.size)), 0, 1
    )


def test_smooth_power_law_is_not_emergent_but_its_exact_match_is():
    token_acc = 1 - token_error()
    exact_match = token_acc**20  # all 20 answer tokens right
    smooth = emergence_threshold(N, token_acc)
    assert not smooth.sharp and smooth.evidence < 0  # a power law fits it better than any jump
    jump = emergence_threshold(N, exact_match)
    assert jump.sharp and jump.threshold is not None and jump.evidence >= 6
    check = mirage_check(N, exact_match, token_acc)
    assert check.verdict == "mirage"
    assert check.discontinuous.sharp and not check.continuous.sharp
    assert "val_token_acc does not" in check.reason


def test_thresholding_a_continuous_metric_makes_a_jump():
    """y > 0.95 per run: a smooth metric read through a threshold."""
    token_acc = 1 - token_error(seed=1)
    passed = (token_acc > 0.95).astype(float)
    check = mirage_check(N, passed, token_acc, chance_discontinuous=0.0)
    assert check.verdict == "mirage"
    # token_acc crosses 0.95 where 0.5 (N/1e3)^-0.5 = 0.05, N = 1e5
    assert np.log10(check.discontinuous.threshold) == pytest.approx(5.0, abs=0.3)


def test_a_jump_that_survives_the_continuous_metric_is_emergent():
    x = N
    token_acc = 0.02 + 0.97 / (1 + np.exp(-(np.log10(x) - 5.5) / 0.2))  # the model itself jumps
    check = mirage_check(x, token_acc**10, token_acc)
    assert check.verdict == "emergent" and check.continuous.sharp


def test_a_flat_metric_is_not_emergent():
    rng = np.random.default_rng(0)
    check = mirage_check(N, 0.01 + 0.005 * rng.random(N.size), 0.1 + 0.01 * rng.random(N.size))
    assert check.verdict == "not emergent" and check.discontinuous.threshold is None
    assert json.loads(json.dumps(check.to_dict()))["discontinuous"]["threshold"] is None


def test_log_likelihood_is_checked_with_its_own_best_value():
    answer_logprob = -20 * (N / 1e3) ** -0.3  # nats; a power law approaching 0
    exact_match = np.exp(answer_logprob)
    check = mirage_check(
        N, exact_match, answer_logprob, continuous_metric="val_answer_logprob", best_continuous=0.0
    )
    assert check.verdict == "mirage" and not check.continuous.sharp


def test_mirage_checks_over_a_runs_table_per_group():
    token_acc = 1 - token_error()
    runs = pd.DataFrame(
        {
            "n_params": np.tile(N, 2),
            "d_value": np.repeat([0.3, 0.6], N.size),
            "val_acc": np.tile(token_acc**20, 2),
            "val_token_acc": np.tile(token_acc, 2),
            "status": "completed",
        }
    )
    checks = mirage_checks(runs, n_boot=20)  # val_answer_logprob is absent: that pair is skipped
    assert [(c.group, c.continuous_metric, c.verdict) for c in checks] == [
        (0.3, "val_token_acc", "mirage"),
        (0.6, "val_token_acc", "mirage"),
    ]


def test_three_scales_give_insufficient_data_not_a_verdict():
    # Shrunk mirage_addition as measured: the whole transition between two adjacent sizes.
    x = np.array([4e3, 1e4, 3e4])
    check = mirage_check(
        x,
        np.array([0.12, 1.0, 1.0]),
        np.array([0.78, 1.0, 1.0]),
        chance_discontinuous=0.0,
        chance_continuous=0.1,
    )
    assert check.verdict == "insufficient data" and "3 scales" in check.reason
