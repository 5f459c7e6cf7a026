"""A real `mlflow server` stopped while the tracker writes to it: the writes wait in order, each
failed try is one log line (the write, the attempt, the next try), and when the server is back
everything arrives. And what such a server refuses: a bad name in a run's last batch is dropped
alone, where the server used to refuse the whole batch (the run's last points, final metrics and
status tags) while the trial was told it had finished."""

from __future__ import annotations

import json
import logging
import time

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.store import names
from orchestrator.store.rest_writes import RestWrites
from orchestrator.store.tracker import HTTP_FAIL_FAST, Tracker, config_yaml

from support.mlflow_server import MlflowServer
from support.simulated import small_study


@pytest.fixture
def server(tmp_path, monkeypatch):
    for name, value in HTTP_FAIL_FAST.items():  # what the Tracker sets; restored afterwards
        monkeypatch.setenv(name, value)
    server = MlflowServer(tmp_path)
    server.start()
    yield server
    server.stop()


def tracker_on(server: MlflowServer, tmp_path, name: str) -> Tracker:
    study = small_study(tmp_path, name, tracking_uri=server.uri)
    tracker = Tracker(study)
    tracker.open(config_yaml(study))
    assert isinstance(tracker.writes, RestWrites)  # the REST path the driver takes against a server
    tracker.start_writer()
    return tracker


def test_a_tracking_server_stopped_mid_write_is_retried_until_it_is_back(server, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="orchestrator.store.queue")
    tracker = tracker_on(server, tmp_path, "stopped")
    run_id = tracker.start_run("cell/trial=0/seed=0", "t0", {"lr": 1}, {})
    tracker.log_records(run_id, [{"step": s, "val_acc": s / 1000} for s in range(100, 600, 100)])
    tracker.flush(force=True)
    deadline = time.monotonic() + 60
    while tracker.backlog:
        assert time.monotonic() < deadline, "the first writes never went out"
        time.sleep(0.1)
    server.kill()
    tracker.log_records(run_id, [{"step": s, "val_acc": s / 1000} for s in range(600, 1100, 100)])
    tracker.finish_run(run_id, "completed", "budget", {"max_val_acc": 1.0}, {})
    deadline = time.monotonic() + 90
    while sum("MLflow write failed, kept" in r.message for r in caplog.records) < 2:
        assert time.monotonic() < deadline, "no failed try was logged"
        tracker.flush()
        time.sleep(0.2)
    tries = [r.message for r in caplog.records if "MLflow write failed, kept" in r.message]
    assert f"log_batch of run {run_id}" in tries[0] and "ConnectionError" in tries[0]
    assert "attempt 1, next try in 2 s" in tries[0] and "attempt 2, next try in 2 s" in tries[1]
    assert tracker.backlog >= 2 and tracker.idle_s() > 0  # kept in order, none dropped
    server.start()
    assert tracker.drain(timeout_s=120) and tracker.backlog == 0
    client = MlflowClient(server.uri)
    assert [m.step for m in client.get_metric_history(run_id, "val_acc")] == list(range(100, 1100, 100))
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags[names.TAG_STATUS] == "completed"
    assert run.data.metrics["final.max_val_acc"] == 1.0 and tracker.write_failure(run_id) is None


def test_a_bad_name_in_a_runs_last_batch_loses_nothing_else(server, tmp_path):
    tracker = tracker_on(server, tmp_path, "badname")
    run_id = tracker.start_run("cell/trial=0/seed=0", "t0", {"lr": 1}, {})
    tracker.log_records(run_id, [{"step": 100, "val_acc": 0.5}])
    tracker.finish_run(
        run_id,
        "completed",
        "budget",
        {"max_val_acc": 0.5, "val acc?": 0.5},
        {"grokscale.flops.per token!": "3", names.TAG_NODE_ID: "n1"},
    )
    assert tracker.drain(timeout_s=120)
    client = MlflowClient(server.uri)
    run = client.get_run(run_id)
    assert [m.step for m in client.get_metric_history(run_id, "val_acc")] == [100]
    assert run.data.metrics["final.max_val_acc"] == 0.5 and run.data.tags[names.TAG_NODE_ID] == "n1"
    assert run.info.status == "FINISHED" and run.data.tags[names.TAG_STATUS] == "completed"
    assert set(json.loads(run.data.tags[names.TAG_DROPPED_KEYS])) == {
        "metric final.val acc?",
        "tag grokscale.flops.per token!",
    }
    assert tracker.write_failure(run_id) is None
