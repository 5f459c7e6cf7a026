"""HeldStorage: a held study's trials read from memory are the trials the database holds, its
reads send nothing to the database, samplers draw what they draw on Optuna's own storage, and a
study it does not hold (a hold, which rival drivers write) is read from the database as ever.
On SQLite and on a real throwaway PostgreSQL."""

from __future__ import annotations

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from orchestrator.store.held_storage import HeldStorage

from support.postgres import started_or_skip

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def postgres():
    with started_or_skip(("optuna",)) as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    """A storage URL; the PostgreSQL database is the module's, so each test names its studies
    after its own tmp_path."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'optuna.db'}"
    return request.getfixturevalue("postgres").url("optuna", "postgresql+psycopg2")


def busy_study(study: optuna.Study) -> None:
    """Every kind of trial write the driver makes and then some: asks (one popped from the queue),
    params of three kinds, attributes, intermediate values, and each way a trial ends."""
    study.enqueue_trial({"x": 0.5, "k": "b"})
    study.add_trial(
        optuna.trial.create_trial(
            params={"x": 0.2, "k": "a", "n": 3},
            value=0.1,
            distributions={
                "x": optuna.distributions.FloatDistribution(0.01, 1.0, log=True),
                "k": optuna.distributions.CategoricalDistribution(["a", "b"]),
                "n": optuna.distributions.IntDistribution(1, 8),
            },
            user_attrs={"from": "template"},
        )
    )
    for i in range(14):
        trial = study.ask()
        x = trial.suggest_float("x", 0.01, 1.0, log=True)
        trial.suggest_categorical("k", ["a", "b"])
        trial.suggest_int("n", 1, 8)
        trial.set_user_attr("run_id.0", f"run-{i}")
        # Several at once, one of them written again (the driver's writes: CellSearch._set_attrs).
        trial.storage.set_trial_user_attrs(
            trial._trial_id, {"lesson": {"step": i, "x": [x]}, "run_id.1": f"r{i}"}
        )
        trial.storage.set_trial_user_attrs(trial._trial_id, {"run_id.1": f"again-{i}"})
        trial.storage.set_trial_system_attr(trial._trial_id, "sys", i)
        for step in (10, 20):
            trial.report(x * step, step)
        if i >= 12:
            continue  # the last two stay RUNNING, as a driver's trials in flight
        if i % 5 == 4:
            study.tell(trial, state=TrialState.PRUNED)
        elif i % 7 == 6:
            study.tell(trial, state=TrialState.FAIL)
        else:  # an infinite value too: Optuna stores it as NULL and its kind
            study.tell(trial, x if i != 11 else float("inf"))


def fields(t: optuna.trial.FrozenTrial) -> tuple:
    return (
        t._trial_id,
        t.number,
        t.state,
        t.values,
        t.params,
        t.distributions,
        t.user_attrs,
        t.system_attrs,
        t.intermediate_values,
    )


def test_what_it_reads_is_what_the_database_holds(url, tmp_path):
    held = HeldStorage(optuna.storages.RDBStorage(url), [f"{tmp_path.name}/cell"])
    assert held.plain  # its own Core writes, read back below through Optuna's storage
    study = optuna.create_study(
        storage=held,
        study_name=f"{tmp_path.name}/cell",
        sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=4),
    )
    busy_study(study)
    ours = held.get_all_trials(study._study_id)
    theirs = optuna.storages.RDBStorage(url).get_all_trials(study._study_id)
    assert [fields(t) for t in ours] == [fields(t) for t in theirs]
    assert [t.state for t in ours].count(TrialState.RUNNING) == 2 and len(ours) == 15
    for a, b in zip(ours, theirs):  # this process's clock against the database's, same moments
        for mine, db in ((a.datetime_start, b.datetime_start), (a.datetime_complete, b.datetime_complete)):
            assert (mine is None) == (db is None)
            assert mine is None or abs((mine - db).total_seconds()) < 5


def test_a_sampler_draws_what_it_draws_on_optunas_storage(url, tmp_path):
    """TPE reads every finished trial on each ask: the same draws from memory as from Optuna's
    own wrapper over the database."""
    draws = []
    for name, storage in (("held", None), ("plain", optuna.storages.RDBStorage(url))):
        study_name = f"{tmp_path.name}/{name}"
        storage = storage or HeldStorage(optuna.storages.RDBStorage(url), [study_name])
        study = optuna.create_study(
            storage=storage,
            study_name=study_name,
            sampler=optuna.samplers.TPESampler(seed=3, n_startup_trials=3),
        )
        study.optimize(lambda t: (t.suggest_float("x", -2, 2) - 0.7) ** 2, n_trials=12)
        draws.append([t.params["x"] for t in study.trials])
    assert draws[0] == draws[1]


def test_reads_of_a_held_study_send_nothing(url, tmp_path):
    backend = optuna.storages.RDBStorage(url)
    held = HeldStorage(backend, [f"{tmp_path.name}/cell"])
    study = optuna.create_study(storage=held, study_name=f"{tmp_path.name}/cell")
    busy_study(study)
    sent = []
    sqlalchemy.event.listen(backend.engine, "before_cursor_execute", lambda *a: sent.append(a[2]))
    trials = held.get_all_trials(study._study_id, states=(TrialState.RUNNING,))
    for t in trials:
        held.get_trial(t._trial_id)
        held.get_trial_id_from_study_id_trial_number(study._study_id, t.number)
    held.get_study_directions(study._study_id)
    assert len(trials) == 2 and sent == []
    study.tell(trials[0].number, 0.5)  # a write still goes to the database, at once
    assert (
        sent and optuna.storages.RDBStorage(url).get_trial(trials[0]._trial_id).state == TrialState.COMPLETE
    )


def test_a_study_it_does_not_hold_is_read_from_the_database(url, tmp_path):
    """A hold (store/hold.py) is written by rival drivers: their trials must be seen."""
    held = HeldStorage(optuna.storages.RDBStorage(url), [f"{tmp_path.name}/cell"])
    other = optuna.create_study(storage=held, study_name=f"{tmp_path.name}/hold")
    assert held.get_all_trials(other._study_id) == []
    rival = optuna.load_study(study_name=f"{tmp_path.name}/hold", storage=optuna.storages.RDBStorage(url))
    rival.tell(rival.ask(), 1.0)
    assert [t.state for t in held.get_all_trials(other._study_id)] == [TrialState.COMPLETE]


def test_attributes_of_a_finished_trial_are_refused_as_optuna_refuses_them(url, tmp_path):
    held = HeldStorage(optuna.storages.RDBStorage(url), [f"{tmp_path.name}/cell"])
    study = optuna.create_study(storage=held, study_name=f"{tmp_path.name}/cell")
    trial = study.ask()
    study.tell(trial, 1.0)
    # Optuna's own error (its storages' `check_trial_is_updatable`): a RuntimeError before 4.1
    refusal = getattr(optuna.exceptions, "UpdateFinishedTrialError", RuntimeError)
    with pytest.raises(refusal):
        optuna.storages.RDBStorage(url).set_trial_user_attr(trial._trial_id, "status", "late")
    with pytest.raises(refusal):
        held.set_trial_user_attrs(trial._trial_id, {"status": "late"})
    assert optuna.storages.RDBStorage(url).get_trial(trial._trial_id).user_attrs == {}
