"""One cell's Optuna study under ask/tell: the trials to ask (those a dead driver left in flight
first, then new ones), and telling Optuna how each trial went. With search.scope: study, one
Optuna study serves every cell (`SharedSearch`), and the driver sees each cell through a view
with the same methods (`cell_searches` picks)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import TrialState

from orchestrator.store import names
from orchestrator.store.names import RunStatus
from orchestrator.store.redact import scrub, secrets_in
from orchestrator.study import Study
from orchestrator.study.grid import Cell
from orchestrator.sweep.outcome import STOP_KIND, trial_values
from orchestrator.sweep.search import cell_study, shared_study, suggest
from orchestrator.sweep.stopping import StoppingRule
from orchestrator.sweep.unit import Unit, run_info

REASON_CHARS = 2000  # Optuna attributes are stored whole: keep a traceback's tail
# search.scope study: a trial attribute, each cell's objective values (mean over its seeds), by cell key.
TRIAL_CELL_VALUES = "cell_values"


def cell_searches(
    study: Study,
    cells: list[Cell],
    storage: optuna.storages.BaseStorage,
    rank: Callable[[Cell, dict[str, Any] | None], float] | None = None,
) -> list:
    """What the driver asks and tells, one per cell: a cell's own Optuna study (search.scope: cell),
    or its view of the one study every cell shares (search.scope: study)."""
    if study.search.scope == "study":
        return SharedSearch(study, cells, storage).views
    return [CellSearch(study, cell, i, storage, rank) for i, cell in enumerate(cells)]


def new_trial(ostudy: optuna.Study, study_id: int, enqueued: bool) -> optuna.Trial:
    """`Study.ask`, less its look for enqueued trials when the study has none: that look reads
    every trial in flight back from the storage, so a cell asking k trials read k^2/2 of them
    (a 1,000-trial cell on PostgreSQL: minutes; bench_driver_scale.py). Nothing else differs."""
    if enqueued:
        return ostudy.ask()
    # As Study.ask does (Optuna's own storage wrapper, its per-thread trial cache reset), and
    # `Study.ask`'s test in tests/unit/test_cell_ask.py holds us to it.
    ostudy._thread_local.cached_all_trials = None
    return optuna.Trial(ostudy, ostudy._storage.create_new_trial(study_id))


def set_attrs(
    storage: optuna.storages.BaseStorage, trial: optuna.Trial, attrs: dict[str, Any], secrets: list
) -> None:
    """User attributes of a trial, in one write where the storage can (HeldStorage)."""
    if not attrs:
        return
    attrs = scrub(attrs, secrets)  # a reason is a traceback, which may quote a credential
    set_many = getattr(storage, "set_trial_user_attrs", None)  # HeldStorage's, imported only where used
    if set_many is not None:
        set_many(trial._trial_id, attrs)
    else:
        for key, value in attrs.items():
            trial.set_user_attr(key, value)


class CellSearch:
    """A cell's Optuna study, and its trials in flight."""

    def __init__(
        self,
        study: Study,
        cell: Cell,
        index: int,
        storage: optuna.storages.BaseStorage,
        rank: Callable[[Cell, dict[str, Any] | None], float] | None = None,
    ) -> None:
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
                rule.restore(
                    run_info(self.study, self.cell, t.number, dict(t.params), seed), value, t.user_attrs
                )

    def _reopen(self, frozen: optuna.trial.FrozenTrial) -> optuna.Trial:
        """A trial left RUNNING by a dead driver, under its own number and values, found through
        the storage's public API."""
        return optuna.Trial(
            self.optuna, self.storage.get_trial_id_from_study_id_trial_number(self.study_id, frozen.number)
        )

    def _new_trial(self) -> optuna.Trial:
        return new_trial(self.optuna, self.study_id, self.enqueued)

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
        set_attrs(self.storage, trial, attrs, self.secrets)

    def finished(self, number: int) -> list[Unit] | None:
        """The trial's runs once every one of them has its result, else None."""
        units = self.trials[number]
        return units if all(u.result is not None for u in units) else None

    def tell(self, number: int) -> float | None:
        """Tell Optuna how the trial (all of its runs finished) went; returns its first
        objective's value when it completed, for the stopping rule."""
        units = self.trials.pop(number)
        trial = self.handles.pop(number)
        bad = next(
            (u for u in units if u.result["status"] not in (RunStatus.COMPLETED, RunStatus.STOPPED)), None
        )
        if bad is not None:
            self._fail(trial, bad.result["status"], bad.result.get("reason", ""))
            return None
        stopped = next((u for u in units if u.result["status"] == RunStatus.STOPPED), None)
        values = trial_values(
            [o.metric for o in self.study.objectives],
            [(u.result, u.summary, u.budget) for u in units],
            stopped is not None,
        )
        if stopped is not None:
            attrs = {
                names.TRIAL_STATUS: names.TRIAL_PRUNED,
                names.TRIAL_REASON: stopped.result.get("reason", "")[:REASON_CHARS],
            }
            if stopped.result.get(STOP_KIND):
                attrs[names.TRIAL_STOP_KIND] = stopped.result[STOP_KIND]
            self._end(trial, attrs)
            if len(values) == 1 and not math.isnan(values[0]):
                trial.report(values[0], max(u.result.get("steps") or 0 for u in units))
            self.optuna.tell(trial, state=TrialState.PRUNED)
            return None
        if any(math.isnan(v) for v in values):
            self._end(
                trial,
                {
                    names.TRIAL_STATUS: RunStatus.COMPLETED.value,
                    names.TRIAL_REASON: "an objective metric was not recorded",
                },
            )
            self.optuna.tell(trial, state=TrialState.FAIL)
            return None
        self._end(trial, {names.TRIAL_STATUS: RunStatus.COMPLETED.value})
        self.optuna.tell(trial, values if len(values) > 1 else values[0])
        return values[0]

    def _fail(self, trial: optuna.Trial, status: str, reason: str) -> None:
        self._end(trial, {names.TRIAL_STATUS: str(status), names.TRIAL_REASON: reason[:REASON_CHARS]})
        self.optuna.tell(trial, state=TrialState.FAIL)


