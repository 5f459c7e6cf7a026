"""One cell's Optuna study under ask/tell: the trials to ask (those a dead driver left in flight
first, then new ones), and telling Optuna how each trial went."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import TrialState

from orchestrator.store import names
from orchestrator.store.held_storage import HeldStorage
from orchestrator.store.names import RunStatus
from orchestrator.store.redact import scrub, secrets_in
from orchestrator.study import Study
from orchestrator.study.grid import Cell
from orchestrator.sweep.outcome import STOP_KIND, trial_values
from orchestrator.sweep.search import cell_study, suggest
from orchestrator.sweep.stopping import StoppingRule
from orchestrator.sweep.unit import Unit, run_info

REASON_CHARS = 2000  # Optuna attributes are stored whole: keep a traceback's tail



class CellSearch:
    """A cell's Optuna study, and its trials in flight."""

    def __init__(self, study: Study, cell: Cell, index: int, storage: optuna.storages.BaseStorage,
                 rank: Callable[[Cell, dict[str, Any] | None], float] | None = None) -> None:
        """`rank`: given, the cell's new trials are all asked at once and run in its order,
        lowest first (only for samplers whose draws ignore results)."""
        self.study, self.cell, self.index, self.storage, self.rank = study, cell, index, storage, rank
        self.optuna = cell_study(study, cell, index, storage)
        self.optuna.set_user_attr(names.STUDY_N_PARAMS, cell.n_params.as_dict())
        self.optuna.set_user_attr(names.STUDY_N_TRAIN, cell.n_train)
        self.optuna.set_user_attr(names.STUDY_SHAPE, cell.shape)
        trials = self.optuna.get_trials(deepcopy=False)
        self.to_resume = [t for t in trials if t.state == TrialState.RUNNING]  # left by a dead driver
        self.enqueued = any(t.state == TrialState.WAITING for t in trials)  # by hand: enqueue_trial
        self.study_id = self.storage.get_study_id_from_name(self.optuna.study_name)
        started = len([t for t in trials if t.state != TrialState.WAITING])
        self.new_left = max(0, study.search.trials_per_cell - started)
        self.trials: dict[int, list[Unit]] = {}  # in flight, by trial number
        self.handles: dict[int, optuna.Trial] = {}  # to set attributes by number
        self.kept: dict[int, dict[str, Any]] = {}  # attributes to write with a trial's end (keep)
        self.ahead: list[tuple[optuna.Trial, dict | None]] = []  # asked ahead, run in order
        self.drawing: list[tuple[optuna.Trial, dict | None]] = []  # being asked ahead (prepare)
        self.secrets = secrets_in(study.model_dump(mode="json"))  # a failed run's reason may quote one

    @property
    def has_work(self) -> bool:
        return bool(self.to_resume) or self.new_left > 0 or bool(self.ahead) or bool(self.drawing)

    @property
    def prepared(self) -> bool:
        """Nothing left to ask ahead: its trials are ranked, or it asks one at a time."""
        return self.rank is None or self.new_left == 0

    def ask(self) -> tuple[optuna.Trial, dict[str, Any] | None]:
        """The cell's next trial: one a dead driver left in flight, else a new one; with its
        values when they are known already (else None: `suggest` draws them)."""
        if self.to_resume:
            frozen = self.to_resume.pop(0)
            trial, params = self._reopen(frozen), dict(frozen.params)
        else:
            if not self.ahead and self.rank is not None and (self.new_left > 0 or self.drawing):
                self.prepare(self.new_left)
            if self.ahead:
                trial, params = self.ahead.pop(0)
            else:
                trial, params = self._new_trial(), None
                self.new_left -= 1
        self.handles[trial.number] = trial
        return trial, params

    def teach(self, rule: StoppingRule) -> None:
        """What the cell's finished trials taught, back into `rule` (when a study resumes)."""
        for t in self.optuna.get_trials(deepcopy=False, states=[TrialState.COMPLETE, TrialState.PRUNED]):
            value = t.values[0] if t.state == TrialState.COMPLETE and len(t.values) == 1 else None
            for seed in self.study.grid.seeds:
                rule.restore(run_info(self.study, self.cell, t.number, dict(t.params), seed), value, t.user_attrs)

    def _reopen(self, frozen: optuna.trial.FrozenTrial) -> optuna.Trial:
        """A trial left RUNNING by a dead driver, under its own number and values, found through
        the storage's public API."""
        return optuna.Trial(self.optuna, self.storage.get_trial_id_from_study_id_trial_number(self.study_id,
                                                                                               frozen.number))

    def _new_trial(self) -> optuna.Trial:
        """`Study.ask`, less its look for enqueued trials when the cell has none: that look reads
        every trial in flight back from the storage, so a cell asking k trials read k^2/2 of them
        (a 1,000-trial cell on PostgreSQL: minutes; bench_driver_scale.py). Nothing else differs."""
        if self.enqueued:
            return self.optuna.ask()
        # As Study.ask does (Optuna's own storage wrapper, its per-thread trial cache reset), and
        # `Study.ask`'s test in tests/unit/test_cell_ask.py holds us to it.
        self.optuna._thread_local.cached_all_trials = None
        return optuna.Trial(self.optuna, self.optuna._storage.create_new_trial(self.study_id))

    def prepare(self, n: int) -> None:
        """A sampler that ignores results draws the same values asked now or later: the cell's
        trials are all asked before its first runs, then run in `rank` order (stopping/phase.py:
        the fastest decay first is the first to generalize or settle, and what it teaches prunes
        the slower ones). `n` more asks now: the driver asks a coming cell's trials a few a turn
        (1,000 asks on PostgreSQL take ~15 s, which would leave every slot idle), and `ask`
        finishes what is left. The draws and their order do not depend on how they were split."""
        if self.rank is None:
            return
        for _ in range(min(n, self.new_left)):
            self.new_left -= 1
            trial = self._new_trial()
            try:
                self.drawing.append((trial, suggest(trial, self.study)))
            except ValueError:  # drawn again by the driver, where it fails like any refused value
                self.drawing.append((trial, None))
        if self.new_left == 0 and self.drawing:
            self.ahead += sorted(self.drawing, key=lambda tp: self.rank(self.cell, tp[1]))
            self.drawing = []

    def refuse(self, trial: optuna.Trial, err: ValueError) -> None:
        """A value the trainer refuses (pydantic, --set paths): the trial fails before any run."""
        self.handles.pop(trial.number, None)
        self.trials.pop(trial.number, None)
        self._end(trial, {names.TRIAL_REASON: str(err)[:REASON_CHARS]})
        self.optuna.tell(trial, state=TrialState.FAIL)

    def start(self, number: int, units: list[Unit]) -> None:
        self.trials[number] = units
        self._set_attrs(self.handles[number], {names.trial_run_id(u.seed): u.run_id for u in units})

    def keep(self, number: int, attrs: dict[str, Any]) -> None:
        """Attributes of a trial in flight (what its finished runs taught, for a resumed driver),
        written with the trial's end in one write (`_end`): `teach` reads finished trials only,
        and a trial a dead driver left in flight runs again and teaches again."""
        self.kept.setdefault(number, {}).update(attrs)

    def _end(self, trial: optuna.Trial, attrs: dict[str, Any]) -> None:
        """The attributes of a trial that ends, with what its runs taught (`keep`)."""
        self._set_attrs(trial, {**self.kept.pop(trial.number, {}), **attrs})

    def _set_attrs(self, trial: optuna.Trial, attrs: dict[str, Any]) -> None:
        """User attributes of a trial, in one write where the storage can (HeldStorage)."""
        if not attrs:
            return
        attrs = scrub(attrs, self.secrets)  # a reason is a traceback, which may quote a credential
        if isinstance(self.storage, HeldStorage):
            self.storage.set_trial_user_attrs(trial._trial_id, attrs)
        else:
            for key, value in attrs.items():
                trial.set_user_attr(key, value)

    def finished(self, number: int) -> list[Unit] | None:
        """The trial's runs once every one of them has its result, else None."""
        units = self.trials[number]
        return units if all(u.result is not None for u in units) else None

    def tell(self, number: int) -> float | None:
        """Tell Optuna how the trial (all of its runs finished) went; returns its first
        objective's value when it completed, for the stopping rule."""
        units = self.trials.pop(number)
        trial = self.handles.pop(number)
        bad = next((u for u in units if u.result["status"] not in (RunStatus.COMPLETED, RunStatus.STOPPED)), None)
        if bad is not None:
            self._fail(trial, bad.result["status"], bad.result.get("reason", ""))
            return None
        stopped = next((u for u in units if u.result["status"] == RunStatus.STOPPED), None)
        values = trial_values([o.metric for o in self.study.objectives],
                              [(u.result, u.summary, u.budget) for u in units], stopped is not None)
        if stopped is not None:
            attrs = {names.TRIAL_STATUS: names.TRIAL_PRUNED,
                     names.TRIAL_REASON: stopped.result.get("reason", "")[:REASON_CHARS]}
            if stopped.result.get(STOP_KIND):
                attrs[names.TRIAL_STOP_KIND] = stopped.result[STOP_KIND]
            self._end(trial, attrs)
            if len(values) == 1 and not math.isnan(values[0]):
                trial.report(values[0], max(u.result.get("steps") or 0 for u in units))
            self.optuna.tell(trial, state=TrialState.PRUNED)
            return None
        if any(math.isnan(v) for v in values):
            self._end(trial, {names.TRIAL_STATUS: RunStatus.COMPLETED.value,
                              names.TRIAL_REASON: "an objective metric was not recorded"})
            self.optuna.tell(trial, state=TrialState.FAIL)
            return None
        self._end(trial, {names.TRIAL_STATUS: RunStatus.COMPLETED.value})
        self.optuna.tell(trial, values if len(values) > 1 else values[0])
        return values[0]

    def _fail(self, trial: optuna.Trial, status: str, reason: str) -> None:
        self._end(trial, {names.TRIAL_STATUS: str(status), names.TRIAL_REASON: reason[:REASON_CHARS]})
        self.optuna.tell(trial, state=TrialState.FAIL)
