"""Where `grokscale run` and `status` send the user: the MLflow UI's runs table and the report
(not MLflow 3's GenAI overview), and optuna-dashboard on the study's Optuna storage. Checked
against real stores; the browser test looks at what MLflow actually renders."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from orchestrator.store import names
from orchestrator.store.tracker import Tracker, config_yaml
from orchestrator.store.ui import WORKFLOW, dashboard_command, study_links
from orchestrator.study import load_study
from orchestrator.sweep.search import open_storage

from support.ports import free_port
from support.studies import tiny_study

STUDY = tiny_study("links", steps=40, eval_every=20, d=(0.5,), trials=1, sampler=None, num_cpus=None)


@pytest.fixture
def study(tmp_path, monkeypatch):
    """The study's experiment and parent run in a real SQLite store, made by the driver's Tracker;
    a second experiment first, so the study's id is not the first one."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(STUDY))
    # An absolute URI: MLflow caches its SQLite engine by URI, so a relative one would be shared
    # by every test of this process whatever its working directory.
    study = load_study(tmp_path / "study.yaml", [f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"])
    MlflowClient(study.tracking.uri).create_experiment("another")
    tracker = Tracker(study)
    tracker.open(config_yaml(study))
    return study, tracker


def wait_for(url: str, timeout_s: float) -> bytes:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.read()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_links_name_the_study_experiment_and_parent_run(study):
    study, tracker = study
    links = study_links(study)
    exp_id, parent = tracker.experiment_id, tracker.parent_id
    assert exp_id != MlflowClient(study.tracking.uri).get_experiment_by_name("another").experiment_id
    assert links.experiment_url == f"http://127.0.0.1:5000/#/experiments/{exp_id}?{WORKFLOW}"
    assert links.report_url == f"http://127.0.0.1:5000/#/experiments/{exp_id}/runs/{parent}?{WORKFLOW}"
    assert links.mlflow_command == f"mlflow ui --backend-store-uri {study.tracking.uri}"
    assert links.dashboard_command == f"optuna-dashboard {study.storage_url}"
    # Once the report is logged, the link opens its first plot.
    tracker.client.set_tag(parent, names.TAG_REPORT, "emergence_heatmap, grokking_curves")
    assert study_links(study).report_url.endswith(
        f"/runs/{parent}/artifacts/report/emergence_heatmap.png?{WORKFLOW}"
    )


def test_no_links_and_no_store_created_before_a_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(STUDY))
    assert study_links(load_study(tmp_path / "study.yaml")) is None
    assert not (tmp_path / "mlflow.db").exists()


def test_a_tracking_server_serves_its_own_ui_without_its_password(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(STUDY))
    study = load_study(tmp_path / "study.yaml", [f"tracking.uri=http://127.0.0.1:{free_port()}"])
    assert study_links(study) is None  # nobody listens: no links, and no minutes of retries
    command = dashboard_command("postgresql://bob:s3cret@db/optuna")  # quoted: <> are shell redirections
    assert command == "optuna-dashboard 'postgresql://bob:<redacted>@db/optuna'"


@pytest.mark.skipif(
    shutil.which("optuna-dashboard") is None
    and not Path(sys.executable).with_name("optuna-dashboard").exists(),
    reason="optuna-dashboard is not installed (pip install 'grokscale[ui]')",
)
def test_optuna_dashboard_reads_the_study_journal(study, tmp_path):
    """The printed command, run as printed: the dashboard lists the cell's Optuna study."""
    study, _ = study
    storage = open_storage(study.storage_url)  # the journal, as the driver writes it
    optuna.create_study(study_name=names.optuna_study_name(study.name, "cellA"), storage=storage).optimize(
        lambda t: t.suggest_float("x", 0, 1), n_trials=2
    )
    port = free_port()
    command = study_links(study).dashboard_command.split()
    exe = shutil.which(command[0]) or str(Path(sys.executable).with_name(command[0]))
    server = subprocess.Popen(
        [exe, *command[1:], "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        body = json.loads(wait_for(f"http://127.0.0.1:{port}/api/studies", timeout_s=60))
    finally:
        server.terminate()
        server.wait(timeout=30)
    found = {s["study_name"]: s for s in body["study_summaries"]}
    assert set(found) == {"links/cellA"}


def browser() -> str | None:
    return next(
        (
            shutil.which(name)
            for name in ("chromium", "chromium-browser", "google-chrome")
            if shutil.which(name)
        ),
        None,
    )


@pytest.mark.long
@pytest.mark.slow
@pytest.mark.skipif(browser() is None, reason="needs a headless Chromium (Debian: apt-get install chromium)")
def test_the_printed_link_opens_the_runs_table_in_mlflow(study, tmp_path):
    """`mlflow ui` on the study's store, the page rendered by Chromium: the printed link shows the
    runs table; the bare experiment URL shows MLflow 3's GenAI overview instead (the bug)."""
    study, tracker = study
    tracker.finish_study()
    assert tracker.drain(timeout_s=30)
    port = free_port()
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    server = subprocess.Popen(
        [mlflow, "ui", "--backend-store-uri", study.tracking.uri, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"

    def render(url: str) -> str:
        out = subprocess.run(
            [
                browser(),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--virtual-time-budget=40000",
                "--dump-dom",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        return out.stdout

    try:
        wait_for(base, timeout_s=240)  # the UI's first start takes a minute on a loaded machine
        printed = study_links(study).experiment_url.replace("http://127.0.0.1:5000", base)
        render(printed)  # the first page load compiles and caches the UI's assets: slow on a loaded machine
        shown, bare = render(printed), render(f"{base}/#/experiments/{tracker.experiment_id}")
    finally:
        os.killpg(server.pid, signal.SIGKILL)  # its whole session: uvicorn's workers and job consumers
        server.wait(timeout=60)
    # The runs page has its "New run" button; the GenAI overview has neither it nor a runs table.
    assert "New run" in shown and "Overview" not in shown, shown[-2000:]
    assert "New run" not in bare and "Overview" in bare, bare[-2000:]
