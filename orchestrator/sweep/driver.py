"""The driver: one process runs the study. It asks Optuna for trials in every (N, D) cell,
runs them through a launcher (Ray tasks), streams their metrics into MLflow, and is the only
writer of both.

Resume is running the same command again: finished trials are skipped, trials that were in
flight (RUNNING in Optuna) are run again under their own number and resume from their
checkpoints into their own MLflow runs, and new cells simply start.

The loop is `Driver.step`: fill the free slots (`fill_slots`), wait for finished runs (the
launcher's `poll`), take the records runs streamed meanwhile (`take_records`), record each
finished run (`finish_run`) and, once all of a trial's runs are in and MLflow has them, tell Optuna
(`tell_ready`); whatever taught the stopping rule something new reaches the runs in flight it
concerns, once a turn (`post_rules`). MLflow writes go out on the tracker's writer thread.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import optuna

from orchestrator.store import names
from orchestrator.store.hold import HoldLost, StudyHold
from orchestrator.store.names import RunStatus, StopKind
from orchestrator.store.tracker import Tracker, config_yaml
from orchestrator.store.versions import fast_path
from orchestrator.study import Study, redact_url
from orchestrator.study.grid import Cell, spec_for
from orchestrator.sweep.cell import CellSearch, cell_searches
from orchestrator.sweep.launcher import ClusterLost, RayLauncher
from orchestrator.sweep.outcome import (  # summarize: also read by report/reproduce.py
    STOP_KIND,
    summarize,
)
from orchestrator.sweep.packing import pack_size, run_cost
from orchestrator.sweep.progress import Progress
from orchestrator.sweep.search import open_storage, optuna_names, suggest
from orchestrator.sweep.stats import SweepStats
from orchestrator.sweep.stopping import StoppingRule, StopRules, decay_rate, make_stopping
from orchestrator.sweep.unit import Unit, checkpoint_dir, run_info
from orchestrator.sweep.user_trainer import N_PARAMS, reported_n_params
from trainers.packed import can_pack

# Runs queued on Ray beyond the free slots, per slot: a slot that frees up starts its next run
# at once instead of waiting for the driver to record the last one and ask Optuna for the next.
PREFETCH_PER_SLOT = 1
TICK_S = 0.5  # how often the driver wakes to stream metrics when no run has finished
# MLflow writes waiting for the server, per slot, beyond which no new run starts (each run makes
# about five): the driver's memory stays O(runs in flight) when the store is slower than the cluster.
BACKLOG_PER_SLOT = 8
# Asking a coming cell's trials ahead (prepare_cells): at most this long a turn, a few asks at a
# time, and turns this often while any is left; a finished run's slot waits at most about as long.
PREPARE_S = 0.03
PREPARE_ASKS = 4
NON_ADAPTIVE_SAMPLERS = ("qmc", "grid", "random")  # their draws do not depend on results


def run_study(study: Study, cells: list[Cell], show: bool = True) -> SweepStats:
    """Run (or resume) the study to completion."""
    return Driver(study, cells, show=show).run()


class Driver:
    """One study's sweep; each event of the loop is one method (see the module's docstring)."""

    def __init__(
        self,
        study: Study,
        cells: list[Cell],
        show: bool = True,
        launcher: Callable[[Study, list[Cell]], Any] = RayLauncher,
    ) -> None:
        self.study, self.cells, self.show, self.make_launcher = study, cells, show, launcher
        self.n_seeds = len(study.grid.seeds)
        self.stopping: StoppingRule | None = make_stopping(study)
        self.stats = SweepStats()
        self.hold: StudyHold | None = None
        self.live: dict[str, Unit] = {}  # run id -> its unit, while it trains
        self.live_keys: set[str] = set()  # every run started: the others left RUNNING are orphans
        self.searches: list[CellSearch] = []
        self.dirty: set = set()  # scopes (StoppingRule.scope) whose runs' rules may have changed
        # Trials whose runs all ended, to tell Optuna once their MLflow writes are out (tracker.mark):
        # Optuna never records a trial whose runs MLflow does not have (a resume skips told trials).
        self.to_tell: deque[tuple[CellSearch, int, int]] = deque()

    # -- set-up and the loop --------------------------------------------------------------------
    def set_up(self) -> None:
        """Ray (its workers warming up meanwhile), MLflow's parent run, one Optuna study per
        cell, and what the cells' finished trials taught the stopping rule."""
        storage = open_storage(self.study.storage_url)
        # One driver per study: a second one stops here (StudyHeld), before touching anything.
        self.hold = StudyHold(storage, self.study.name).acquire()
        # Held: its cells' trials read from memory, on the Optuna releases it was tested with (versions.py).
        if isinstance(storage, optuna.storages.RDBStorage) and fast_path("optuna"):
            from orchestrator.store.held_storage import HeldStorage  # Optuna's private models: here only

            storage = HeldStorage(storage, optuna_names(self.study, self.cells))
        self.tracker = Tracker(self.study)
        self.launcher = self.make_launcher(self.study, self.cells)
        self.stats.capacity = self.launcher.capacity
        self.tracker.open(config_yaml(self.study))
        self.tracker.start_writer()  # from here MLflow writes never hold up the loop
        # A sampler that ignores results: a cell's trials are asked at once, fastest decay first.
        fastest_first = (
            self.study.prune.mode == "phase" and self.study.search.sampler in NON_ADAPTIVE_SAMPLERS
        )
        rank = self._slowest_decay_last if fastest_first else None
        self.searches = cell_searches(self.study, self.cells, storage, rank)  # one per cell (cell.py)
        self.by_cell = {s.cell.key: s for s in self.searches}
        # Longest runs first, so the study does not end with one long run holding the wall clock.
        self.by_cost = sorted(self.searches, key=lambda s: -run_cost(self.study, s.cell))
        if self.stopping is not None:
            for search in self.searches:
                search.teach(self.stopping)
        self.launcher.wait_warm()

    def run(self) -> SweepStats:
        t_start = time.monotonic()
        try:
            self.set_up()
            t0 = time.monotonic()
            self.stats.startup_s = t0 - t_start
            self.stats.first_submit_at = time.time()
            with Progress(self.study, self.searches, show=self.show, writes=self.tracker) as progress:
                try:
                    while self.step():
                        progress.update(list(self.launcher.running()), time.monotonic() - t0)
                except ClusterLost:  # what finished before is recorded; what ran is left to resume
                    self.tracker.drain()
                    self.tell_ready()
                    raise
                except HoldLost:  # the study is another driver's now: MLflow writes not yet sent are dropped
                    for lane in self.tracker.lanes:
                        lane.stopping = True
                    raise
            self.stats.scheduled_s = time.monotonic() - t0  # first submission to last result recorded
            self.stats.last_recorded_at = time.time()
            self.close()
        finally:
            if self.hold is not None:
                self.hold.release()
        self.stats.wall_time_s = time.monotonic() - t0
        self.stats.dropped_keys = sum(self.tracker.dropped_keys.values())
        self.stats.write_failures = len(self.tracker.failed_writes)
        self.stats.parent_run_id = self.tracker.parent_id
        return self.stats

    def step(self) -> bool:
        """One turn: fill the slots, wake on the first finished run or after TICK_S, stream,
        record what finished, post what the stopping rule learned (once a turn, to the runs it may
        concern). False once nothing is in flight and no cell has work left."""
        self.fill_slots()
        self.prepare_cells()
        if not len(self.launcher) and not any(s.has_work for s in self.searches):
            if not self.to_tell:
                return False
            time.sleep(0.02)  # the last trials wait for their MLflow writes
        finished = self.launcher.poll(TICK_S if all(s.prepared for s in self.searches) else PREPARE_S)
        self.hold.check()  # HoldLost (nothing more written) once another driver took the study over
        self.take_records()
        for unit, result in finished:
            self.finish_run(unit, result)
        self.tell_ready()
        if self.dirty:
            self.post_rules()
        self.tracker.flush()
        return True

    def close(self) -> None:
        """Runs a dead driver left RUNNING whose trials were recorded without them are closed,
        the parent run finished, and every MLflow write sent."""
        self.tracker.close_orphans(self.live_keys)
        self.tracker.finish_study()
        if not self.tracker.drain():
            uri = redact_url(self.study.tracking.uri)
            raise RuntimeError(
                f"the tracking server at {uri} did not come back; "
                f"{self.tracker.backlog} writes could not be sent"
            )
        self.launcher.close()

    # -- starting runs ----------------------------------------------------------------------------
    def fill_slots(self) -> None:
        """Keep every slot busy and one more run queued behind each, so a slot never waits on the
        driver: trials a dead driver left in flight first, then new trials from the costliest
        cell that has work left."""
        limit = max(self.launcher.capacity * (1 + PREFETCH_PER_SLOT), self.n_seeds)
        backlog = BACKLOG_PER_SLOT * self.launcher.capacity
        while len(self.launcher) + self.n_seeds <= limit and self.tracker.backlog <= backlog:
            search = next((s for s in self.searches if s.to_resume), None) or next(
                (s for s in self.by_cost if s.has_work), None
            )
            if search is None:
                return
            units = self.next_runs(search)
            k = pack_size(self.study, search.cell)
            if k > 1:  # a packed task takes the runs of several trials of the cell into one slot
                while search.has_work and len(units) + self.n_seeds <= k:
                    units += self.next_runs(search)
                self.launch(units)
            else:
                for unit in units:
                    self.launch([unit])

    def prepare_cells(self) -> None:
        """The next cells' trials asked ahead, PREPARE_S of asks a turn, in the order fill_slots
        takes the cells: no turn blocks on a whole cell's asks while slots wait (a cell's first
        ask still finishes what is left)."""
        deadline = time.monotonic() + PREPARE_S
        for search in self.by_cost:
            while not search.prepared:
                if time.monotonic() > deadline:
                    return
                search.prepare(PREPARE_ASKS)

    def next_runs(self, search: CellSearch) -> list[Unit]:
        """The runs of the cell's next trial, one per seed (none when its values are refused)."""
        trial, params = search.ask()
        try:
            params = suggest(trial, self.study) if params is None else params
            units = [
                self.start_run(search.cell, trial.number, params, seed) for seed in self.study.grid.seeds
            ]
        except ValueError as err:  # a value the trainer refuses (pydantic, --set paths)
            search.refuse(trial, err)
            self.stats.failed += 1
            return []
        search.start(trial.number, units)
        return list(units)  # a copy: the trial's own list must not grow with a pack

    def start_run(self, cell: Cell, number: int, params: dict[str, Any], seed: int) -> Unit:
        """One run: its spec, its MLflow run (reopened on resume), its stop rules."""
        spec = spec_for(self.study, cell, params, seed)
        ckpt = checkpoint_dir(self.study, cell, number, seed)
        info = run_info(self.study, cell, number, params, seed, spec)
        unit = Unit(cell, number, seed, params, spec, str(ckpt.resolve()), info)
        self.live_keys.add(unit.key)
        tags = {
            names.TAG_CELL: cell.key,
            names.TAG_TRIAL_NUMBER: str(number),
            names.TAG_SEED: str(seed),
            names.TAG_STATUS: RunStatus.RUNNING.value,
        }
        logged = {
            names.PARAM_CELL: cell.key,
            names.PARAM_N_PARAMS: cell.n_params.total,
            names.PARAM_N_PARAMS_NON_EMBEDDING: cell.n_params.non_embedding,
            names.PARAM_N_PARAMS_EMBEDDING: cell.n_params.embedding,
            names.PARAM_N_TRAIN: cell.n_train,
            names.PARAM_D_VALUE: cell.d_value,
            names.PARAM_SEED: seed,
            names.PARAM_TRIAL_NUMBER: number,
            **{f"{names.PARAM_SEARCHED_PREFIX}{k}": v for k, v in params.items()},
            names.PARAM_SPEC_JSON: spec.model_dump(mode="json"),
        }  # scrubbed, then JSON (tracker)
        if self.study.trainer is not None:  # the user's trainer reports its N: logged when it ends
            for key in N_PARAMS:
                logged.pop(key)
        unit.run_id = self.tracker.start_run(unit.key, f"{cell.key} t{number} s{seed}", logged, tags)
        if self.stopping is not None:
            unit.rules = self.stopping.rules(info)
        return unit

    def launch(self, units: list[Unit]) -> None:
        """One task per run, or one packed task for runs that can train as one batched model."""
        if not units:
            return
        self.live.update((u.run_id, u) for u in units)
        if len(units) > 1 and can_pack([u.spec for u in units]) is None:
            self.launcher.submit(units)
            self.stats.packed_tasks += 1
            return
        for u in units:
            self.launcher.submit([u])

    def _slowest_decay_last(self, cell: Cell, params: dict[str, Any] | None) -> float:
        """Sort key: the fastest decay first; values the trainer refuses first of all (they fail
        at once when prepared)."""
        if params is None:
            return -math.inf
        try:
            return -decay_rate(spec_for(self.study, cell, params, self.study.grid.seeds[0]).train)
        except ValueError:
            return -math.inf

    # -- hearing from runs ------------------------------------------------------------------------
    def take_records(self) -> None:
        """The evaluations runs posted since the last tick: into MLflow (buffered per run), and
        to the stopping rule as they come rather than when their run ends (a packed run ends
        with its whole pack). A record that comes after its run's result is in that result's
        history, logged already."""
        by_run: dict[str, list[dict]] = {}
        for run_id, record in self.launcher.records():
            if run_id in self.live:
                by_run.setdefault(run_id, []).append(record)
        for run_id, records in by_run.items():
            self.tracker.log_records(run_id, records)
            if self.stopping is not None:
                info = self.live[run_id].info
                if any([self.stopping.see(info, r) for r in records]):
                    self.dirty.add(self.stopping.scope(info))

    def finish_run(self, unit: Unit, result: dict) -> None:
        """A run's result: counted, logged to MLflow, taught to the stopping rule; once the
        trial's last run is in, the trial goes to Optuna."""
        unit.result = result
        self.live.pop(unit.run_id, None)
        unit.summary = summarize(result)
        status = RunStatus(result.get("status", RunStatus.FAILED.value))
        self.stats.count(status)
        self.stats.add_span(result)
        self.stats.resumed += bool(result.get("resumed_from_step"))
        self._log_run(unit, status)
        search = self.by_cell[unit.cell.key]
        kept = {names.trial_generalization_step(unit.seed): unit.summary.get("generalization_step")}
        learned = False
        if self.stopping is not None:
            kind = StopKind(result[STOP_KIND]) if result.get(STOP_KIND) else None
            learned = self.stopping.run_done(unit.info, result.get("history") or {}, kind)
            kept.update(self.stopping.lesson(unit.info))  # for a resumed driver (CellSearch.teach)
        # Only what is known: an attribute a resumed driver would read as None is not written
        # (one Optuna write each; CellSearch.teach reads a missing one as None).
        search.keep(unit.trial_number, {k: v for k, v in kept.items() if v is not None})
        if search.finished(unit.trial_number) is not None:
            self.to_tell.append((search, unit.trial_number, self.tracker.mark()))
        if learned:
            self.dirty.add(self.stopping.scope(unit.info))

    def tell_ready(self) -> None:
        """The finished trials whose runs MLflow has, to Optuna, in the order they finished."""
        while self.to_tell and self.tracker.sent_through(self.to_tell[0][2]):
            search, number, _ = self.to_tell.popleft()
            for unit in search.trials[number]:  # a run whose record MLflow lacks part of: failed, as data
                failure = self.tracker.write_failure(unit.run_id)
                if failure is not None and unit.result.get("status") != RunStatus.FAILED.value:
                    self.stats.recount(RunStatus(unit.result.get("status")), RunStatus.FAILED)
                    unit.result = {**unit.result, "status": RunStatus.FAILED.value, "reason": failure}
            info = search.trials[number][0].info
            if self.tell_optuna(search, number):
                self.dirty.add(self.stopping.scope(info))

    def _log_run(self, unit: Unit, status: RunStatus) -> None:
        """The run's whole history (steps whose live report was lost or late are logged now),
        its final metrics and its end tags."""
        result = unit.result
        history = result.get("history") or {}
        throughput = result.get("throughput") or {}  # measured speed, aligned with history's steps
        if all(len(v) == len(history.get("step", ())) for v in throughput.values()):
            history = {**history, **throughput}
        self.tracker.log_history(unit.run_id, history)
        tags = {
            names.TAG_RESUMED_FROM_STEP: str(result.get("resumed_from_step", 0)),
            names.TAG_NODE_ID: str(result.get("node_id", "")),
        }
        if result.get(STOP_KIND):
            tags[names.TAG_STOP_KIND] = str(result[STOP_KIND])
        if result.get("checkpoint_note"):  # its checkpoint could not be used: why it started over
            tags[names.TAG_CHECKPOINT_NOTE] = str(result["checkpoint_note"])[:5000]
        for k, v in (result.get("flops") or {}).items():  # the run's FLOP accounting, per example
            if isinstance(v, (int, float)):
                tags[f"{names.TAG_FLOPS_PREFIX}{k}"] = f"{v:.6g}"
        for k, v in (result.get("runtime") or {}).items():  # device, precision, workers, determinism
            tags[f"{names.TAG_RUNTIME_PREFIX}{k}"] = (
                json.dumps(v, sort_keys=True) if isinstance(v, dict) else str(v)
            )[:5000]
        final = {k: v for k, v in unit.summary.items() if isinstance(v, (int, float))}
        for k, v in (result.get("n_params") or {}).items():
            final[f"{names.N_PARAMS_METRIC_PREFIX}{k}"] = v
        if self.study.trainer is not None:
            self._log_reported_n(unit, result)
        self.tracker.finish_run(unit.run_id, status.value, result.get("reason", ""), final, tags)

    def _log_reported_n(self, unit: Unit, result: dict) -> None:
        """The N a user trainer reported (a target count when it reported none), as the N params
        the report reads; params an earlier attempt logged stay (MLflow keeps a param's first value)."""
        reported = reported_n_params(result, unit.cell.target_n)
        run = self.tracker.children.get(unit.key)
        had = set(run.data.params) if run is not None and run.data is not None else set()
        fresh = {k: v for k, v in reported.items() if k not in had}
        if fresh:
            self.tracker.log_params(unit.run_id, fresh)

    def tell_optuna(self, search: CellSearch, number: int) -> bool:
        """The trial to Optuna; True when its value taught the stopping rule something new."""
        value = search.tell(number)
        return self.stopping is not None and self.stopping.trial_done(search.cell.key, value)

    def post_rules(self) -> None:
        """What the stopping rule learned this turn, as new rules for the runs still training in
        the scopes it concerned (a phase group, a cell). A run is posted only when what its rules
        decide changed (`decides`), not when their wording did (the evidence a reason cites grows
        with every evaluation of a run in flight; re-posting for that was O(runs in flight) a tick)."""
        dirty, self.dirty = self.dirty, set()
        scope = self.stopping.scope
        for unit in self.launcher.running():
            if scope(unit.info) not in dirty:
                continue
            rules = self.stopping.rules(unit.info)
            if decides(rules) != decides(unit.rules):
                unit.rules = rules
                self.launcher.post_rules(unit.run_id, rules)


def decides(rules: StopRules) -> tuple:
    """What a run's rules decide: every field but the reason's wording."""
    return tuple(dataclasses.replace(r, reason="") for r in rules)
