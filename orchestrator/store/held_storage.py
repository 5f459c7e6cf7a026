"""Optuna's RDB storage for the studies a driver holds: every write goes to the database at once,
as before; every read of a held study's trials comes from memory.

Why: Optuna's own wrapper (`_CachedStorage`) keeps only finished trials, since another process
may write the rest; so every read of a trial in flight is a database round trip, and each one
costs several queries (params, values, attributes, intermediate values): `Study.tell` reads its
trial twice (~5 ms of CPU each on PostgreSQL), and a TPE ask reads every trial in flight. While a
driver holds its study (store/hold.py) no other process writes the study's trials, so the copy
in memory, loaded once and kept by applying each write after the database took it, is exact.

What is held: the studies named in `held` (the study's cells, `<study>/<cell>`). Every other
study (the holds themselves, which rival drivers write) reads the database as ever.
Timestamps are the one approximation: a trial's start and end times in memory are this process's
clock when it sent them, the database's are its own at the same moment; any other process reads
the database's.

The held trials' hot writes (a new trial, a param, user attributes, the end) go as SQLAlchemy Core
statements on Optuna's own tables (SQLite, PostgreSQL), not through its ORM sessions, each of
which reads the trial back first to check what the copy in memory knows (bench_held_storage.py
measures both). The rows are Optuna's (its models' tables, its JSON, its naive-UTC times);
tests/unit/test_held_storage.py reads them back through Optuna's own storage. Anything else goes
through Optuna's RDBStorage.

Optuna's private modules (`optuna.storages._rdb.models`) are imported by this module alone, and
this module only for a study on an RDB storage under an Optuna release it was tested with
(versions.py; the driver imports it there and nowhere else): a journal study, or a new Optuna,
never touches them (tests/unit/test_versions.py).
"""

from __future__ import annotations

import copy
import functools
import json
import sqlite3
import threading
from collections.abc import Collection, Container, Sequence
from datetime import UTC, datetime
from typing import Any

from optuna import distributions
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages._rdb import models
from optuna.study import StudyDirection
from optuna.study._frozen import FrozenStudy
from optuna.trial import FrozenTrial, TrialState


