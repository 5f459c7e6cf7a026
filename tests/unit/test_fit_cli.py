"""`grokscale fit` on CSV files written here: the JSON results and a bad column through the
real command line (a subprocess); the table output and the other bad inputs through the same
`main` in this process, which saves the interpreter start-up."""

import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from orchestrator.cli import main

from support import cli

SCALING_KEYS = {f"{k}{s}" for k in ("E", "A", "alpha", "B", "beta") for s in ("", "_low", "_high")}
FRONTIER_KEYS = {f"{k}{s}" for k in ("a", "b", "G") for s in ("", "_low", "_high")} | {"frontier"}
POINT_KEYS = {"flops"} | {
    f"{k}{s}" for k in ("N_opt", "D_opt", "L_opt", "tokens_per_param") for s in ("", "_low", "_high")
}


def grokscale(*args: object) -> subprocess.CompletedProcess:
    """`grokscale fit ARGS...` in the repository."""
    return cli.grokscale("fit", *args)


@pytest.fixture(scope="module")
def scaling_csv(tmp_path_factory) -> Path:
    """A noise-free L(N, D) = 2 + 300/N^0.3 + 800/D^0.4 on 6 x 6 runs, plus a text column."""
    n, d = (a.ravel() for a in np.meshgrid(np.logspace(4, 7, 6), np.logspace(3, 6, 6)))
    path = tmp_path_factory.mktemp("csv") / "runs.csv"
    pd.DataFrame(
        {"n_params": n, "n_train": d, "min_val_loss": 2 + 300 / n**0.3 + 800 / d**0.4, "cell": "x"}
    ).to_csv(path, index=False)
    return path


