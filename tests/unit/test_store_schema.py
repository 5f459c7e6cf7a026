"""A new SQLite MLflow store (orchestrator/store/schema.py).

- Opened by several processes at the same moment: with MLflow's own first call, processes that
  lose the race to make the tables fail (the driver of a study once crashed so in CI, beside a
  test reading its store); through `schema.ready` every process gets the store, whole and usable.
  Real processes, released together by a barrier, on real SQLite files.
- Made from the template, it is the store MLflow's migrations make: the same schema, the same
  Default experiment but for its time. A template that is not an empty store is deleted and the
  store made by MLflow."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sqlite3
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.store import schema

PROCESSES = 3
ROUNDS = 2  # new stores per way of opening them


def _open_stores(uris_plain, uris_ready, barrier, results) -> None:
    import logging

    logging.disable(logging.CRITICAL)  # MLflow's migration lines, three times over
    from mlflow.tracking import MlflowClient

    from orchestrator.store import schema

    for way, uris in (("plain", uris_plain), ("ready", uris_ready)):
        for uri in uris:
            barrier.wait()
            try:
                if way == "ready":
                    schema.ready(uri)
                MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
                results.put((way, uri, "ok"))
            except Exception as err:  # noqa: BLE001 - the outcome under test
                results.put((way, uri, f"{type(err).__name__}: {err}"[:200]))


def test_processes_opening_a_new_store_together_all_get_it_whole_through_ready(tmp_path, monkeypatch):
    monkeypatch.setenv(schema.CACHE_ENV, str(tmp_path / "cache"))  # the processes make it too
    plain = [f"sqlite:///{tmp_path / f'plain{i}.db'}" for i in range(ROUNDS)]
    ready = [f"sqlite:///{tmp_path / f'ready{i}.db'}" for i in range(ROUNDS)]
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(PROCESSES), ctx.Queue()
    procs = [
        ctx.Process(target=_open_stores, args=(plain, ready, barrier, results)) for _ in range(PROCESSES)
    ]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=300) for _ in range(PROCESSES * 2 * ROUNDS)]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    lost = [o for o in outcomes if o[0] == "plain" and o[2] != "ok"]
    # The race is real: MLflow's first call alone failed some process (else this test shows nothing).
    assert lost, outcomes
    assert all(schema.lost_race(RuntimeError(o[2])) for o in lost), lost  # ...and `ready` knows its signs
    assert [o for o in outcomes if o[0] == "ready" and o[2] != "ok"] == []
    for uri in ready:  # whole: a run written and read back
        client = MlflowClient(tracking_uri=uri)
        run = client.create_run(client.create_experiment("e"))
        client.log_metric(run.info.run_id, "loss", 0.5, step=3)
        assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss")] == [(3, 0.5)]


def clauses(sql: str | None) -> tuple[str, ...]:
    """A CREATE statement's lines, sorted: MLflow's own migrations order a table's CHECK
    constraints differently from one run to the next (two stores it makes differ so)."""
    return tuple(sorted(line.strip().rstrip(",").strip() for line in (sql or "").splitlines()))


def dump(path) -> tuple[list, list, list]:
    """A store's schema, its Alembic version and its experiments but for their times."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        return (
            sorted(
                (t, n, clauses(sql)) for t, n, sql in db.execute("SELECT type, name, sql FROM sqlite_master")
            ),
            db.execute("SELECT * FROM alembic_version").fetchall(),
            db.execute(
                "SELECT experiment_id, name, artifact_location, lifecycle_stage FROM experiments"
            ).fetchall(),
        )


def test_a_store_from_the_template_is_the_store_mlflow_makes(tmp_path, monkeypatch):
    monkeypatch.setenv(schema.CACHE_ENV, str(tmp_path / "cache"))
    MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow_made.db'}").search_experiments()
    schema.ready(f"sqlite:///{tmp_path / 'first.db'}")  # makes the template
    assert schema.template_path().is_file() and schema.template_path().parent == tmp_path / "cache"
    schema.ready(f"sqlite:///{tmp_path / 'copied.db'}")
    made = dump(tmp_path / "mlflow_made.db")
    assert made[2] == [(0, "Default", str(Path.cwd() / "mlruns" / "0"), "active")]
    assert dump(tmp_path / "copied.db") == dump(tmp_path / "first.db") == made
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no private file left


@pytest.mark.parametrize("flaw", ["an experiment", "not sqlite"])
def test_a_flawed_template_is_deleted_and_the_store_made_by_mlflow(tmp_path, monkeypatch, flaw):
    monkeypatch.setenv(schema.CACHE_ENV, str(tmp_path / "cache"))
    schema.ready(f"sqlite:///{tmp_path / 'first.db'}")
    template = schema.template_path()
    if flaw == "an experiment":
        MlflowClient(tracking_uri=f"sqlite:///{template}").create_experiment("planted")
    else:
        template.write_bytes(b"not a database at all" * 100)
    schema.ready(f"sqlite:///{tmp_path / 'new.db'}")
    assert not template.exists()  # remade by the next new store
    assert [
        e.name for e in MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'new.db'}").search_experiments()
    ] == ["Default"]


def test_a_template_others_could_write_is_left_alone_and_not_used(tmp_path, monkeypatch):
    monkeypatch.setenv(schema.CACHE_ENV, str(tmp_path / "cache"))
    schema.ready(f"sqlite:///{tmp_path / 'first.db'}")
    template = schema.template_path()
    assert template.stat().st_mode & 0o777 == 0o600 and template.parent.stat().st_mode & 0o022 == 0
    MlflowClient(tracking_uri=f"sqlite:///{template}").create_experiment("planted")
    template.chmod(0o664)  # as in a shared folder: anyone of the group may have planted that experiment
    schema.ready(f"sqlite:///{tmp_path / 'new.db'}")
    assert template.exists()  # not ours to delete
    names = [
        e.name for e in MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'new.db'}").search_experiments()
    ]
    assert names == ["Default"]
    assert (tmp_path / "new.db").stat().st_mode & 0o777 == (tmp_path / "first.db").stat().st_mode & 0o777


def test_with_no_cache_folder_the_store_is_made_by_mlflow(tmp_path, monkeypatch):
    """A container's user without a home (no passwd entry, no HOME): no template, and no folder
    named '~' in the working directory."""
    for name in (schema.CACHE_ENV, "XDG_CACHE_HOME", "HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(os.path, "expanduser", lambda path: path)  # as with no passwd entry
    monkeypatch.chdir(tmp_path)
    assert schema.template_path() is None
    schema.ready(f"sqlite:///{tmp_path / 'new.db'}")
    assert [
        e.name for e in MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'new.db'}").search_experiments()
    ] == ["Default"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.db"]


def test_ready_raises_what_is_not_the_race_and_leaves_other_stores_alone(tmp_path):
    (tmp_path / "not-a-db").write_text("plain text, not SQLite")
    with pytest.raises(Exception) as err:
        schema.ready(f"sqlite:///{tmp_path / 'not-a-db'}", timeout_s=5)
    assert not schema.lost_race(err.value)
    schema.ready("http://127.0.0.1:9")  # a server's store is the server's to make: no call at all
