"""Optuna: one study per (N, D) cell in one storage (or, with search.scope: study, one study for
every cell), the searched space, the samplers."""

from __future__ import annotations

from typing import Any

import optuna

from orchestrator.store import names
from orchestrator.store.trials import JOURNAL_LOCK_GRACE_S, open_storage, read_storage
from orchestrator.study import Study
from orchestrator.study.grid import Cell
from orchestrator.study.plugins import make_own_sampler
from trainers.import_path import is_import_path

optuna.logging.set_verbosity(optuna.logging.WARNING)
__all__ = ["JOURNAL_LOCK_GRACE_S", "open_storage", "read_storage"]  # where the driver and tests find them


class AskTellGridSampler(optuna.samplers.GridSampler):
    """Optuna's GridSampler calls study.stop() after the last grid point, which raises under
    ask/tell; the driver stops each cell itself at trials_per_cell."""

    def after_trial(self, study, trial, state, values) -> None:
        pass


def make_sampler(study: Study, cell_index: int, n_existing: int = 0) -> optuna.samplers.BaseSampler:
    """The cell's sampler. Samplers that draw from a random generator start it anew in every
    driver, so a resumed cell (n_existing trials) seeds it past those: otherwise it would draw the
    values of its first trials again. QMC and grid index their sequence by the stored trials."""
    name = study.search.sampler
    seed = study.search.seed + cell_index
    if name not in ("qmc", "grid") and n_existing:
        seed += 1_000_003 * n_existing
    if is_import_path(name):  # the study's own (orchestrator/study/plugins.py), checked at load
        return make_own_sampler(name, seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed)
    if name == "nsgaii":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed)
    # grid: every combination of the categorical choices and of each range's two ends.
    space = {
        k: (p.choices if p.type == "categorical" else [p.low, p.high]) for k, p in study.search.space.items()
    }
    return AskTellGridSampler(space, seed=seed)


SCOPE_STUDY_KEY = "all-cells"  # search.scope study: its one Optuna study, named as a cell's would be


def optuna_names(study: Study, cells: list[Cell]) -> list[str]:
    """The Optuna studies the study's search keeps: one per cell, or one for all of them."""
    if study.search.scope == "study":
        return [names.optuna_study_name(study.name, SCOPE_STUDY_KEY)]
    return [names.optuna_study_name(study.name, c.key) for c in cells]


def cell_study(study: Study, cell: Cell, cell_index: int, storage) -> optuna.Study:
    return _open_study(study, names.optuna_study_name(study.name, cell.key), cell_index, storage)


def shared_study(study: Study, storage) -> optuna.Study:
    """search.scope study: the one Optuna study whose trials run in every cell (sampler seed + 0)."""
    return _open_study(study, names.optuna_study_name(study.name, SCOPE_STUDY_KEY), 0, storage)


def _open_study(study: Study, name: str, index: int, storage) -> optuna.Study:
    ostudy = optuna.create_study(
        study_name=name,
        storage=storage,
        load_if_exists=True,
        sampler=make_sampler(study, index),
        directions=[o.direction for o in study.objectives],
    )
    existing = len(ostudy.get_trials(deepcopy=False))
    if existing:
        ostudy.sampler = make_sampler(study, index, existing)
    return ostudy


def suggest(trial: optuna.Trial, study: Study) -> dict[str, Any]:
    """Draw the trial's value for every searched field (dotted TrainSpec paths)."""
    params = {}
    for key, p in study.search.space.items():
        if p.type == "float":
            params[key] = trial.suggest_float(key, p.low, p.high, log=p.log)
        elif p.type == "int":
            params[key] = trial.suggest_int(key, p.low, p.high, log=p.log, step=p.step)
        else:
            params[key] = trial.suggest_categorical(key, p.choices)
    return params