class SharedSearch:
    """search.scope study: one Optuna study for every cell. A trial is one set of values (a rule's
    constant, train.lr.value) run in every cell under every seed; it is told once every one of
    those runs has finished, and its value is, per objective, the mean over the cells of each
    cell's value (itself the mean over seeds, as in a cell's own study). A loss in nats or an
    accuracy is on one scale in every cell, so the mean weighs a gain of 0.01 alike wherever it
    is made; the per-cell values are kept on the trial (TRIAL_CELL_VALUES).

    The driver sees one `CellView` per cell, with CellSearch's methods. A cell asks the oldest
    open trial it has not run yet; a new trial is asked only once every cell has started every
    open one, so the cells run the same trials side by side. A trial one cell refuses (a value
    the trainer rejects there) fails once for all; its runs started elsewhere finish untold.
    Resume is as for a cell: a trial left in flight by a dead driver runs again in every cell,
    from its runs' checkpoints; a told trial never runs again."""

    def __init__(self, study: Study, cells: list[Cell], storage: optuna.storages.BaseStorage) -> None:
        self.study, self.cells, self.storage = study, cells, storage
        self.optuna = shared_study(study, storage)
        trials = self.optuna.get_trials(deepcopy=False)
        self.study_id = storage.get_study_id_from_name(self.optuna.study_name)
        self.enqueued = any(t.state == TrialState.WAITING for t in trials)
        started = len([t for t in trials if t.state != TrialState.WAITING])
        self.new_left = max(0, study.search.trials_per_cell - started)
        self.open: dict[int, tuple[optuna.Trial, dict[str, Any] | None]] = {}  # asked, not told
        self.runs: dict[int, dict[str, list[Unit]]] = {}  # an open trial's runs, by cell key
        self.kept: dict[int, dict[str, Any]] = {}
        self.failed: set[int] = set()  # refused in a cell, told FAIL; its runs elsewhere finish untold
        self.secrets = secrets_in(study.model_dump(mode="json"))
        resumed = [t for t in trials if t.state == TrialState.RUNNING]  # left by a dead driver
        self.views = [CellView(self, cell, list(resumed)) for cell in cells]

    def next_for(self, cell_key: str) -> int | None:
        """The oldest open trial the cell has not started (None: none)."""
        return min(
            (n for n in self.open if n not in self.failed and cell_key not in self.runs.get(n, {})),
            default=None,
        )

    @property
    def may_ask(self) -> bool:
        """A new trial once every cell has started every open one."""
        return self.new_left > 0 and all(
            len(self.runs.get(n, {})) == len(self.cells) for n in self.open if n not in self.failed
        )

    def new(self) -> tuple[optuna.Trial, dict[str, Any] | None]:
        """A new trial and its values, drawn once for every cell (None: drawn again by the driver,
        where it fails like any refused value)."""
        self.new_left -= 1
        trial = new_trial(self.optuna, self.study_id, self.enqueued)
        try:
            params = suggest(trial, self.study)
        except ValueError:
            params = None
        self.open[trial.number] = (trial, params)
        return trial, params

    def reopen(self, frozen: optuna.trial.FrozenTrial) -> tuple[optuna.Trial, dict[str, Any] | None]:
        """A trial a dead driver left in flight, under its own number and values (once for all cells)."""
        if frozen.number not in self.open:
            trial = optuna.Trial(
                self.optuna,
                self.storage.get_trial_id_from_study_id_trial_number(self.study_id, frozen.number),
            )
            drawn = bool(frozen.params) or not self.study.search.space  # else asked, never drawn
            self.open[frozen.number] = (trial, dict(frozen.params) if drawn else None)
        return self.open[frozen.number]

    def finished(self, number: int) -> list[Unit] | None:
        """Every run of the trial, once each cell has run it and every run has its result."""
        runs = self.runs.get(number)
        if runs is None:
            return None
        done = all(u.result is not None for units in runs.values() for u in units)
        if number in self.failed:
            if done:  # its last run elsewhere is in: nothing more to wait for
                self._close(number)
            return None
        if len(runs) < len(self.cells) or not all(runs.values()) or not done:
            return None
        return [u for units in runs.values() for u in units]

    def refuse(self, trial: optuna.Trial, err: ValueError) -> None:
        if trial.number in self.failed:
            return
        self.failed.add(trial.number)
        self.open.pop(trial.number, None)
        self.kept.pop(trial.number, None)
        set_attrs(self.storage, trial, {names.TRIAL_REASON: str(err)[:REASON_CHARS]}, self.secrets)
        self.optuna.tell(trial, state=TrialState.FAIL)
        self.finished(trial.number)  # closed at once when none of its runs started

    def tell(self, number: int) -> float | None:
        """Tell Optuna the trial's value over every cell; its first objective's value when it
        completed."""
        trial, _ = self.open.pop(number)
        runs = self._close(number)
        attrs = self.kept.pop(number, {})
        units = [u for cell_units in runs.values() for u in cell_units]
        ended = (RunStatus.COMPLETED, RunStatus.STOPPED)
        bad = next((u for u in units if u.result["status"] not in ended), None)
        if bad is not None:
            reason = f"{bad.cell.key}: {bad.result.get('reason', '')}"
            self._end(
                trial,
                {
                    **attrs,
                    names.TRIAL_STATUS: str(bad.result["status"]),
                    names.TRIAL_REASON: reason[:REASON_CHARS],
                },
                TrialState.FAIL,
            )
            return None
        metrics = [o.metric for o in self.study.objectives]
        stopped = {key: any(u.result["status"] == RunStatus.STOPPED for u in us) for key, us in runs.items()}
        per_cell = {
            key: trial_values(metrics, [(u.result, u.summary, u.budget) for u in us], stopped[key])
            for key, us in runs.items()
        }
        values = [sum(v[i] for v in per_cell.values()) / len(per_cell) for i in range(len(metrics))]
        attrs[TRIAL_CELL_VALUES] = per_cell
        if any(stopped.values()):
            self._end(trial, {**attrs, names.TRIAL_STATUS: names.TRIAL_PRUNED}, TrialState.PRUNED)
            return None
        if any(math.isnan(v) for v in values):
            self._end(
                trial,
                {
                    **attrs,
                    names.TRIAL_STATUS: RunStatus.COMPLETED.value,
                    names.TRIAL_REASON: "an objective metric was not recorded",
                },
                TrialState.FAIL,
            )
            return None
        set_attrs(self.storage, trial, {**attrs, names.TRIAL_STATUS: RunStatus.COMPLETED.value}, self.secrets)
        self.optuna.tell(trial, values if len(values) > 1 else values[0])
        return values[0]

    def _end(self, trial: optuna.Trial, attrs: dict[str, Any], state: TrialState) -> None:
        set_attrs(self.storage, trial, attrs, self.secrets)
        self.optuna.tell(trial, state=state)

    def _close(self, number: int) -> dict[str, list[Unit]]:
        for view in self.views:
            view.trials.pop(number, None)
        return self.runs.pop(number, {})