class HeldStorage(BaseStorage):
    def __init__(self, backend: RDBStorage, held: Collection[str]) -> None:
        self.backend, self.held = backend, frozenset(held)
        # Held trials' writes as Core statements: PostgreSQL, and SQLite from 3.35 (RETURNING)
        self.plain = backend.engine.name == "postgresql" or (
            backend.engine.name == "sqlite" and sqlite3.sqlite_version_info >= (3, 35)
        )
        self._lock = threading.RLock()
        self._names: dict[int, str] = {}
        self._directions: dict[int, list[StudyDirection]] = {}
        self._trials: dict[int, dict[int, FrozenTrial]] = {}  # held study id -> its trials by number
        self._where: dict[int, tuple[int, int]] = {}  # trial id -> (study id, number), held studies
        self._dists: dict[int, dict[str, distributions.BaseDistribution]] = {}  # a study's params

    # -- which studies are held, and their trials ---------------------------------------------
    def _held(self, study_id: int) -> dict[int, FrozenTrial] | None:
        """The study's trials by number when it is held (loaded on first use), else None."""
        trials = self._trials.get(study_id)
        if trials is not None:
            return trials
        if study_id not in self._names:
            self._names[study_id] = self.backend.get_study_name_from_id(study_id)
        if self._names[study_id] not in self.held:
            return None
        trials = {t.number: t for t in self.backend.get_all_trials(study_id, deepcopy=False)}
        dists: dict[str, distributions.BaseDistribution] = {}
        for t in trials.values():
            self._where[t._trial_id] = (study_id, t.number)
            dists.update(t.distributions)
        self._trials[study_id], self._dists[study_id] = trials, dists
        return trials

    def _mine(self, trial_id: int) -> FrozenTrial | None:
        where = self._where.get(trial_id)
        return None if where is None else self._trials[where[0]][where[1]]

    def _put(self, trial: FrozenTrial) -> None:
        study_id, number = self._where[trial._trial_id]
        self._trials[study_id][number] = trial

    # -- trials: written through, read from memory --------------------------------------------
    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        with self._lock:
            trials = self._held(study_id)
            if trials is None:
                return self.backend.create_new_trial(study_id, template_trial)
            if template_trial is None and self.plain:
                frozen = self._insert_trial(study_id, len(trials))
            else:  # the call Optuna's own wrapper makes: the new trial as stored, not read back
                frozen = self.backend._create_new_trial(study_id, template_trial)
            trials[frozen.number] = frozen
            self._where[frozen._trial_id] = (study_id, frozen.number)
            self._dists[study_id].update(frozen.distributions)
            return frozen._trial_id

    def set_trial_param(
        self,
        trial_id: int,
        param_name: str,
        param_value_internal: float,
        distribution: distributions.BaseDistribution,
    ) -> None:
        with self._lock:
            trial = self._mine(trial_id)
            if trial is None:
                return self.backend.set_trial_param(trial_id, param_name, param_value_internal, distribution)
            self.check_trial_is_updatable(trial_id, trial.state)
            study_id = self._where[trial_id][0]
            known = self._dists[study_id].get(param_name)
            if known is not None:
                distributions.check_distribution_compatibility(known, distribution)
            if self.plain:  # every param of the study is in memory: `known` is what the database would say
                self._execute(
                    (
                        models.TrialParamModel.__table__.insert(),
                        [
                            {
                                "trial_id": trial_id,
                                "param_name": param_name,
                                "param_value": param_value_internal,
                                "distribution_json": distributions.distribution_to_json(distribution),
                            }
                        ],
                    )
                )
            else:  # as Optuna's wrapper: a distribution the study has seen needs no check in the database
                self.backend._set_trial_param(trial_id, param_name, param_value_internal, distribution, known)
            self._dists[study_id][param_name] = distribution
            trial = copy.copy(trial)
            trial.params = {**trial.params, param_name: distribution.to_external_repr(param_value_internal)}
            trial.distributions = {**trial.distributions, param_name: distribution}
            self._put(trial)

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        with self._lock:
            trial = self._mine(trial_id)
            now = datetime.now()
            # A held trial ending: its row and values written here. Anything else through Optuna
            # (WAITING -> RUNNING must be atomic against other processes popping the same trial).
            if trial is not None and self.plain and state.is_finished() and trial.values is None:
                self.check_trial_is_updatable(trial_id, trial.state)
                trials = models.TrialModel.__table__
                rows = []
                for objective, value in enumerate(values or ()):
                    stored, kind = models.TrialValueModel.value_to_stored_repr(value)
                    rows.append(
                        {"trial_id": trial_id, "objective": objective, "value": stored, "value_type": kind}
                    )
                self._execute(
                    (
                        trials.update().where(trials.c.trial_id == trial_id),
                        [{"state": state, "datetime_complete": _utc(now)}],
                    ),
                    (models.TrialValueModel.__table__.insert(), rows),
                )
            elif not self.backend.set_trial_state_values(trial_id, state=state, values=values):
                return False
            if trial is not None:
                trial = copy.copy(trial)
                trial.state = state
                if values is not None:
                    trial.values = values
                if state == TrialState.RUNNING:
                    trial.datetime_start = now
                if state.is_finished():
                    trial.datetime_complete = now
                self._put(trial)
            return True

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        with self._lock:
            self.backend.set_trial_intermediate_value(trial_id, step, intermediate_value)
            self._set_entry(trial_id, "intermediate_values", step, intermediate_value)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self.set_trial_user_attrs(trial_id, {key: value})

    def set_trial_user_attrs(self, trial_id: int, attrs: dict[str, Any]) -> None:
        """Several user attributes of a trial. A held trial's: one upsert statement, no ORM
        session (Optuna's own writes one at a time, each reading its trial back first to see it
        is not finished, which the copy in memory knows: ~2 ms of CPU each on PostgreSQL, 16% of
        the driver's time at 1,000 runs in flight)."""
        with self._lock:
            trial = self._mine(trial_id)
            upsert = (
                None if trial is None else _upsert(self.backend.engine.name, models.TrialUserAttributeModel)
            )
            if upsert is None:
                for key, value in attrs.items():
                    self.backend.set_trial_user_attr(trial_id, key, value)
            elif attrs:
                self.check_trial_is_updatable(trial_id, trial.state)
                self._execute(
                    (
                        upsert,
                        [
                            {"trial_id": trial_id, "key": k, "value_json": json.dumps(v)}
                            for k, v in attrs.items()
                        ],
                    )
                )
            if trial is not None:
                trial = copy.copy(trial)
                trial.user_attrs = {**trial.user_attrs, **attrs}
                self._put(trial)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        with self._lock:
            self.backend.set_trial_system_attr(trial_id, key, value)
            self._set_entry(trial_id, "system_attrs", key, value)

    def _set_entry(self, trial_id: int, field: str, key: Any, value: Any) -> None:
        """One entry of a held trial's dict `field`, on a copy (trials handed out stay as they were)."""
        trial = self._mine(trial_id)
        if trial is not None:
            trial = copy.copy(trial)
            setattr(trial, field, {**getattr(trial, field), key: value})
            self._put(trial)

    def _insert_trial(self, study_id: int, number: int) -> FrozenTrial:
        """A new RUNNING trial, numbered as Optuna numbers it (the study's trials before it: all
        in memory, the study being held)."""
        start = datetime.now()
        trials = models.TrialModel.__table__
        with self.backend.engine.begin() as conn:
            trial_id = conn.execute(
                trials.insert()
                .values(
                    number=number,
                    study_id=study_id,
                    state=TrialState.RUNNING,
                    datetime_start=_utc(start),
                )
                .returning(trials.c.trial_id)
            ).scalar_one()
        return FrozenTrial(
            number=number,
            state=TrialState.RUNNING,
            value=None,
            values=None,
            datetime_start=start,
            datetime_complete=None,
            params={},
            distributions={},
            user_attrs={},
            system_attrs={},
            intermediate_values={},
            trial_id=trial_id,
        )

    def _execute(self, *steps: tuple[Any, list[dict[str, Any]]]) -> None:
        """(statement, rows) steps in one transaction; a statement without rows is skipped."""
        with self.backend.engine.begin() as conn:
            for statement, rows in steps:
                if rows:  # one row as such: a list is executemany, a slower path for one
                    conn.execute(statement, rows if len(rows) > 1 else rows[0])

    def get_trial(self, trial_id: int) -> FrozenTrial:
        with self._lock:
            trial = self._mine(trial_id)
        # Shared, as Optuna's in-memory storage shares them: every write above copies first.
        return trial if trial is not None else self.backend.get_trial(trial_id)

    def get_all_trials(
        self, study_id: int, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        with self._lock:
            trials = self._held(study_id)
            if trials is None:
                return self.backend.get_all_trials(study_id, deepcopy=deepcopy, states=states)
            out = [trials[n] for n in sorted(trials) if states is None or trials[n].state in states]
        return copy.deepcopy(out) if deepcopy else out

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        with self._lock:
            trials = self._held(study_id)
            if trials is None or trial_number not in trials:
                return self.backend.get_trial_id_from_study_id_trial_number(study_id, trial_number)
            return trials[trial_number]._trial_id

    # -- studies: the database's, directions remembered (they never change) -------------------
    def create_new_study(self, directions: Sequence[StudyDirection], study_name: str | None = None) -> int:
        return self.backend.create_new_study(directions, study_name)

    def delete_study(self, study_id: int) -> None:
        with self._lock:
            self.backend.delete_study(study_id)
            for trial in self._trials.pop(study_id, {}).values():
                self._where.pop(trial._trial_id, None)
            self._names.pop(study_id, None)
            self._directions.pop(study_id, None)
            self._dists.pop(study_id, None)

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        self.backend.set_study_user_attr(study_id, key, value)

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        self.backend.set_study_system_attr(study_id, key, value)

    def get_study_id_from_name(self, study_name: str) -> int:
        return self.backend.get_study_id_from_name(study_name)

    def get_study_name_from_id(self, study_id: int) -> str:
        return self.backend.get_study_name_from_id(study_id)

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        if study_id not in self._directions:
            self._directions[study_id] = self.backend.get_study_directions(study_id)
        return self._directions[study_id]

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self.backend.get_study_user_attrs(study_id)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self.backend.get_study_system_attrs(study_id)

    def get_all_studies(self) -> list[FrozenStudy]:
        return self.backend.get_all_studies()

    def remove_session(self) -> None:
        self.backend.remove_session()


def _utc(local: datetime) -> datetime:
    """A naive local time as Optuna's RDB models store it: naive UTC."""
    return local.astimezone(UTC).replace(tzinfo=None)


@functools.cache
def _upsert(engine: str, model: type) -> Any:
    """INSERT into an attribute table, a key there already updated (the statement Optuna's
    RDBStorage makes for one attribute, for any number of rows); None for another database."""
    if engine in ("sqlite", "postgresql"):
        from sqlalchemy.dialects import postgresql, sqlite

        stmt = (sqlite if engine == "sqlite" else postgresql).insert(model)
        return stmt.on_conflict_do_update(
            index_elements=[model.trial_id, model.key], set_={"value_json": stmt.excluded.value_json}
        )
    if engine == "mysql":
        from sqlalchemy.dialects import mysql

        stmt = mysql.insert(model)
        return stmt.on_duplicate_key_update(value_json=stmt.inserted.value_json)
    return None
