"""The plain-SQL writes into a SQLite or PostgreSQL MLflow store (orchestrator/store/sql_writes.py)
make the rows MLflow makes: the same run written through MlflowClient and through SqlWrites reads
back the same through MLflow's own API (run info, tags, params, latest metrics, every metric
history, search by tag). What MLflow refuses, they refuse the same way; a store of another schema
gets no plain SQL at all. PostgreSQL is a real throwaway server (skipped where its binaries or
psycopg2 are missing)."""

from __future__ import annotations

import math
import sqlite3
import time

import pytest
from mlflow.entities import Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from orchestrator.store.queue import refused
from orchestrator.store.sql_writes import SqlWrites, metric_copy_binary
from orchestrator.store.writes import ClientWrites

from support.postgres import started_or_skip

TAGS = {"mlflow.parentRunId": "p" * 32, "grokscale.run_key": "cell/trial=0/seed=0", "grokscale.attempts": "1"}
PARAMS = [Param("cell", "N[d_model=16]_D=0.5"), Param("seed", "0"), Param("param.train.lr", "0.001")]
# Two evaluations, a repeated point, steps out of order, NaN and both infinities, then final totals.
FIRST = [
    ("val_acc", 0.25, 1_000, 100),
    ("val_acc", 0.5, 2_000, 200),
    ("val_acc", 0.5, 2_000, 200),
    ("val_loss", float("nan"), 2_000, 200),
    ("train_loss", float("inf"), 1_000, 100),
    ("train_loss", float("-inf"), 2_000, 200),
    ("val_acc", 0.75, 900, 50),
]
SECOND = [("val_acc", 1.0, 3_000, 300), ("final.max_val_acc", 1.0, 3_500, 0), ("val_acc", 0.1, 9_000, 10)]
END_TAGS = [RunTag("grokscale.status", "completed"), RunTag("grokscale.attempts", "2")]


@pytest.fixture(scope="module")
def postgres():
    with started_or_skip(("mlflow", "other")) as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path, monkeypatch):
    """(uri, client, a new experiment's id) in a SQLite file, or in one PostgreSQL database shared
    by the module's tests (MLflow's migrations take seconds), each test with its own experiment."""
    monkeypatch.chdir(tmp_path)  # a database store's artifacts go to ./mlruns
    if request.param == "sqlite":
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    else:
        uri = request.getfixturevalue("postgres").url("mlflow", "postgresql+psycopg2")
    client = MlflowClient(tracking_uri=uri)
    return uri, client, client.create_experiment(f"sql-{tmp_path.name}")


def write(writer, experiment_id: str, name: str) -> str:
    """One run as the tracker writes it: create, params with the first batch, a second batch
    with the end tags, terminated."""
    run = writer.create_run(experiment_id, TAGS, name)
    run_id = run.info.run_id
    writer.log_batch(run_id, FIRST, params=PARAMS)
    writer.log_batch(run_id, SECOND, tags=END_TAGS)
    writer.set_terminated(run_id, "FINISHED", 4_000)
    return run_id


def nan_free(v: float) -> float | str:
    return "nan" if math.isnan(v) else v  # NaN != NaN: compared as a word


def read(client: MlflowClient, run_id: str) -> dict:
    run = client.get_run(run_id)
    i = run.info
    return {
        "status": i.status,
        "end_time": i.end_time,
        "lifecycle": i.lifecycle_stage,
        "user": i.user_id,
        "name": i.run_name,
        "artifacts": i.artifact_uri.replace(run_id, "<id>"),
        "tags": run.data.tags,
        "params": run.data.params,
        "latest": {k: nan_free(v) for k, v in run.data.metrics.items()},
        # as a set: MLflow 2.x returns a history in the database's order, which differs by writer
        "history": {
            k: sorted((m.step, m.timestamp, nan_free(m.value)) for m in client.get_metric_history(run_id, k))
            for k in run.data.metrics
        },
    }


