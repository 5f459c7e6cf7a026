"""Best trial per cell and parameter importances (Optuna's evaluators on a rebuilt study)."""

import json

import numpy as np
import pandas as pd
import pytest

from orchestrator.analysis import cell_regularization, param_importances, trial_table


def search_runs(n_trials=30, seeds=(0, 1), cells=("N=1000/D=0.3",), seed=0, as_text=False):
    """Runs where validation accuracy depends only on weight decay (best at 1.0); lr is inert."""
    rng = np.random.default_rng(seed)
    rows = []
    for cell in cells:
        for t in range(n_trials):
            wd, lr = 10 ** rng.uniform(-2, 2), 10 ** rng.uniform(-4, -2)
            for s in seeds:
                acc = 1 - 0.2 * np.log10(wd) ** 2 + 0.001 * s
                rows.append(
                    {
                        "cell": cell,
                        "trial_number": t,
                        "seed": s,
                        "status": "completed",
                        "max_val_acc": acc,
                        "param.train.weight_decay": str(wd) if as_text else wd,
                        "param.train.lr": str(lr) if as_text else lr,
                        "param.model.n_layer": 1,
                    }
                )
    return pd.DataFrame(rows)


@pytest.mark.parametrize("evaluator", ["fanova", "pedanova"])
def test_the_parameter_that_matters_is_the_important_one(evaluator):
    (cell,) = cell_regularization(search_runs(), evaluator=evaluator)
    assert cell.importances is not None, cell.reason
    assert set(cell.importances) == {"train.weight_decay", "train.lr"}  # n_layer never varied: left out
    assert cell.importances["train.weight_decay"] > 0.8 > cell.importances["train.lr"]
    assert sum(cell.importances.values()) == pytest.approx(1.0)


def test_best_trial_by_objective_and_direction():
    runs = search_runs(n_trials=8)
    trials = trial_table(runs)
    assert (trials["n_seeds"] == 2).all() and len(trials) == 8
    (best,) = cell_regularization(runs)
    wd = trials["param.train.weight_decay"]
    expected = int(trials.loc[(np.log10(wd) ** 2).idxmin(), "trial_number"])
    assert best.best_trial == expected and best.best_value == pytest.approx(trials["value"].max())
    assert best.best_params["train.weight_decay"] == pytest.approx(
        wd[trials["trial_number"] == expected].iloc[0]
    )
    (worst,) = cell_regularization(runs, direction="minimize")
    assert worst.best_value == pytest.approx(trials["value"].min())


def test_values_logged_as_text_are_read_as_numbers():
    (cell,) = cell_regularization(search_runs(as_text=True))
    assert cell.importances["train.weight_decay"] > 0.8
    assert isinstance(cell.best_params["train.weight_decay"], float)


def test_too_few_trials_or_nothing_varied_gives_none():
    (few,) = cell_regularization(search_runs(n_trials=3))
    assert few.importances is None and "need at least 4" in few.reason and few.best_trial is not None
    fixed = search_runs(n_trials=6).assign(**{"param.train.weight_decay": 1.0, "param.train.lr": 1e-3})
    (cell,) = cell_regularization(fixed)
    assert (
        cell.importances is None and cell.reason == "no searched parameter took two or more distinct values"
    )
    assert json.loads(json.dumps(cell.to_dict()))["importances"] is None


def test_a_cell_whose_trials_all_scored_the_same_gets_no_importances_but_a_reason():
    """Every trial at max_val_acc 1.0 (a cell past its threshold, seen in the real emergence_parity
    run): fANOVA raised "zero total variance in all trees" and the report crashed."""
    solved = search_runs(n_trials=6).assign(max_val_acc=1.0)
    for evaluator in ("fanova", "pedanova"):
        (cell,) = cell_regularization(solved, evaluator=evaluator)
        assert cell.importances is None and cell.reason.startswith("every trial scored the same (1)")
        assert cell.best_value == 1.0


def test_cells_are_separate_and_failed_runs_are_ignored():
    runs = search_runs(n_trials=6, cells=("a", "b"))
    runs.loc[(runs["cell"] == "b") & (runs["trial_number"] == 0), ["status", "max_val_acc"]] = [
        "failed",
        99.0,
    ]
    out = {c.cell: c for c in cell_regularization(runs)}
    assert set(out) == {"a", "b"} and out["b"].best_value < 99 and out["a"].n_trials == 6


def test_importances_from_a_plain_trial_table():
    trials = pd.DataFrame(
        {
            "value": [0.1, 0.9, 0.2, 0.8, 0.15, 0.85],
            "x": [0, 1, 0, 1, 0, 1],
            "y": ["a", "a", "b", "b", "c", "c"],
        }
    )
    imp, reason = param_importances(trials, ["x", "y"])
    assert reason is None and imp["x"] > imp["y"]
