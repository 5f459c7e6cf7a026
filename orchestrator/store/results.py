"""A study read back from MLflow alone: one row per training run, and the curves.

This is what `grokscale report` analyses, so a report can be made from any machine that has the
tracking URI. The tables use the column names the analysis functions default to.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from orchestrator.analysis.grokking import TRAIN_THRESHOLD, VAL_THRESHOLD
from orchestrator.store import names
from orchestrator.store.names import tag_equals

CURVE_METRICS = (
    "train_acc",
    "val_acc",
    "train_loss",
    "val_loss",
    "val_token_acc",
    "val_answer_logprob",
    "flops",
)
NUMERIC_PARAMS = (
    names.PARAM_N_PARAMS,
    names.PARAM_N_PARAMS_NON_EMBEDDING,
    names.PARAM_N_PARAMS_EMBEDDING,
    names.PARAM_N_TRAIN,
    names.PARAM_D_VALUE,
    names.PARAM_SEED,
    names.PARAM_TRIAL_NUMBER,
)
THRESHOLDS = {"train_threshold": TRAIN_THRESHOLD, "val_threshold": VAL_THRESHOLD}  # the trainer's defaults


# Runs asked of MLflow a page at a time; 50,000 is the most its SQL store returns in one page
# (SEARCH_MAX_RESULTS_THRESHOLD), and a study has more runs than any one page holds.
PAGE_SIZE = 50_000


def all_runs(
    client: MlflowClient, experiment_ids: list[str], filter_string: str = "", page_size: int | None = None
) -> list[Run]:
    """Every run the filter matches, page after page until MLflow returns no next page token
    (`max_results` alone silently drops the runs beyond one page)."""
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(
            experiment_ids, filter_string, max_results=page_size or PAGE_SIZE, page_token=token
        )
        runs += page
        token = page.token
        if not token:
            return runs


class ResultsError(Exception):
    """The study is not in this MLflow store, or it has no runs yet."""


@dataclass
class StudyResults:
    parent_run_id: str
    experiment_id: str
    config: dict  # the resolved study, as logged with the parent run
    runs: pd.DataFrame  # one row per training run (trial x seed), with the event thresholds it ran with
    curves: pd.DataFrame  # long: run_id, step, train_acc, val_acc, train_loss, val_loss, ...
    refine: dict | None = (
        None  # refine.json of the parent run (orchestrator/sweep/refine.py); None without grid.refine
    )


def _number(text: str):
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return text
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def find_parent(client: MlflowClient, experiment: str) -> tuple[str, str]:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        found = [e.name for e in client.search_experiments(max_results=50)]
        raise ResultsError(
            f"no experiment {experiment!r} in this MLflow store; it has: {', '.join(found) or 'none'}"
        )
    parents = client.search_runs(
        [exp.experiment_id], tag_equals(names.TAG_ROLE, names.ROLE_STUDY), max_results=5
    )
    if not parents:
        raise ResultsError(f"experiment {experiment!r} holds no grokscale study run")
    return exp.experiment_id, parents[0].info.run_id


def run_thresholds(params: dict[str, str], study_train: dict) -> dict[str, float]:
    """The event thresholds a run's trainer used: its own spec (the `spec_json` param, which
    also holds searched values), else the study's `train:` section, else the trainer's defaults.
    The report's grokking events must use these, or its phases contradict the run's own events."""
    try:
        spec_train = json.loads(params.get(names.PARAM_SPEC_JSON, ""))["train"]
    except (ValueError, KeyError, TypeError):  # absent, or cut at MLflow's param length
        spec_train = {}
    return {k: float(spec_train.get(k, study_train.get(k, default))) for k, default in THRESHOLDS.items()}


def run_row(run, study_train: dict) -> dict:
    """One training run as a table row: cell, status, numeric params, searched values, finals."""
    params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
    trial = tags.get(names.TAG_TRIAL_NUMBER, params.get(names.PARAM_TRIAL_NUMBER, -1))
    row: dict = {
        "run_id": run.info.run_id,
        "cell": params.get(names.PARAM_CELL, tags.get(names.TAG_CELL)),
        "status": tags.get(names.TAG_STATUS, "unknown"),
        "reason": tags.get(names.TAG_REASON, ""),
        "trial_number": int(trial),
        **run_thresholds(params, study_train),
        "refined": tags.get(names.TAG_REFINED),
    }  # "round k" on a cell grid.refine added, else None
    for key in NUMERIC_PARAMS:
        if key in params:
            row[key] = float(params[key])
    for key, value in params.items():
        if key.startswith(names.PARAM_SEARCHED_PREFIX):
            row[key] = _number(value)
    for key, value in metrics.items():
        if key.startswith(names.FINAL_PREFIX):
            row[key.removeprefix(names.FINAL_PREFIX)] = value
    return row


def load_refinement(client: MlflowClient, parent_id: str) -> dict | None:
    """What grid.refine added and why each line stopped (the parent run's refine.json), None
    when the study did not refine. An artifact that is there but cannot be read is said, not
    dropped: {"error": why}."""
    if not any(a.path == names.ARTIFACT_REFINE for a in client.list_artifacts(parent_id)):
        return None
    try:
        return json.loads(Path(client.download_artifacts(parent_id, names.ARTIFACT_REFINE)).read_text())
    except (OSError, ValueError) as err:
        return {"error": f"{names.ARTIFACT_REFINE} could not be read: {type(err).__name__}: {err}"}


def run_curves(client: MlflowClient, run) -> list[dict]:
    """The run's evaluation curves, one dict per evaluated step."""
    points: dict[int, dict] = {}
    for name in CURVE_METRICS:
        if name not in run.data.metrics:
            continue
        for m in client.get_metric_history(run.info.run_id, name):
            points.setdefault(m.step, {"run_id": run.info.run_id, "step": m.step})[name] = m.value
    return sorted(points.values(), key=lambda p: p["step"])


def load_results(tracking_uri: str, experiment: str, with_curves: bool = True) -> StudyResults:
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment_id, parent_id = find_parent(client, experiment)
    try:
        config = (
            yaml.safe_load(Path(client.download_artifacts(parent_id, names.ARTIFACT_STUDY)).read_text()) or {}
        )
    except Exception:  # noqa: BLE001 - an older or foreign study without the artifact
        config = {}
    children = all_runs(client, [experiment_id], tag_equals(names.PARENT_RUN, parent_id))
    if not children:
        raise ResultsError(f"study {experiment!r} has no training runs yet")
    study_train = config.get("train") or {}
    rows = [run_row(run, study_train) for run in children]
    curves = [point for run in children for point in run_curves(client, run)] if with_curves else []
    runs = pd.DataFrame(rows).sort_values(["cell", "trial_number", "seed"], ignore_index=True)
    for col in ("memorization_step", "generalization_step", "grokking_delay"):
        if col not in runs:
            runs[col] = math.nan
    return StudyResults(
        parent_id, experiment_id, config, runs, pd.DataFrame(curves), load_refinement(client, parent_id)
    )