def test_plain_sql_writes_the_rows_mlflow_writes(store):
    uri, client, exp = store
    writes = SqlWrites.of(client, uri)
    assert writes is not None
    # PostgreSQL's points go by COPY in its binary format (MLflow's column types checked first)
    assert (writes.encode_metrics is metric_copy_binary) == uri.startswith("postgresql")
    mine, theirs = write(writes, exp, "t0 s0"), write(ClientWrites(client), exp, "t0 s0")
    got, want = read(client, mine), read(client, theirs)
    assert got == want
    assert (
        got["status"] == "FINISHED" and got["end_time"] == 4_000 and got["tags"]["mlflow.runName"] == "t0 s0"
    )
    assert sorted(got["history"]["val_acc"]) == [
        (10, 9_000, 0.1),
        (50, 900, 0.75),
        (100, 1_000, 0.25),
        (200, 2_000, 0.5),
        (300, 3_000, 1.0),
    ]
    assert got["latest"]["val_acc"] == 1.0  # the largest step, not the latest timestamp
    # MLflow keeps an infinity as the largest double, and its latest point is the largest step.
    assert got["latest"]["train_loss"] == -1.7976931348623157e308 and got["latest"]["val_loss"] == "nan"
    found = client.search_runs([exp], "tags.`grokscale.status` = 'completed' and params.seed = '0'")
    assert {r.info.run_id for r in found} == {mine, theirs}
    assert writes.create_run(exp, TAGS, "t1").info.artifact_uri.endswith("/artifacts")


def test_what_mlflow_refuses_is_refused_alike(store):
    uri, client, exp = store
    writes = SqlWrites.of(client, uri)
    run_id = write(writes, exp, "t0")
    if uri.startswith("postgresql"):  # a value longer than its column: refused, never retried for ever
        with pytest.raises(MlflowException, match="refused") as err:
            writes.log_batch(run_id, tags=[RunTag("long", "x" * 9000)])
        assert refused(err.value) and "long" not in client.get_run(run_id).data.tags
    with pytest.raises(MlflowException, match="Changing param values") as err:
        writes.log_batch(run_id, params=[Param("seed", "1")])
    assert refused(err.value)  # the write queue drops it instead of retrying it for ever
    writes.log_batch(run_id, params=[Param("seed", "0")])  # the same value again is fine, as in MLflow
    client.delete_run(run_id)
    with pytest.raises(MlflowException, match="must be in the 'active' state") as err:
        writes.log_batch(run_id, [("val_acc", 1.0, 5_000, 400)])
    assert refused(err.value)
    with pytest.raises(MlflowException, match="not found"):
        writes.set_terminated("0" * 32, "FINISHED", 1)
    assert 400 not in {
        m.step for m in client.get_metric_history(run_id, "val_acc")
    }  # nothing of the refused batch


BAD_NAMES = ["val acc?", "../val_acc", "/val_acc", "a//b", "k" * 251]  # characters, paths, length


def test_names_and_values_mlflow_refuses_plain_sql_refuses_alike(store):
    """Names MLflow's client refuses (characters, paths that resolve to other names, length) and a
    metric value that is no number: plain SQL refuses each the same way (a refusal, which the
    write queue does not retry) and writes nothing of the batch."""
    from mlflow.entities import Metric

    uri, client, exp = store
    writes = SqlWrites.of(client, uri)
    mine, theirs = write(writes, exp, "t0"), write(ClientWrites(client), exp, "t0")
    for key in BAD_NAMES:
        for batch in (
            {"metrics": [(key, 1.0, 5_000, 400)]},
            {"params": [Param(key, "1")]},
            {"tags": [RunTag(key, "1")]},
        ):
            with pytest.raises(MlflowException) as err:
                ClientWrites(client).log_batch(theirs, **batch)
            assert refused(err.value), (key, batch)
            with pytest.raises(MlflowException) as err:
                writes.log_batch(mine, **batch)
            assert refused(err.value), (key, batch)
    with pytest.raises(MlflowException):
        client.log_batch(theirs, metrics=[Metric("loss", "abc", 5_000, 400)])
    with pytest.raises(MlflowException) as err:
        writes.log_batch(mine, [("loss", 1.0, 5_000, 400), ("val_acc", "abc", 5_000, 400)])
    assert refused(err.value) and "loss" not in client.get_run(mine).data.metrics
    assert read(client, mine) == read(client, theirs)


