"""The report's transfer check on a study that searched the learning rate at several sizes under
two parametrizations: planted optima that drift under one and hold under the other."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from orchestrator.report.report import build_report, outline
from orchestrator.store.results import StudyResults

CONFIG = {
    "name": "mut",
    "task": {"name": "charlm"},
    "train": {},
    "objectives": [{"metric": "min_val_loss", "direction": "minimize"}],
}
LRS = [1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2, 6.4e-2]
NS = [1e4, 4e4, 1.6e5, 6.4e5]


def runs(drift: dict[str, float], noise: float = 0.005, seed: int = 0) -> pd.DataFrame:
    """loss = 2 + 0.3 (log lr - log lr*(N))^2, lr*(N) = 0.01 (N / 1e4)^e for each parametrization."""
    rng = np.random.default_rng(seed)
    rows = []
    for p, e in drift.items():
        for n in NS:
            best = 0.01 * (n / 1e4) ** e
            for lr in LRS:
                loss = 2 + 0.3 * (np.log(lr) - np.log(best)) ** 2 + rng.normal(0, noise)
                rows.append(
                    {
                        "run_id": f"r{len(rows)}",
                        "cell": f"N={n:g}",
                        "status": "completed",
                        "seed": 0,
                        "trial_number": len(rows),
                        "n_params": n,
                        "n_train": 1e6,
                        "d_value": 1e6,
                        "min_val_loss": loss,
                        "param.train.lr": lr,
                        "param.model.parametrization": p,
                    }
                )
    return pd.DataFrame(rows)


def test_a_drifting_and_a_holding_optimum_get_their_verdicts(tmp_path):
    report = build_report(
        StudyResults("parent", "0", CONFIG, runs({"sp": -0.3, "mup": 0.0}), pd.DataFrame()), tmp_path
    )
    results = json.loads((tmp_path / "results.json").read_text())["transfer"]["train.lr"]
    sp, mup = results["model.parametrization=sp"], results["model.parametrization=mup"]
    assert sp["transfers"] is False and abs(sp["exponent"] + 0.3) < 0.1
    assert mup["transfers"] is True and abs(mup["exponent"]) < 0.1
    assert all(o["optimum"] is not None and not o["at_edge"] for o in sp["optima"] + mup["optima"])
    assert "transfer" in report.plots and (tmp_path / "transfer.png").exists()
    line = next(line for line in outline(report) if line.startswith("transfer: "))
    assert line.startswith("transfer: train.lr: model.parametrization=mup N^") and line.endswith(" drifts"), (
        line
    )
    assert "mup N^+0.0" in line or "mup N^-0.0" in line


def test_an_optimum_past_the_searched_range_is_refused_and_named(tmp_path):
    # Drift -0.8: at the largest N the optimum (0.01 x 64^-0.8 = 3.6e-4) lies below every lr tried.
    report = build_report(StudyResults("parent", "0", CONFIG, runs({"sp": -0.8}), pd.DataFrame()), tmp_path)
    check = report.results["transfer"]["train.lr"]["all"]
    edge = [o for o in check["optima"] if o["at_edge"]]
    assert edge and edge[-1]["n"] == NS[-1]
    assert "6.4e+05" in check["reason"] or "640000" in check["reason"] or "6.4e5" in check["reason"]


def test_one_size_skips_the_check_with_its_reason(tmp_path):
    one = runs({"sp": 0.0})
    one = one[one["n_params"] == NS[0]]
    report = build_report(StudyResults("parent", "0", CONFIG, one, pd.DataFrame()), tmp_path)
    assert "3 or more model sizes" in report.skipped["transfer"]


def test_each_d_gets_its_own_check(tmp_path):
    """The optimum at 1e5 tokens sits at 4x the one at 1e6 (fewer tokens, a larger rate), flat over
    N at each: checked at each D, both transfer; pooled over D, the 4x spread would read as noise
    (or, with D and N correlated, as drift)."""
    small = runs({"mup": 0.0}, seed=1).assign(n_train=1e5, d_value=1e5)
    small["min_val_loss"] = 2 + 0.3 * (np.log(small["param.train.lr"]) - np.log(0.04)) ** 2
    both = pd.concat([small, runs({"mup": 0.0})], ignore_index=True)
    report = build_report(StudyResults("parent", "0", CONFIG, both, pd.DataFrame()), tmp_path)
    by_d = report.results["transfer"]["train.lr"]
    assert sorted(by_d) == ["D=100000", "D=1e+06"]
    for label, optimum in (("D=100000", 0.04), ("D=1e+06", 0.01)):
        assert by_d[label]["transfers"] is True, by_d[label]
        assert all(abs(np.log(o["optimum"] / optimum)) < 0.1 for o in by_d[label]["optima"])


def test_values_spread_over_cells_but_two_in_each_are_not_a_search_to_check(tmp_path):
    """Eight learning rates over four sizes, two at each: no cell has the three points a quadratic
    needs, so the check is skipped with that reason, not fitted on values drawn across cells."""
    every = runs({"sp": 0.0})
    kept = {(n, LRS[(2 * j) % 7]) for j, n in enumerate(NS)} | {
        (n, LRS[(2 * j + 1) % 7]) for j, n in enumerate(NS)
    }
    two_each = every[[(n, lr) in kept for n, lr in zip(every["n_params"], every["param.train.lr"])]]
    assert two_each.groupby("n_params")["param.train.lr"].nunique().max() == 2
    assert two_each["param.train.lr"].nunique() >= 3
    report = build_report(StudyResults("parent", "0", CONFIG, two_each, pd.DataFrame()), tmp_path)
    assert "transfer" not in report.results
    assert "within one cell" in report.skipped["transfer"]
