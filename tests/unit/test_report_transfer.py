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
    assert any(line.startswith("transfer: transfer") for line in outline(report))


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