def test_no_plain_sql_for_a_store_it_does_not_know(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    client.create_experiment("sql")
    assert SqlWrites.of(client, "http://127.0.0.1:5000") is None
    assert (
        SqlWrites.of(client, f"sqlite:///{tmp_path / 'none.db'}") is None
        and not (tmp_path / "none.db").exists()
    )
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as db:  # a runs table of another shape: MLflow's client, not this writer
        db.execute("CREATE TABLE runs (run_uuid TEXT PRIMARY KEY, workspace TEXT)")
    assert SqlWrites.of(client, f"sqlite:///{other}") is None


def test_a_study_tracker_writes_sqlite_as_plain_sql(tmp_path):
    from orchestrator.store.tracker import Tracker, config_yaml
    from orchestrator.study import Study

    study = Study.model_validate(
        {
            "name": "sql",
            "task": {"name": "modular", "p": 23},
            "model": {"n_layer": 1, "n_head": 4},
            "train": {"steps": 10},
            "grid": {"n": [{"d_model": 16}], "d": [0.5]},
            "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
            "workdir": str(tmp_path / "runs"),
        }
    )
    tracker = Tracker(study)
    assert isinstance(tracker.writes, ClientWrites)  # no store yet: chosen once MLflow has made its tables
    tracker.open(config_yaml(study))
    assert isinstance(tracker.writes, SqlWrites)
    run_id = tracker.start_run("cell/trial=0/seed=0", "t0", {"lr": 1}, {})
    tracker.log_records(run_id, [{"step": 10, "val_acc": 0.5}])
    assert tracker.drain(timeout_s=30)
    assert [m.value for m in tracker.client.get_metric_history(run_id, "val_acc")] == [0.5]
    assert tracker.client.get_run(run_id).data.params["lr"] == "1"


def test_no_plain_sql_for_a_postgresql_it_does_not_know(postgres):
    postgres.query("other", "CREATE TABLE runs (run_uuid TEXT PRIMARY KEY, workspace TEXT)")
    assert SqlWrites.of(None, postgres.url("other", "postgresql+psycopg2")) is None  # another shape of runs
    assert (
        SqlWrites.of(None, postgres.url("nowhere")) is None
    )  # no such database: the client's errors, not ours
    assert (
        SqlWrites.of(None, postgres.url("mlflow").replace(str(postgres.port), "1")) is None
    )  # nothing listens


def test_a_batch_written_again_is_stored_once(store):
    """A retried batch whose first try did commit (the answer lost on the way back): the points
    it holds are there already; the second write keeps one copy of each, adds the new ones, and
    refuses nothing. On PostgreSQL this is COPY's fall-back to INSERT ... ON CONFLICT."""
    uri, client, exp = store
    writes = SqlWrites.of(client, uri)
    run_id = writes.create_run(exp, TAGS, "retried").info.run_id
    batch = [("val acc/seed 0", 0.25, 1_000, 100), ("val acc/seed 0", 1e-300, 2_000, 200)]
    writes.log_batch(run_id, batch)
    writes.log_batch(run_id, [*batch, ("val acc/seed 0", 0.75, 3_000, 300)])
    history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "val acc/seed 0"))
    assert history == [(100, 0.25), (200, 1e-300), (300, 0.75)]


def test_many_runs_writes_in_one_transaction_are_the_writes_one_by_one(store):
    """The tracker's writer sends every write queued since its last turn as one transaction
    (`apply`): three runs' creates, batches, end tags and ends interleaved, as the queue holds
    them, read back exactly as the same runs written one call at a time through MlflowClient.
    A batch whose points are all older than the stored latest leaves latest_metrics alone."""
    from orchestrator.store.sql_writes import RunBatch, RunEnd

    uri, client, exp = store
    writes = SqlWrites.of(client, uri)
    made = [writes.new_run(exp, TAGS, f"t{i} s0") for i in range(3)]
    ids = [run.info.run_id for run, _ in made]
    queued = [w for _, w in made]
    queued += [RunBatch(r, FIRST, PARAMS) for r in ids]
    queued += [RunBatch(r, SECOND, tags=END_TAGS) for r in ids] + [RunEnd(r, "FINISHED", 4_000) for r in ids]
    writes.apply(queued)
    writes.apply([RunBatch(ids[0], [("val_acc", 0.0, 9_999, 299)])])  # older than step 300: latest stays
    theirs = [write(ClientWrites(client), exp, f"t{i} s0") for i in range(3)]
    ClientWrites(client).log_batch(theirs[0], [("val_acc", 0.0, 9_999, 299)])
    for mine, their in zip(ids, theirs, strict=True):
        assert read(client, mine) == read(client, their)
    assert read(client, ids[0])["latest"]["val_acc"] == 1.0