def test_fit_scaling_json(scaling_csv):
    out = grokscale(
        "scaling",
        scaling_csv,
        "--n-col",
        "n_params",
        "--d-col",
        "n_train",
        "--loss-col",
        "min_val_loss",
        "--convention",
        "non_embedding",
        "--n-boot",
        "20",
        "--flops",
        "1e10",
        "1e12",
        "--flops-per-token",
        "8",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    fit = json.loads(out.stdout)
    assert set(fit) >= SCALING_KEYS and fit["convention"] == "non_embedding" and fit["n_inits"] == 4500
    for key, true in {"E": 2.0, "A": 300.0, "alpha": 0.3, "B": 800.0, "beta": 0.4}.items():
        assert fit[key] == pytest.approx(true, rel=1e-2), key
        assert fit[f"{key}_low"] <= fit[key] <= fit[f"{key}_high"]
    # The frontier of the law by hand: a = beta/(alpha+beta) = 4/7, G = (0.3*300/(0.4*800))^(1/0.7).
    assert set(fit) >= FRONTIER_KEYS and fit["flops_per_token"] == 8.0 and fit["frontier_reason"] is None
    a, g = 0.4 / 0.7, (0.3 * 300 / (0.4 * 800)) ** (1 / 0.7)
    assert fit["a"] == pytest.approx(a, abs=5e-3) and fit["b"] == pytest.approx(1 - a, abs=5e-3)
    assert fit["G"] == pytest.approx(g, rel=0.1) and fit["a_low"] <= fit["a"] <= fit["a_high"]
    assert [p["flops"] for p in fit["frontier"]] == [1e10, 1e12]
    for p in fit["frontier"]:
        assert set(p) >= POINT_KEYS
        n_opt = g * (p["flops"] / 8) ** a
        assert p["N_opt"] == pytest.approx(n_opt, rel=0.1) and p["N_opt_low"] <= p["N_opt"] <= p["N_opt_high"]
        assert p["D_opt"] == pytest.approx(p["flops"] / (8 * p["N_opt"]))
        assert p["tokens_per_param"] == pytest.approx(p["D_opt"] / p["N_opt"])
        assert p["L_opt"] == pytest.approx(2 + 300 / p["N_opt"] ** 0.3 + 800 / p["D_opt"] ** 0.4, rel=1e-2)


def test_fit_scaling_table_and_one_variable_law(scaling_csv, capsys):
    assert (
        main(
            [
                "fit",
                "scaling",
                str(scaling_csv),
                "--n-col",
                "n_params",
                "--loss-col",
                "min_val_loss",
                "--n-boot",
                "5",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "L(N) = E + A/N^alpha" in out and "alpha" in out and "beta" not in out


def test_fit_emergence_per_group(tmp_path):
    x = np.repeat(np.logspace(3, 7, 9), 2)
    rng = np.random.default_rng(0)
    rows = [
        {
            "n_params": v,
            "n_train": g,
            "acc": 0.01 + 0.98 / (1 + np.exp(-(np.log10(v) - mid) / 0.3)) + rng.normal(0, 0.01),
        }
        for g, mid in ((100, 4.5), (1000, 5.5), (10000, 99.0))
        for v in x
    ]
    path = tmp_path / "acc.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    out = grokscale(
        "emergence",
        path,
        "--x-col",
        "n_params",
        "--y-col",
        "acc",
        "--group-col",
        "n_train",
        "--chance",
        "0.01",
        "--n-boot",
        "30",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    groups = {g["group"]: g for g in res["groups"]}
    assert set(groups) == {100, 1000, 10000} and res["group_col"] == "n_train"
    for group, mid in ((100, 4.5), (1000, 5.5)):
        g = groups[group]
        assert abs(np.log10(g["threshold"]) - mid) < 0.1 and g["low"] <= g["threshold"] <= g["high"]
    assert groups[10000]["threshold"] is None and groups[10000]["low"] is None
    assert groups[10000]["reason"].startswith("never leaves chance")


def test_fit_emergence_table(tmp_path, capsys):
    x = np.logspace(3, 7, 9)
    path = tmp_path / "acc.csv"
    pd.DataFrame(
        {
            "n_params": np.tile(x, 2),
            "n_train": np.repeat([1, 2], 9),
            "acc": np.concatenate([np.where(x > 2e5, 0.98, 0.02), np.full(9, 0.02)]),
        }
    ).to_csv(path, index=False)
    assert (
        main(
            [
                "fit",
                "emergence",
                str(path),
                "--x-col",
                "n_params",
                "--y-col",
                "acc",
                "--group-col",
                "n_train",
                "--chance",
                "0.02",
                "--n-boot",
                "5",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("│ 1 "))
    threshold = float(row.split("│")[2])
    assert np.log10(threshold) == pytest.approx(5.25, abs=0.02)  # halfway between 1e5 and 10^5.5
    assert "1e+05 - 3.162e+05" in row and "yes" in row
    assert "n_train = 2: no threshold: never leaves chance" in out


def test_a_bad_column_exits_2_naming_it(scaling_csv):
    out = grokscale(
        "scaling",
        scaling_csv,
        "--n-col",
        "params",
        "--d-col",
        "n_train",
        "--loss-col",
        "min_val_loss",
        "--json",
    )
    assert out.returncode == 2 and "no column 'params'" in out.stderr and out.stdout == ""


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["scaling", "{csv}", "--n-col", "cell", "--d-col", "n_train", "--loss-col", "min_val_loss"],
            "column 'cell' is not numeric (row 2 of the file: 'x')",
        ),
        (["emergence", "{tmp}/nope.csv", "--x-col", "n_params", "--y-col", "acc"], "nope.csv: no such file"),
        (
            ["scaling", "{few}", "--n-col", "n_params", "--d-col", "n_train", "--loss-col", "min_val_loss"],
            "need at least 6 points",
        ),
        (["emergence", "{few}", "--x-col", "n_train", "--y-col", "min_val_loss"], "at least 3 scales"),
        (["scaling", "{csv}", "--d-col", "n_train", "--loss-col", "cell"], "column 'cell' is not numeric"),
        (
            ["scaling", "{csv}", "--n-col", "n_params", "--loss-col", "min_val_loss", "--flops", "1e12"],
            "--flops needs both --n-col and --d-col",
        ),
        (
            ["isoflop", "{csv}", "--n-col", "n_params", "--flops-col", "flops", "--loss-col", "min_val_loss"],
            "no column 'flops'",
        ),
        (
            [
                "isoflop",
                "{csv}",
                "--n-col",
                "n_params",
                "--flops-col",
                "n_train",
                "--loss-col",
                "min_val_loss",
                "--flops-per-token",
                "0",
            ],
            "flops_per_token must be > 0",
        ),
    ],
)
def test_bad_input_exits_2_with_the_reason(scaling_csv, tmp_path, capsys, argv, message):
    few = tmp_path / "few.csv"
    pd.read_csv(scaling_csv).head(4).to_csv(few, index=False)  # 4 runs, all at one D
    argv = [a.format(csv=scaling_csv, tmp=tmp_path, few=few) for a in argv]
    assert main(["fit", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


OFFSETS = np.linspace(-1.5, 1.2, 5)  # ln(N / N_opt) of the sizes at each budget


def isoflop_table(budgets, a=0.5, g=0.1, offsets=OFFSETS) -> pd.DataFrame:
    """Runs on exact parabolas in ln N about a planted N_opt = g (C/6)^a; loss 2 at every minimum."""
    rows = [
        {"params": g * (c / 6) ** a * np.exp(o), "budget": c, "loss": 2.0 + 0.1 * o**2}
        for c in budgets
        for o in offsets
    ]
    return pd.DataFrame(rows)


def test_fit_isoflop_json_gives_back_planted_minima(tmp_path):
    path = tmp_path / "iso.csv"
    budgets = [1e17, 1e18, 1e19, 1e20]
    isoflop_table(budgets).to_csv(path, index=False)
    out = grokscale(
        "isoflop",
        path,
        "--n-col",
        "params",
        "--flops-col",
        "budget",
        "--loss-col",
        "loss",
        "--n-boot",
        "20",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    fit = json.loads(out.stdout)
    assert set(fit) >= FRONTIER_KEYS and fit["reason"] is None and fit["flops_per_token"] == 6.0
    assert (
        fit["a"] == pytest.approx(0.5) and fit["b"] == pytest.approx(0.5) and fit["G"] == pytest.approx(0.1)
    )
    assert [p["flops"] for p in fit["frontier"]] == budgets
    for p in fit["frontier"]:
        assert set(p) >= POINT_KEYS and p["trusted"]
        assert p["N_opt"] == pytest.approx(0.1 * (p["flops"] / 6) ** 0.5) and p["L_opt"] == pytest.approx(2.0)
    assert fit["backtest"]["flops"] == 1e20 and fit["backtest"]["N_opt_error"] == pytest.approx(0, abs=1e-7)


def test_fit_isoflop_table_flags_an_unbracketed_budget_and_too_few_budgets(tmp_path, capsys):
    # At the largest budget every size is above the optimum: its minimum is extrapolated.
    table = pd.concat(
        [isoflop_table([1e17, 1e18]), isoflop_table([1e19], offsets=np.array([0.3, 0.8, 1.3, 1.8]))]
    )
    path = tmp_path / "iso.csv"
    table.to_csv(path, index=False)
    assert (
        main(
            [
                "fit",
                "isoflop",
                str(path),
                "--n-col",
                "params",
                "--flops-col",
                "budget",
                "--loss-col",
                "loss",
                "--n-boot",
                "5",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "1e+17" in out and "1e+19 *" in out
    assert "* C = 1e+19 not trusted: minimum not bracketed" in out
    assert "no power law: insufficient data: 2 budget(s) with a bracketed minimum (of 3)" in out
    assert "backtest: the largest budget has no observed optimum" in out


def test_fit_scaling_table_shows_the_frontier(scaling_csv, capsys):
    assert (
        main(
            [
                "fit",
                "scaling",
                str(scaling_csv),
                "--n-col",
                "n_params",
                "--d-col",
                "n_train",
                "--loss-col",
                "min_val_loss",
                "--n-boot",
                "5",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "compute-optimal frontier of the law (C = 6*N*D)" in out
    assert "a = 0.57" in out and "N_opt = G (C/6)^a" in out
    # Default budgets: 5 log-spaced from the smallest 6*N*D (6e7) to the largest (6e13).
    assert all(f"│ {c} " in out for c in ("6e+07", "1.9e+09", "6e+10", "1.9e+12", "6e+13"))
