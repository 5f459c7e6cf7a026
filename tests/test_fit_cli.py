"""`grokscale fit` on CSV files written here: the JSON results and a bad column through the
real command line (a subprocess); the table output and the other bad inputs through the same
`main` in this process, which saves the interpreter start-up."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from orchestrator.cli import main

REPO = Path(__file__).resolve().parents[1]
SCALING_KEYS = {f"{k}{s}" for k in ("E", "A", "alpha", "B", "beta") for s in ("", "_low", "_high")}


def grokscale(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", "fit", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def scaling_csv(tmp_path_factory) -> Path:
    """A noise-free L(N, D) = 2 + 300/N^0.3 + 800/D^0.4 on 6 x 6 runs, plus a text column."""
    n, d = (a.ravel() for a in np.meshgrid(np.logspace(4, 7, 6), np.logspace(3, 6, 6)))
    path = tmp_path_factory.mktemp("csv") / "runs.csv"
    pd.DataFrame({"n_params": n, "n_train": d, "min_val_loss": 2 + 300 / n ** 0.3 + 800 / d ** 0.4,
                  "cell": "x"}).to_csv(path, index=False)
    return path


def test_fit_scaling_json(scaling_csv):
    out = grokscale("scaling", scaling_csv, "--n-col", "n_params", "--d-col", "n_train", "--loss-col", "min_val_loss",
                    "--convention", "non_embedding", "--n-boot", "20", "--json")
    assert out.returncode == 0, out.stderr
    fit = json.loads(out.stdout)
    assert SCALING_KEYS <= set(fit) and fit["convention"] == "non_embedding" and fit["n_inits"] == 4500
    for key, true in {"E": 2.0, "A": 300.0, "alpha": 0.3, "B": 800.0, "beta": 0.4}.items():
        assert fit[key] == pytest.approx(true, rel=1e-2), key
        assert fit[f"{key}_low"] <= fit[key] <= fit[f"{key}_high"]


def test_fit_scaling_table_and_one_variable_law(scaling_csv, capsys):
    assert main(["fit", "scaling", str(scaling_csv), "--n-col", "n_params", "--loss-col", "min_val_loss",
                 "--n-boot", "5"]) == 0
    out = capsys.readouterr().out
    assert "L(N) = E + A/N^alpha" in out and "alpha" in out and "beta" not in out


def test_fit_emergence_per_group(tmp_path):
    x = np.repeat(np.logspace(3, 7, 9), 2)
    rng = np.random.default_rng(0)
    rows = [{"n_params": v, "n_train": g, "acc": 0.01 + 0.98 / (1 + np.exp(-(np.log10(v) - mid) / 0.3))
             + rng.normal(0, 0.01)} for g, mid in ((100, 4.5), (1000, 5.5), (10000, 99.0)) for v in x]
    path = tmp_path / "acc.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    out = grokscale("emergence", path, "--x-col", "n_params", "--y-col", "acc", "--group-col", "n_train",
                    "--chance", "0.01", "--n-boot", "30", "--json")
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
    pd.DataFrame({"n_params": np.tile(x, 2), "n_train": np.repeat([1, 2], 9),
                  "acc": np.concatenate([np.where(x > 2e5, 0.98, 0.02), np.full(9, 0.02)])}).to_csv(path, index=False)
    assert main(["fit", "emergence", str(path), "--x-col", "n_params", "--y-col", "acc", "--group-col", "n_train",
                 "--chance", "0.02", "--n-boot", "5"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("│ 1 "))
    threshold = float(row.split("│")[2])
    assert np.log10(threshold) == pytest.approx(5.25, abs=0.02)  # halfway between 1e5 and 10^5.5
    assert "1e+05 - 3.162e+05" in row and "yes" in row
    assert "n_train = 2: no threshold: never leaves chance" in out


def test_a_bad_column_exits_2_naming_it(scaling_csv):
    out = grokscale("scaling", scaling_csv, "--n-col", "params", "--d-col", "n_train", "--loss-col", "min_val_loss",
                    "--json")
    assert out.returncode == 2 and "no column 'params'" in out.stderr and out.stdout == ""


@pytest.mark.parametrize("argv, message", [
    (["scaling", "{csv}", "--n-col", "cell", "--d-col", "n_train", "--loss-col", "min_val_loss"],
     "column 'cell' is not numeric (row 2 of the file: 'x')"),
    (["emergence", "{tmp}/nope.csv", "--x-col", "n_params", "--y-col", "acc"], "nope.csv: no such file"),
    (["scaling", "{few}", "--n-col", "n_params", "--d-col", "n_train", "--loss-col", "min_val_loss"],
     "need at least 6 points"),
    (["emergence", "{few}", "--x-col", "n_train", "--y-col", "min_val_loss"], "at least 3 scales"),
    (["scaling", "{csv}", "--d-col", "n_train", "--loss-col", "cell"], "column 'cell' is not numeric"),
])
def test_bad_input_exits_2_with_the_reason(scaling_csv, tmp_path, capsys, argv, message):
    few = tmp_path / "few.csv"
    pd.read_csv(scaling_csv).head(4).to_csv(few, index=False)  # 4 runs, all at one D
    argv = [a.format(csv=scaling_csv, tmp=tmp_path, few=few) for a in argv]
    assert main(["fit", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