def test_a_refused_write_among_queued_ones_drops_only_itself(store, caplog):
    """Queued writes go out as one transaction; when the store refuses one of them (a param
    logged again with another value, a run that is not there), nothing of that transaction
    stays, and the queue sends them one by one: only the refused write is dropped."""
    from orchestrator.store.queue import Op, WriteQueue
    from orchestrator.store.sql_writes import RunBatch, RunEnd

    uri, client, exp = store
    writes = SqlWrites.of(client, uri)
    calls = []

    def send(ops):
        calls.append(len(ops))
        writes.apply(ops)

    queue = WriteQueue(send_ops=send)
    run, create = writes.new_run(exp, TAGS, "queued")
    run_id = run.info.run_id
    for w in (
        create,
        RunBatch(run_id, FIRST[:2], PARAMS),
        RunBatch(run_id, params=[Param("seed", "9")]),
        RunBatch("0" * 32, [("val_acc", 1.0, 1, 1)]),
        RunBatch(run_id, SECOND[:1]),
        RunEnd(run_id, "FINISHED", 4_000),
    ):
        queue.pending.append(Op(w))
    assert queue.flush() and not queue.pending
    assert calls == [6, 1, 1, 1, 1, 1, 1]  # all at once, refused; then one at a time
    got = client.get_run(run_id)
    assert got.info.status == "FINISHED" and got.data.params["seed"] == "0"
    assert [m.step for m in client.get_metric_history(run_id, "val_acc")] == [100, 200, 300]
    assert sum("refused a write" in r.message for r in caplog.records) == 2
    calls.clear()
    for step in (400, 500):
        queue.pending.append(Op(RunBatch(run_id, [("val_acc", 1.0, 5_000, step)])))
    assert queue.flush() and calls == [2]  # one at a time only for the group that had a refusal


def test_a_tracker_writes_postgresql_by_several_lanes_each_run_whole(postgres, tmp_path, monkeypatch):
    """Into PostgreSQL the tracker writes through POSTGRES_LANES connections at once, each run's writes
    all by one of them, in order: twelve runs on the writer threads, every run whole (created,
    params, every point, end tags, finished), both lanes used, and `sent_through` true only once
    every write made before the mark is in the store."""
    from orchestrator.store.sql_writes import POSTGRES_LANES
    from orchestrator.store.tracker import Tracker, config_yaml
    from orchestrator.study import Study

    monkeypatch.chdir(tmp_path)  # a database store's artifacts go to ./mlruns
    study = Study.model_validate(
        {
            "name": f"lanes-{tmp_path.name}",
            "task": {"name": "modular", "p": 23},
            "model": {"n_layer": 1, "n_head": 4},
            "train": {"steps": 10},
            "grid": {"n": [{"d_model": 16}], "d": [0.5]},
            "tracking": {"uri": postgres.url("mlflow", "postgresql+psycopg2")},
            "workdir": str(tmp_path / "runs"),
        }
    )
    tracker = Tracker(study)
    tracker.open(config_yaml(study))
    assert len(tracker.lanes) == POSTGRES_LANES == 2
    tracker.start_writer()
    ids = [tracker.start_run(f"cell/trial={i}/seed=0", f"t{i}", {"lr": i}, {}) for i in range(12)]
    for step in range(10, 60, 10):
        for i, run_id in enumerate(ids):
            tracker.log_records(run_id, [{"step": step, "val_acc": step / 100 + i}])
    for run_id in ids:
        tracker.finish_run(run_id, "completed", "", {"max_val_acc": 1.0}, {"k": "v"})
    mark = tracker.mark()
    assert all(lane.written > 0 for lane in tracker.lanes)
    assert not tracker.children and not tracker.key_of  # what it keeps of runs is O(runs in flight)
    deadline = time.monotonic() + 60
    while not tracker.sent_through(mark):
        assert time.monotonic() < deadline, "the writes did not go out"
        tracker.flush()
        time.sleep(0.05)
    client = tracker.client
    for i, run_id in enumerate(ids):  # read at once: sent_through means in the store
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.params["lr"] == str(i) and run.data.tags["k"] == "v"
        assert [(m.step, m.value) for m in client.get_metric_history(run_id, "val_acc")] == [
            (s, s / 100 + i) for s in range(10, 60, 10)
        ]
    assert tracker.drain(timeout_s=30) and tracker.backlog == 0


def test_a_transaction_sent_again_adds_nothing(store):
    """A writer turn whose commit went through but whose answer was lost is sent again, whole:
    creates, params, points, tags and ends already there; nothing is refused and nothing doubles."""
    from orchestrator.store.sql_writes import RunBatch, RunEnd

    uri, client, exp = store
    writes = SqlWrites.of(client, uri)
    made = [writes.new_run(exp, TAGS, f"again {i}") for i in range(2)]
    ids = [run.info.run_id for run, _ in made]
    turn = [w for _, w in made] + [RunBatch(r, FIRST, PARAMS, END_TAGS) for r in ids]
    turn += [RunBatch(r, SECOND) for r in ids] + [RunEnd(r, "FINISHED", 4_000) for r in ids]
    writes.apply(turn)
    once = [read(client, r) for r in ids]
    writes.apply(turn)
    assert [read(client, r) for r in ids] == once
    assert len(client.get_metric_history(ids[0], "val_acc")) == 5
