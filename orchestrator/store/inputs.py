"""A study's results as the analyses read them (`Inputs`): every run under its own event
thresholds, the usable runs, the curves, and which columns hold N, D and the accuracy whose
emergence is measured. The report's sections read them, and so do the refinement rounds
(sweep/refine.py), which must fit the same thresholds the report fits."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from orchestrator.store import names
from orchestrator.store.names import USABLE_STATUSES
from orchestrator.store.results import THRESHOLDS, StudyResults
from orchestrator.study.tasks import task_kinds, task_settings


@dataclass
class Inputs:
    """What every section reads: the study's config, its runs and curves, and the axes."""

    config: dict
    runs: pd.DataFrame  # every run
    usable: pd.DataFrame  # the runs whose metrics mean what they say
    curves: pd.DataFrame
    out: Path
    n_col: str
    d_col: str
    metric: str  # the accuracy whose emergence is measured
    chance: float | None
    language_model: bool = False  # its accuracies are next-token accuracies (no grokking phases)


def read_inputs(res: StudyResults, out: Path) -> Inputs:
    """The Inputs of a study's results: every run under its own event thresholds, the usable
    runs with the probability of the right answer added, and the axes and metric to measure."""
    config = res.config
    runs = with_thresholds(res.runs, config)
    usable = runs[runs["status"].isin(USABLE_STATUSES)].copy()
    if "val_loss" in usable:  # the mean probability given to the right answer: a continuous accuracy
        usable["val_p_answer"] = np.exp(-usable["val_loss"].astype(float))
    return Inputs(
        config,
        runs,
        usable,
        res.curves,
        out,
        _n_col(config),
        names.PARAM_N_TRAIN,
        _emergence_metric(config, runs),
        chance_level(config),
        is_language_model(config),
    )


def is_language_model(config: dict) -> bool:
    """Whether the study's task models language (charlm, a tokenized corpus, a task of the user's
    that says so): its D counts tokens and its accuracies are next-token accuracies."""
    kind = task_kinds().get((config.get("task") or {}).get("name"))
    return bool(kind is not None and kind.language_model)


def chance_level(config: dict) -> float | None:
    """The accuracy of guessing, from the task: what "never left chance" is measured against. A
    task class declares it as a property `chance_level` (trainers/own_code.py); an LM's token
    accuracy has none: the analysis takes the smallest scale's level."""
    settings = task_settings(config.get("task") or {})
    level = getattr(settings, "chance_level", None)
    return None if level is None else float(level)


def with_thresholds(runs: pd.DataFrame, config: dict) -> pd.DataFrame:
    """`runs` with the event thresholds of each run: as read back from MLflow (results.py), else
    the study's `train:` section, else the trainer's defaults."""
    train = config.get("train") or {}
    runs = runs.copy()
    for col, default in THRESHOLDS.items():
        fixed = float(train.get(col, default))
        runs[col] = runs[col].fillna(fixed) if col in runs else fixed
    return runs


def _n_col(config: dict) -> str:
    non_embedding = (config.get("grid") or {}).get("n_convention") == "non_embedding"
    return names.PARAM_N_PARAMS_NON_EMBEDDING if non_embedding else names.PARAM_N_PARAMS


def _emergence_metric(config: dict, runs: pd.DataFrame) -> str:
    objectives = config.get("objectives") or []
    first = objectives[0]["metric"] if objectives else "max_val_acc"
    return first if "acc" in first and first in runs else "max_val_acc"
