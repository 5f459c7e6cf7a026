"""`tracking.database`: a study behind a real `mlflow server` on a real PostgreSQL writes its runs'
rows straight into the server's own database (orchestrator/store/sql_writes.py), and everything
reads back through the server as if the server had written it. A database that is not the
server's own is refused before anything starts, since runs written there would be invisible to
the server. Skipped where PostgreSQL's binaries or psycopg2 are missing."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.store.names import TAG_STATUS
from orchestrator.store.sql_writes import SqlWrites
from orchestrator.store.tracker import Tracker, config_yaml
from orchestrator.study import Study

from support.cli import grokscale, listing, write_study
from support.mlflow_server import MlflowServer
from support.postgres import started_or_skip
from support.studies import tiny_study


@pytest.fixture
def server(tmp_path):
    """PostgreSQL with two MLflow stores: `mlflow` behind a tracking server, `other` not."""
    with started_or_skip(("mlflow", "other")) as pg:
        mlflow = MlflowServer(tmp_path, backend=pg.url("mlflow", "postgresql+psycopg2"))
        try:
            mlflow.start()
            yield pg, mlflow
        finally:
            mlflow.stop()


@pytest.mark.slow  # a PostgreSQL, an MLflow server and a study on a local Ray: about a minute
def test_runs_go_into_the_servers_database_and_read_back_through_the_server(tmp_path, server):
    pg, mlflow = server
    database = pg.url("mlflow")
    study = tiny_study("direct", tracking={"uri": mlflow.uri, "database": database}, pack={"mode": "off"})

    # The tracker picks the database for its hot writes.
    tracker = Tracker(Study.model_validate({**study, "name": "probe", "workdir": str(tmp_path / "probe")}))
    tracker.open(config_yaml(tracker.study))
    assert isinstance(tracker.writes, SqlWrites) and tracker.writes.dialect.name == "postgresql"

    path = write_study(tmp_path, study)
    out = grokscale("run", path, "--quiet", "--json", "--no-report", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1])["completed"] == 4

    client = MlflowClient(tracking_uri=mlflow.uri)  # what a user reads: the server
    exp = client.get_experiment_by_name("direct")
    runs = [r for r in client.search_runs([exp.experiment_id]) if TAG_STATUS in r.data.tags]
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    for run in runs:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
        assert steps == [50, 100], steps  # every evaluation, once
        assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # the server's artifact store
    assert int(pg.query("mlflow", "SELECT count(*) FROM metrics WHERE key = 'val_acc'")) == 8


@pytest.mark.slow
def test_a_database_that_is_not_the_servers_is_refused_before_anything_starts(tmp_path, server):
    pg, mlflow = server
    MlflowClient(tracking_uri=pg.url("other", "postgresql+psycopg2")).search_experiments()  # its own tables
    path = write_study(
        tmp_path, tiny_study("direct", tracking={"uri": mlflow.uri, "database": pg.url("other")})
    )
    files = listing(tmp_path)
    for command in (["validate"], ["run", "--quiet"]):
        out = grokscale(command[0], path, *command[1:], cwd=tmp_path, timeout=120)
        assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
        assert "tracking.database" in out.stderr and "is not the backend store" in out.stderr, out.stderr
        assert "nothing was started" in out.stderr
    assert listing(tmp_path) == files
    assert MlflowClient(tracking_uri=mlflow.uri).get_experiment_by_name("direct") is None

    # A database with no MLflow tables at all names the field too.
    path = write_study(
        tmp_path, tiny_study("direct", tracking={"uri": mlflow.uri, "database": pg.url("postgres")})
    )
    out = grokscale("run", path, "--quiet", cwd=tmp_path, timeout=120)
    assert out.returncode == 2 and "tracking.database: logged in to" in out.stderr, out.stderr
