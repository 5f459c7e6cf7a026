"""The transfer check (analysis/transfer.py, `grokscale fit transfer`) on planted trials:
loss = 2 + 0.05 (ln lr - ln lr*(N))^2 + noise with lr*(N) = 0.1 (N / 1e6)^e, on a grid of 13
learning rates 2^-12 .. 1 x 3 seeds at 5 sizes over two decades of N."""

import json

import numpy as np
import pandas as pd
import pytest

from orchestrator.analysis.transfer import TOLERANCE, transfer_check
from orchestrator.cli import main

from support import cli

SIZES = np.logspace(6, 8, 5)
GRID = 2.0 ** np.arange(-12, 1)


def planted(rng, e, noise=0.01, sizes=SIZES, grid=GRID, seeds=3):
    """(N, lr, loss) per trial."""
    n, lr = (a.ravel() for a in np.meshgrid(sizes, np.repeat(grid, seeds), indexing="ij"))
    lr_star = 0.1 * (n / 1e6) ** e
    return n, lr, 2.0 + 0.05 * (np.log(lr) - np.log(lr_star)) ** 2 + rng.normal(0, noise, n.size)


def test_noise_free_optima_and_exponent_are_exact():
    res = transfer_check(*planted(np.random.default_rng(0), -0.5, noise=0.0), param_name="lr", n_boot=20)
    assert [o.optimum.value for o in res.optima] == pytest.approx(0.1 * (SIZES / 1e6) ** -0.5)
    assert res.exponent.value == pytest.approx(-0.5) and not any(o.at_edge for o in res.optima)


@pytest.mark.parametrize("e, verdict", [(0.0, True), (-0.5, False)])
def test_the_exponent_is_recovered_and_the_verdict_follows(e, verdict):
    res = transfer_check(*planted(np.random.default_rng(1), e, noise=0.03), param_name="lr", n_boot=200)
    assert abs(res.exponent.value - e) < 0.1
    assert res.exponent.low <= res.exponent.value <= res.exponent.high
    assert res.transfers is verdict
    if verdict:
        assert "transfers" in res.reason and abs(res.exponent.high) <= TOLERANCE
    else:
        e, lo, hi = res.exponent.value, res.exponent.low, res.exponent.high
        assert res.reason == (
            f"optimum lr ∝ N^{e:.2f} [{lo:.2f}, {hi:.2f}]: does not transfer "
            "(the interval lies outside |e| <= 0.1)"
        )
    for o in res.optima:
        assert o.optimum.low <= o.optimum.value <= o.optimum.high


def test_the_90_percent_interval_on_the_exponent_covers_the_truth_over_200_draws():
    covered = []
    for i in range(200):
        res = transfer_check(*planted(np.random.default_rng(100 + i), -0.5, noise=0.03), n_boot=200, seed=i)
        covered.append(res.exponent.low <= -0.5 <= res.exponent.high)
    assert np.mean(covered) >= 0.8, np.mean(covered)


def test_an_optimum_past_the_searched_values_is_refused_and_named():
    n, lr, loss = planted(np.random.default_rng(2), -0.5, noise=0.01)
    keep = (n != 1e8) | (lr <= 2.0**-9)  # at N = 1e8 (lr* = 0.01 = 2^-6.6) only lr <= 2^-9 was tried
    res = transfer_check(n[keep], lr[keep], loss[keep], param_name="lr", n_boot=50)
    edge = res.optima[-1]
    assert edge.n == 1e8 and edge.at_edge and edge.optimum is None
    assert edge.reason == "at the edge: the best lr (0.00195) is the largest tried"
    assert sum(o.usable for o in res.optima) == 4 and "N = 1e+08 excluded: at the edge" in res.reason
    # The other four still give the drift.
    assert abs(res.exponent.value + 0.5) < 0.1 and res.transfers is False


def test_fewer_than_three_usable_sizes_is_undecided():
    n, lr, loss = planted(np.random.default_rng(3), 0.0, sizes=SIZES[:2])
    res = transfer_check(n, lr, loss, n_boot=20)
    assert res.exponent is not None and res.transfers is None
    assert "undecided, 2 usable N (needs 3)" in res.reason


GROUP_KEYS = {
    "group",
    "param",
    "optima",
    "exponent",
    "exponent_low",
    "exponent_high",
    "transfers",
    "reason",
    "tolerance",
    "n_usable",
    "n_boot",
    "ci",
}


def test_fit_transfer_json_per_group(tmp_path):
    tables = []
    for param, e in (("mup", 0.0), ("sp", -0.5)):
        n, lr, loss = planted(np.random.default_rng(4), e, noise=0.01)
        tables.append(pd.DataFrame({"N": n, "lr": lr, "loss": loss, "parametrization": param}))
    path = tmp_path / "trials.csv"
    pd.concat(tables).to_csv(path, index=False)
    out = cli.grokscale(
        "fit",
        "transfer",
        path,
        "--n-col",
        "N",
        "--param-col",
        "lr",
        "--loss-col",
        "loss",
        "--group-col",
        "parametrization",
        "--n-boot",
        "50",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["tolerance"] == 0.1 and res["param_col"] == "lr"
    groups = {g["group"]: g for g in res["groups"]}
    assert set(groups) == {"mup", "sp"} and all(set(g) == GROUP_KEYS for g in groups.values())
    assert groups["mup"]["transfers"] is True and groups["sp"]["transfers"] is False
    for g in groups.values():
        assert [o["n"] for o in g["optima"]] == list(SIZES)
        assert all({"n", "optimum", "low", "high", "at_edge"} <= set(o) for o in g["optima"])
        assert g["exponent_low"] <= g["exponent"] <= g["exponent_high"]


def test_fit_transfer_table_and_bad_input(tmp_path, capsys):
    n, lr, loss = planted(np.random.default_rng(5), -0.5)
    path = tmp_path / "trials.csv"
    pd.DataFrame({"N": n, "lr": lr, "loss": loss}).to_csv(path, index=False)
    assert (
        main(
            [
                "fit",
                "transfer",
                str(path),
                "--n-col",
                "N",
                "--param-col",
                "lr",
                "--loss-col",
                "loss",
                "--n-boot",
                "20",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "optimum lr per N" in out and "does not transfer" in out
    argv = ["fit", "transfer", str(path), "--n-col", "N", "--param-col", "lr", "--loss-col", "loss"]
    assert main([*argv[:6], "eta", *argv[7:]]) == 2
    assert "no column 'eta'" in capsys.readouterr().err
    pd.DataFrame({"N": n, "lr": -lr, "loss": loss}).to_csv(path, index=False)
    assert main(argv) == 2
    assert "lr: every value must be finite and > 0" in capsys.readouterr().err
