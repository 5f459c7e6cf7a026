"""Where a user looks at a study: direct links into the MLflow UI, and optuna-dashboard.

MLflow 3.x opens an experiment on its GenAI "Overview" page (traces, empty for us) unless the
URL names the workflow; `?workflowType=machine_learning` opens the runs table (checked in
Chromium against MLflow 3.17; the experiment tag `mlflow.experimentKind` did not change it).
The report link opens the parent run's artifacts on the emergence heatmap. optuna-dashboard
reads the study's Optuna storage directly: the journal file by its path, or the RDB URL.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path

from orchestrator.store import names
from orchestrator.store.names import tag_equals
from orchestrator.study import Study, redact_url

MLFLOW_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default
DASHBOARD_UI = "http://127.0.0.1:8080"  # where `optuna-dashboard` serves by default
WORKFLOW = "workflowType=machine_learning"
FIRST_PLOT = "emergence_heatmap.png"


@dataclass(frozen=True)
class StudyLinks:
    experiment_url: str  # the study's runs table
    report_url: str  # the parent run: its report's heatmap, or the run page before a report
    mlflow_command: str | None  # what serves the UI for a local store; None for a tracking server
    dashboard_command: str  # optuna-dashboard on the study's Optuna storage
    dashboard_installed: bool

    def lines(self) -> list[str]:
        serve = f"{self.mlflow_command}, then open " if self.mlflow_command else ""
        dashboard = (
            self.dashboard_command
            if self.dashboard_installed
            else f"pip install 'grokscale[ui]' && {self.dashboard_command}"
        )
        return [
            f"runs:   {serve}{self.experiment_url}",
            f"report: {self.report_url}",
            f"optuna: {dashboard}, then open {DASHBOARD_UI}",
        ]

    def to_dict(self) -> dict:
        return asdict(self)


def ui_base(tracking_uri: str) -> str:
    """The UI's address: a tracking server serves its own UI; a local store is served by `mlflow ui`."""
    if tracking_uri.startswith(("http://", "https://")):
        return redact_url(tracking_uri).rstrip("/")
    return MLFLOW_UI


def experiment_url(base: str, experiment_id: str) -> str:
    return f"{base}/#/experiments/{experiment_id}?{WORKFLOW}"


def run_url(base: str, experiment_id: str, run_id: str, artifact: str | None = None) -> str:
    path = f"/artifacts/{artifact}" if artifact else ""
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}{path}?{WORKFLOW}"


def mlflow_command(tracking_uri: str) -> str | None:
    if tracking_uri.startswith(("http://", "https://")):
        return None
    return f"mlflow ui --backend-store-uri {shlex.quote(redact_url(tracking_uri))}"


def dashboard_command(storage_url: str) -> str:
    """optuna-dashboard takes a journal file by its path and an RDB by its URL (password redacted:
    the user supplies it)."""
    return f"optuna-dashboard {shlex.quote(redact_url(storage_url))}"


def _local_store_missing(tracking_uri: str) -> bool:
    """A SQLite store that is not there: asking MLflow would quietly create an empty one."""
    return (
        tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).is_file()
    )


def study_links(study: Study) -> StudyLinks | None:
    """The links of a study that is in its MLflow store; None when it is not there (yet), or
    the store cannot be reached (links are a convenience: they never fail a command)."""
    uri = study.tracking.uri
    if _local_store_missing(uri):
        return None
    from orchestrator.store.tracker import (
        HTTP_FAIL_FAST,  # a server that is away: seconds, not minutes
    )

    for name, value in HTTP_FAIL_FAST.items():
        os.environ.setdefault(name, value)
    from mlflow.tracking import MlflowClient

    from orchestrator.store import schema

    try:
        schema.ready(uri)  # a study that is starting may be making the store's tables right now
        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(study.experiment_name)
        query = (
            f"{tag_equals(names.TAG_ROLE, names.ROLE_STUDY)} and {tag_equals(names.TAG_STUDY, study.name)}"
        )
        parents = client.search_runs([exp.experiment_id], query, max_results=1) if exp else []
    except Exception:  # noqa: BLE001 - any store or transport error: no links, the command goes on
        return None
    if not parents:
        return None
    parent = parents[0]
    plots = parent.data.tags.get(names.TAG_REPORT, "")
    artifact = None  # the run itself, when the report made no plot
    if FIRST_PLOT.removesuffix(".png") in plots:
        artifact = f"{names.ARTIFACT_REPORT}/{FIRST_PLOT}"
    elif plots:
        artifact = names.ARTIFACT_REPORT
    base = ui_base(uri)
    return StudyLinks(
        experiment_url(base, exp.experiment_id),
        run_url(base, exp.experiment_id, parent.info.run_id, artifact),
        mlflow_command(uri),
        dashboard_command(study.storage_url),
        importlib.util.find_spec("optuna_dashboard") is not None,
    )