class CellView:
    """One cell's view of a SharedSearch: the methods the driver calls on a CellSearch."""

    rank = None
    prepared = True  # nothing is asked ahead

    def __init__(self, shared: SharedSearch, cell: Cell, to_resume: list[optuna.trial.FrozenTrial]) -> None:
        self.shared, self.cell, self.study = shared, cell, shared.study
        self.optuna = shared.optuna
        self.to_resume = to_resume  # trials a dead driver left in flight: this cell runs each again
        self.trials: dict[int, list[Unit]] = {}  # this cell's runs of each open trial

    @property
    def has_work(self) -> bool:
        return bool(self.to_resume) or self.shared.next_for(self.cell.key) is not None or self.shared.may_ask

    def prepare(self, n: int) -> None:
        pass

    def ask(self) -> tuple[optuna.Trial, dict[str, Any] | None]:
        if self.to_resume:
            trial, params = self.shared.reopen(self.to_resume.pop(0))
        else:
            number = self.shared.next_for(self.cell.key)
            trial, params = self.shared.open[number] if number is not None else self.shared.new()
        self.shared.runs.setdefault(trial.number, {})[self.cell.key] = []
        return trial, None if params is None else dict(params)

    def refuse(self, trial: optuna.Trial, err: ValueError) -> None:
        self.shared.refuse(trial, ValueError(f"{self.cell.key}: {err}"))

    def start(self, number: int, units: list[Unit]) -> None:
        self.shared.runs[number][self.cell.key] = units
        self.trials[number] = units
        trial = self.shared.open[number][0]
        set_attrs(
            self.shared.storage,
            trial,
            {f"{self.cell.key}/{names.trial_run_id(u.seed)}": u.run_id for u in units},
            self.shared.secrets,
        )

    def keep(self, number: int, attrs: dict[str, Any]) -> None:
        if number not in self.shared.failed:
            kept = self.shared.kept.setdefault(number, {})
            kept.update({f"{self.cell.key}/{k}": v for k, v in attrs.items()})

    def finished(self, number: int) -> list[Unit] | None:
        return self.shared.finished(number)

    def tell(self, number: int) -> float | None:
        return self.shared.tell(number)
