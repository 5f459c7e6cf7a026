"""The write queue retries only a lost connection, logs every try, and gives up after its cap;
any other error fails the run whose write it was, as data, and never holds up the writes
behind it or the study (orchestrator/store/queue.py). Real errors from real components: MLflow's
client and REST API against a closed port, psycopg2 against one, a locked SQLite file, the real
client raising a TypeError, a real store refusing a write; and a real study whose run a user
deletes while it trains."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time

import optuna
import psycopg2
import pytest
from mlflow.entities import RunTag
from mlflow.exceptions import MlflowException, RestException
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from orchestrator.store import names
from orchestrator.store.hold import HOLD_STUDY_PREFIX
from orchestrator.store.queue import RETRY_CAP_ENV, Call, Op, StoreUnreachable, refused, transient
from orchestrator.store.rest_writes import RestWrites
from orchestrator.store.sql_writes import RunBatch
from orchestrator.store.tracker import HTTP_FAIL_FAST, Tracker, config_yaml
from orchestrator.study.grid import build_cells
from orchestrator.sweep.driver import Driver
from orchestrator.sweep.progress import Progress, writes_note
from orchestrator.sweep.search import open_storage

from support.ports import free_port
from support.simulated import SimulatedCluster, small_study


def raised(call) -> BaseException:
    try:
        call()
    except Exception as err:  # noqa: BLE001 - the error itself is what the test looks at
        return err
    raise AssertionError("it did not raise")


@pytest.fixture
def fail_fast(monkeypatch):
    for name, value in HTTP_FAIL_FAST.items():  # what the Tracker sets for a tracking server
        monkeypatch.setenv(name, value)


def test_only_a_lost_connection_is_transient(tmp_path, fail_fast):
    closed = f"http://127.0.0.1:{free_port()}"
    client = MlflowClient(closed)
    assert transient(raised(lambda: client.get_experiment_by_name("x")))  # MLflow's client, no server
    rest = RestWrites.of(client, closed)
    assert transient(raised(lambda: rest.set_terminated("0" * 32, "FINISHED", 1)))  # plain REST, no server
    assert transient(
        raised(
            lambda: psycopg2.connect(f"postgresql://postgres@127.0.0.1:{free_port()}/x", connect_timeout=5)
        )
    )
    db = tmp_path / "locked.db"
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as holder:
        holder.execute("CREATE TABLE t (x)")
        holder.execute("BEGIN EXCLUSIVE")
        other = sqlite3.connect(db, timeout=0.1)
        assert transient(raised(lambda: other.execute("INSERT INTO t VALUES (1)")))  # database is locked
        other.close()
        holder.execute("ROLLBACK")
    assert transient(RestException({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "503"}))
    assert transient(RestException({"error_code": "REQUEST_LIMIT_EXCEEDED", "message": "429"}))
    # What fails again on every try: the real client's TypeError, a store's refusal, a bare
    # MlflowException MLflow's client wraps around a bug of its own (it reads as HTTP 500).
    local = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = local.create_run(local.create_experiment("e")).info.run_id
    assert not transient(raised(lambda: local.log_metric(run_id, "m", object())))  # TypeError in float()
    assert not transient(raised(lambda: local.set_tag(run_id, 7, "v")))  # TypeError, wrapped as HTTP 500
    local.log_param(run_id, "lr", 1)
    err = raised(lambda: local.log_param(run_id, "lr", 2))
    assert refused(err) and not transient(err)
    assert not transient(MlflowException("API request failed with exception unexpected keyword 'x'"))


def test_a_write_that_fails_for_good_fails_its_run_as_data_and_the_rest_goes_on(tmp_path, caplog):
    """Two runs each get a write that can never succeed, one before its run ends and one after:
    a value whose type makes MLflow's real client raise TypeError, and a row SQLite cannot bind
    (sent in one transaction with other runs' writes). Each run ends failed, its reason the
    traceback; every other write arrives; the queue empties at once (it used to retry them every
    2 s for ever, saying nothing)."""
    study = small_study(tmp_path, "fails")
    tracker = Tracker(study)
    tracker.open(config_yaml(study))
    tracker.start_writer()
    a, b, c = (tracker.start_run(f"cell/trial={i}/seed=0", f"t{i}", {"lr": i}, {}) for i in range(3))
    for run_id in (a, b, c):
        tracker.log_records(run_id, [{"step": 100, "val_acc": 0.5}])
    tracker.flush(force=True)
    tracker._write(lambda: tracker.client.log_metric(a, "note", object()), a, "log_metric note")
    tracker._write(Op(RunBatch(b, tags=[RunTag("note", object())])), b)
    for run_id in (a, b, c):
        tracker.log_records(run_id, [{"step": 200, "val_acc": 1.0}])
    tracker.finish_run(a, "completed", "budget", {"max_val_acc": 1.0}, {})  # before its failure is known
    deadline = time.monotonic() + 60
    while tracker.write_failure(b) is None:
        assert time.monotonic() < deadline, "the failure of b's write was never seen"
        tracker.flush()
        time.sleep(0.05)
    tracker.finish_run(b, "completed", "budget", {"max_val_acc": 1.0}, {})  # after it
    tracker.finish_run(c, "completed", "budget", {"max_val_acc": 1.0}, {})
    t0 = time.monotonic()
    assert tracker.drain(timeout_s=30) and time.monotonic() - t0 < 15
    client = MlflowClient(study.tracking.uri)
    for run_id, error in ((a, "TypeError"), (b, "sqlite3.ProgrammingError")):
        run = client.get_run(run_id)
        assert run.info.status == "FAILED" and run.data.tags[names.TAG_STATUS] == "failed"
        reason = run.data.tags[names.TAG_REASON]
        assert "failed for good" in reason and "Traceback" in reason and error in reason, reason
        assert tracker.write_failure(run_id) == reason
        assert [m.step for m in client.get_metric_history(run_id, "val_acc")] == [100, 200]  # the rest came
        assert run.data.metrics["final.max_val_acc"] == 1.0
    run = client.get_run(c)
    assert run.info.status == "FINISHED" and run.data.tags[names.TAG_STATUS] == "completed"
    assert tracker.write_failure(c) is None
    assert sum("not a lost connection, dropped" in r.message for r in caplog.records) == 2


def test_a_store_away_past_the_cap_stops_the_driver_saying_why(tmp_path, monkeypatch, fail_fast, caplog):
    """Every failed try is one log line (the write, the attempt, the next try); past the cap the
    driver's next flush raises StoreUnreachable instead of waiting for ever."""
    caplog.set_level(logging.WARNING, logger="orchestrator.store.queue")
    monkeypatch.setenv(RETRY_CAP_ENV, "5")
    study = small_study(tmp_path, "away")
    tracker = Tracker(study, MlflowClient(f"http://127.0.0.1:{free_port()}"))
    tracker.start_writer()
    tracker._write(Call(lambda: tracker.client.get_experiment_by_name("away"), "a probe"))
    t0 = time.monotonic()
    with pytest.raises(StoreUnreachable, match="took no write for .* run the same command again") as err:
        while time.monotonic() - t0 < 120:
            tracker.flush()
            time.sleep(0.1)
    assert "a probe" in str(err.value) and 5 <= time.monotonic() - t0 < 120
    tries = [r.message for r in caplog.records if "MLflow write failed, kept: a probe" in r.message]
    assert tries and "attempt 1, next try in 2 s" in tries[0] and "ConnectionError" in tries[0]
    assert tracker.backlog == 1 and tracker.idle_s() >= 5  # kept, not lost: a resume sends it


def test_the_progress_view_shows_the_backlog_and_warns_of_a_stall(tmp_path, monkeypatch, fail_fast, capsys):
    assert writes_note(0, 0.0) == "" and writes_note(12, 3.0) == "MLflow writes waiting: 12"
    assert writes_note(12, 75.0).startswith("WARNING: no MLflow write has gone out for 1:15; 12 waiting")
    from orchestrator.sweep import progress

    monkeypatch.setattr(progress, "STALL_S", 1.0)  # the threshold, not the clock, lowered
    study = small_study(tmp_path, "stall")
    tracker = Tracker(study, MlflowClient(f"http://127.0.0.1:{free_port()}"))
    tracker._write(Call(lambda: tracker.client.get_experiment_by_name("stall"), "a probe"))  # fails, kept
    view = Progress(study, [], show=True, writes=tracker)
    view.update([], 1.0)
    assert "WARNING" not in capsys.readouterr().err
    time.sleep(max(0.0, 1.1 - tracker.idle_s()))
    for elapsed in (2.0, 3.0):
        view.last_draw = 0.0
        view.update([], elapsed)
    err = capsys.readouterr().err
    assert err.count("WARNING: no MLflow write has gone out for") == 1 and "1 waiting" in err  # once a stall


class DeletingCluster(SimulatedCluster):
    """A user deletes the first run to finish, in the MLflow UI, just before its result comes in."""

    deleted: str | None = None

    def poll(self, timeout_s):
        done = super().poll(timeout_s)
        if done and self.deleted is None:
            DeletingCluster.deleted = done[0][0].run_id
            MlflowClient(self.study.tracking.uri).delete_run(self.deleted)
        return done


def test_a_run_whose_writes_the_store_refuses_fails_as_data_and_the_study_finishes(tmp_path):
    """Its end (final metrics, status tags) is refused: the run's trial is told FAIL, with why,
    instead of COMPLETE; the other trials complete and the driver returns."""
    study = small_study(tmp_path, "deleted")
    DeletingCluster.deleted = None
    driver = Driver(
        study, build_cells(study), show=False, launcher=lambda s, c: DeletingCluster(s, c, 1, 0.3)
    )
    stats = driver.run()
    assert stats.completed == 2 and stats.failed == 1 and stats.write_failures == 1
    storage = open_storage(study.storage_url)
    (cell,) = [
        s.study_name
        for s in optuna.get_all_study_summaries(storage)
        if not s.study_name.startswith(HOLD_STUDY_PREFIX)
    ]
    trials = optuna.load_study(study_name=cell, storage=storage).get_trials()
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and sum(t.state == TrialState.COMPLETE for t in trials) == 2
    assert failed[0].user_attrs[names.trial_run_id(0)] == DeletingCluster.deleted
    reason = failed[0].user_attrs[names.TRIAL_REASON]
    assert "failed for good" in reason and "active" in reason, reason
