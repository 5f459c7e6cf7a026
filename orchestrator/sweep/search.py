"""Optuna: one study per (N, D) cell in one storage (or, with search.scope: study, one study for
every cell), the searched space, the samplers."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

from orchestrator.store import names
from orchestrator.store.journal import RepairingJournalBackend, journal_tail
from orchestrator.study import Study
from orchestrator.study.grid import Cell
from orchestrator.study.plugins import make_own_sampler
from trainers.import_path import is_import_path

optuna.logging.set_verbosity(optuna.logging.WARNING)


JOURNAL_LOCK_SUFFIX = ".lock"  # Optuna's lock file beside the journal (LOCK_FILE_SUFFIX, private)
JOURNAL_LOCK_GRACE_S = 30  # Optuna's default: a lock unchanged this long belongs to a dead writer


def rdb_url(url: str) -> str:
    """A bare postgresql:// means psycopg2 to SQLAlchemy 2.0 but psycopg (3) to 2.1: when only
    psycopg2 is installed, name it, so the URL works with either SQLAlchemy."""
    if (
        url.startswith("postgresql://")
        and not importlib.util.find_spec("psycopg")
        and importlib.util.find_spec("psycopg2")
    ):
        return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """A journal file (the default, safe for one writer: the driver) or an RDB URL for teams.
    A journal is written through RepairingJournalBackend: an incomplete last record is set aside
    under Optuna's lock, by the first append (store/journal.py)."""
    if "://" in url:
        return optuna.storages.RDBStorage(rdb_url(url))
    path = Path(url).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    journal_tail(path)  # a damaged record before the last raises JournalCorrupt, changing nothing
    lock = path.with_name(path.name + JOURNAL_LOCK_SUFFIX)
    if lock.is_symlink() and not lock.exists():
        # Optuna's default lock is a symlink to the journal's path as given; from a relative path it
        # dangles, and then its grace period never starts (it stats the target): a driver killed
        # while writing left a lock the next one waited on forever, spinning. Such a lock is never
        # held by a live grokscale driver (it uses the lock below), so it is removed.
        lock.unlink()
        print(f"note: removed a stale journal lock {lock} (left by a killed driver)", file=sys.stderr)
    # A plain lock file: a killed driver's lock is broken after JOURNAL_LOCK_GRACE_S without change.
    lock_obj = JournalFileOpenLock(str(path), grace_period=JOURNAL_LOCK_GRACE_S)
    return JournalStorage(RepairingJournalBackend(str(path), lock_obj))


def read_storage(url: str) -> optuna.storages.BaseStorage | None:
    """The storage, to read only (`grokscale status`); None when there is none (none is created).
    A journal is read as it is, never repaired or unlocked: an incomplete last record (a live
    driver's append in progress, or a killed one's) is left alone, said on stderr, and not read."""
    if "://" in url:
        return optuna.storages.RDBStorage(rdb_url(url))
    path = Path(url).resolve()
    if not path.is_file():
        return None
    tail = journal_tail(path)  # a damaged record before the last raises JournalCorrupt
    if tail:
        print(
            f"note: {path}: its last record is incomplete ({len(tail)} bytes): a driver is writing it now, "
            "or one was killed mid-write. Shown: the records before it; nothing was changed (the next "
            "`grokscale run` sets a killed driver's record aside).",
            file=sys.stderr,
        )
    return JournalStorage(JournalFileBackend(str(path)))  # Optuna reads without its lock


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
