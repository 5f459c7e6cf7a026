"""A cell's asks: the same trials as Optuna's `Study.ask`, enqueued trials first, and a cost per
ask that does not grow with the trials in flight (it did: Study.ask reads every one back)."""

from __future__ import annotations

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from orchestrator.study import Study
from orchestrator.study.grid import build_cells
from orchestrator.sweep.cell import CellSearch
from orchestrator.sweep.search import cell_study

from support.studies import tiny_study


def study(sampler: str, trials: int = 12) -> Study:
    return Study.model_validate(tiny_study("ask", d=(0.5,), trials=trials, sampler=sampler))


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_a_cell_asks_what_study_ask_asks(tmp_path, sampler):
    """Same storage kind, same seed: the cell's trials have Study.ask's numbers and values, also
    for TPE, which reads the finished trials (told between asks here) on every ask."""
    s = study(sampler)
    cell = build_cells(s)[0]
    ours = CellSearch(s, cell, 0, optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'a.db'}"))
    theirs = cell_study(s, cell, 0, optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'b.db'}"))
    for i in range(12):
        a, b = ours._new_trial(), theirs.ask()
        wd = (a.suggest_float("wd", 0.1, 3.0, log=True), b.suggest_float("wd", 0.1, 3.0, log=True))
        assert a.number == b.number == i and wd[0] == wd[1]
        ours.optuna.tell(a, wd[0] % 1)
        theirs.tell(b, wd[1] % 1)
    assert [t.params for t in ours.optuna.trials] == [t.params for t in theirs.trials]


def test_an_enqueued_trial_is_asked_first(tmp_path):
    s = study("tpe")
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'a.db'}")
    cell = build_cells(s)[0]
    cell_study(s, cell, 0, storage).enqueue_trial({"train.weight_decay": 0.5})
    search = CellSearch(s, cell, 0, storage)
    trial, _ = search.ask()
    assert trial.number == 0 and trial.suggest_float("train.weight_decay", 0.1, 3.0, log=True) == 0.5
    assert search.optuna.trials[0].state == TrialState.RUNNING


def test_an_ask_costs_the_same_with_many_trials_in_flight(tmp_path):
    """Statements sent to the database per ask, the 1st and the 200th, with every asked trial
    still running: equal (Study.ask's grew by a read of every trial in flight)."""
    s = study("random", trials=200)
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'a.db'}")
    search = CellSearch(s, build_cells(s)[0], 0, storage)
    statements = []
    sqlalchemy.event.listen(storage.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    counts = []
    for _ in range(200):
        before = len(statements)
        search._new_trial()
        counts.append(len(statements) - before)
    assert counts[0] == counts[-1] and max(counts) == min(counts), counts


def test_trials_asked_ahead_a_few_a_turn_run_as_if_asked_at_once(tmp_path):
    """The driver asks a coming cell's trials a few a turn (prepare); the cell's trials, values
    and the order they run in are those of asking them all at the cell's first ask."""
    s = study("random", trials=30)
    cell = build_cells(s)[0]

    def rank(_cell, params):
        return -params["train.weight_decay"]

    orders = []
    for name, chunk in (("at_once", None), ("a_few", 4)):
        search = CellSearch(s, cell, 0, optuna.storages.RDBStorage(f"sqlite:///{tmp_path / name}.db"), rank)
        while chunk is not None and not search.prepared:
            assert search.has_work
            search.prepare(chunk)
        asked = []
        while search.has_work:
            trial, params = search.ask()
            asked.append((trial.number, params))
        orders.append(asked)
    assert len(orders[0]) == 30 and orders[0] == orders[1]
    decays = [p["train.weight_decay"] for _, p in orders[0]]
    assert decays == sorted(decays, reverse=True)
