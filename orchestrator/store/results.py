"""A study read back from MLflow alone: one row per training run, and the curves.

This is what `grokscale report` analyses, so a report can be made from any machine that has the
tracking URI. The tables use the column names the analysis functions default to.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pandas as pd
from mlflow.tracking import MlflowClient

CURVE_METRICS = ("train_acc", "val_acc", "train_loss", "val_loss", "val_token_acc", "val_answer_logprob")
NUMERIC_PARAMS = ("n_params", "n_params_non_embedding", "n_params_embedding", "n_train", "d_value", "seed",
                  "optuna_trial_number")


class ResultsError(Exception):
    """The study is not in this MLflow store, or it has no runs yet."""


@dataclass
class StudyResults:
    parent_run_id: str
    experiment_id: str
    config: dict  # the resolved study, as logged with the parent run
    runs: pd.DataFrame  # one row per training run (trial x seed)
    curves: pd.DataFrame  # long: run_id, step, train_acc, val_acc, train_loss, val_loss, ...


def _number(text: str):
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return text
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def find_parent(client: MlflowClient, experiment: str) -> tuple[str, str]:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = [e.name for e in client.search_experiments(max_results=50)]
        raise ResultsError(f"no experiment {experiment!r} in this MLflow store; it has: {', '.join(names) or 'none'}")
    parents = client.search_runs([exp.experiment_id], "tags.`grokscale.role` = 'study'", max_results=5)
    if not parents:
        raise ResultsError(f"experiment {experiment!r} holds no grokscale study run")
    return exp.experiment_id, parents[0].info.run_id


def load_results(tracking_uri: str, experiment: str, with_curves: bool = True) -> StudyResults:
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment_id, parent_id = find_parent(client, experiment)
    import yaml

    try:
        config = yaml.safe_load(open(client.download_artifacts(parent_id, "study.yaml")).read()) or {}
    except Exception:  # noqa: BLE001 - an older or foreign study without the artifact
        config = {}
    children = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'",
                                  max_results=50_000)
    if not children:
        raise ResultsError(f"study {experiment!r} has no training runs yet")
    rows, curves = [], []
    for run in children:
        params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
        row: dict = {"run_id": run.info.run_id, "cell": params.get("cell", tags.get("grokscale.cell")),
                     "status": tags.get("grokscale.status", "unknown"), "reason": tags.get("grokscale.reason", ""),
                     "trial_number": int(tags.get("grokscale.trial_number", params.get("optuna_trial_number", -1)))}
        for key in NUMERIC_PARAMS:
            if key in params:
                row[key] = float(params[key])
        for key, value in params.items():
            if key.startswith("param."):
                row[key] = _number(value)
        for key, value in metrics.items():
            if key.startswith("final."):
                row[key.removeprefix("final.")] = value
        rows.append(row)
        if with_curves:
            points: dict[int, dict] = {}
            for name in CURVE_METRICS:
                if name not in metrics:
                    continue
                for m in client.get_metric_history(run.info.run_id, name):
                    points.setdefault(m.step, {"run_id": run.info.run_id, "step": m.step})[name] = m.value
            curves += sorted(points.values(), key=lambda p: p["step"])
    runs = pd.DataFrame(rows).sort_values(["cell", "trial_number", "seed"], ignore_index=True)
    for col in ("memorization_step", "generalization_step", "grokking_delay"):
        if col not in runs:
            runs[col] = math.nan
    return StudyResults(parent_id, experiment_id, config, runs, pd.DataFrame(curves))
