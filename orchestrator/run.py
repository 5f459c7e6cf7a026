"""The driver: one process runs the study. It asks Optuna for trials in every (N, D) cell,
runs them as Ray tasks, streams their metrics into MLflow, and is the only writer of both.

Resume is running the same command again: finished trials are skipped, trials that were in
flight (RUNNING in Optuna) are run again under their own number and resume from their
checkpoints into their own MLflow runs, and new cells simply start.
"""

from __future__ import annotations

import math
import os
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import optuna
import ray
from optuna.trial import TrialState

from orchestrator.config import Study
from orchestrator.grid import Cell, spec_for
from orchestrator.progress import Progress
from orchestrator.search import cell_study, open_storage, suggest
from orchestrator.tracking import Tracker, config_yaml


# Runs queued on Ray beyond the free slots, per slot: a slot that frees up starts its next run
# at once instead of waiting for the driver to record the last one and ask Optuna for the next.
PREFETCH_PER_SLOT = 1
TICK_S = 0.5  # how often the driver wakes to stream metrics when no run has finished


@ray.remote(num_cpus=0)
class Inbox:
    """Where workers post metric records while they train; the driver takes them all at once."""

    def __init__(self) -> None:
        self.items: list[tuple[str, dict]] = []

    def put(self, item: tuple[str, dict]) -> None:
        self.items.append(item)

    def take(self) -> list[tuple[str, dict]]:
        items, self.items = self.items, []
        return items


@ray.remote(num_cpus=1)
def warm_up() -> None:
    """Import torch and the trainers on a worker while the driver sets up MLflow and Optuna."""
    import trainers  # noqa: F401


@ray.remote
def train_task(spec_json: str, checkpoint_dir: str, inbox, run_id: str) -> dict:
    """One training run on a worker. Metrics go to the inbox as they happen (best effort: the
    result carries the whole history too); an error in training comes back as a failed result,
    so only a dead worker makes Ray retry."""
    from trainers import TrainSpec, train  # imported on the worker

    def report(record: dict) -> None:
        inbox.put.remote((run_id, record))  # fire and forget: the trainer never waits on it

    started = time.time()
    where = {"node_id": ray.get_runtime_context().get_node_id(), "worker_pid": os.getpid()}
    try:
        spec = TrainSpec.model_validate_json(spec_json)
        out = train(spec, report=report, checkpoint_dir=checkpoint_dir).to_dict()
    except Exception:  # noqa: BLE001 - a trial's failure is data, never a crashed sweep
        out = {"status": "failed", "reason": traceback.format_exc(limit=5)[-4000:]}
    return {**out, **where, "started_at": started, "ended_at": time.time()}


def summarize(result: dict) -> dict[str, float | None]:
    """The run's final metrics plus what the objectives and the analysis read."""
    history = result.get("history") or {}
    events = result.get("events") or {}
    out: dict[str, float | None] = {k: v for k, v in (result.get("final") or {}).items() if k != "step"}
    finite = lambda xs: [x for x in xs if math.isfinite(x)]  # noqa: E731
    out["max_val_acc"] = max(finite(history.get("val_acc", [])), default=None)
    out["min_val_loss"] = min(finite(history.get("val_loss", [])), default=None)
    mem, gen = events.get("memorization_step"), events.get("generalization_step")
    out["memorization_step"], out["generalization_step"] = mem, gen
    out["grokking_delay"] = gen - mem if mem is not None and gen is not None else None
    out["steps"] = result.get("steps")
    return out


def objective_value(metric: str, summary: dict, budget: int, eval_every: int) -> float:
    value = summary.get(metric)
    if value is None and metric in ("generalization_step", "memorization_step", "grokking_delay"):
        # Never reached within the budget: censored just past it, so any run that got there ranks better.
        return float(budget + eval_every)
    return float("nan") if value is None else float(value)


@dataclass
class Unit:
    """One training run: an Optuna trial of a cell under one seed."""

    cell: Cell
    trial_number: int
    seed: int
    params: dict[str, Any]
    run_id: str
    budget: tuple[int, int] = (0, 1)  # the run's (steps, eval_every): censoring for step objectives
    ref: Any = None
    result: dict | None = None
    summary: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.cell.key}/trial={self.trial_number}/seed={self.seed}"


@dataclass
class CellState:
    cell: Cell
    index: int
    optuna: optuna.Study
    to_resume: list[optuna.trial.FrozenTrial]
    new_left: int
    trials: dict[int, list[Unit]] = field(default_factory=dict)  # in flight, by trial number
    handles: dict[int, optuna.Trial] = field(default_factory=dict)  # to set attributes by number

    @property
    def has_work(self) -> bool:
        return bool(self.to_resume) or self.new_left > 0


def _connect(study: Study) -> None:
    if ray.is_initialized():
        return
    if study.ray.address:
        ray.init(address=study.ray.address, log_to_driver=False)
    else:
        # Local: no dashboard, so nothing listens; under `ray job submit` RAY_ADDRESS is set
        # and this joins that cluster instead.
        ray.init(num_cpus=study.ray.num_cpus, include_dashboard=False, log_to_driver=False,
                 dashboard_host="127.0.0.1")


def _capacity(study: Study, cells: list[Cell]) -> int:
    """How many runs fit on the cluster at once, for the smallest request in the study."""
    total = ray.cluster_resources()
    best = 0
    for cell in cells:
        cpus, gpus = study.resources.for_n(cell.n(study.grid.n_convention))
        fit = total.get("CPU", 0) // cpus if cpus else math.inf
        if gpus:
            fit = min(fit, total.get("GPU", 0) // gpus)
        best = max(best, fit)
    return max(1, int(best)) if best != math.inf else 1


def run_cost(study: Study, cell: Cell) -> float:
    """Relative compute of one run in a cell: parameters x examples per step (training FLOPs
    scale as 6 N x tokens, Kaplan et al. 2020); the steps are the same in every cell."""
    batch = study.train.get("batch_size") or cell.n_train
    return float(cell.n_params.total) * min(batch, cell.n_train)


def run_study(study: Study, cells: list[Cell], show: bool = True) -> dict:
    """Run (or resume) the study to completion; returns counts per final status."""
    t_start = time.monotonic()
    storage = open_storage(study.storage_url)
    tracker = Tracker(study)
    _connect(study)
    capacity = _capacity(study, cells)
    warm = [warm_up.remote() for _ in range(min(capacity, 64))]  # overlaps the set-up below
    tracker.open(config_yaml(study))
    inbox = Inbox.remote()

    states = []
    for i, cell in enumerate(cells):
        ostudy = cell_study(study, cell, i, storage)
        ostudy.set_user_attr("n_params", cell.n_params.as_dict())
        ostudy.set_user_attr("n_train", cell.n_train)
        ostudy.set_user_attr("shape", cell.shape)
        trials = ostudy.get_trials(deepcopy=False)
        orphans = [t for t in trials if t.state == TrialState.RUNNING]
        started = len([t for t in trials if t.state != TrialState.WAITING])
        states.append(CellState(cell, i, ostudy, orphans, max(0, study.search.trials_per_cell - started)))

    progress = Progress(study, states, show=show)
    ray.get(warm)
    in_flight: dict[Any, Unit] = {}
    counts: dict[str, Any] = {"completed": 0, "diverged": 0, "failed": 0, "stopped": 0, "resumed": 0, "busy_s": 0.0,
                              "capacity": capacity, "timeline": []}
    live_keys: set[str] = set()

    def submit(state: CellState, trial: optuna.Trial, params: dict[str, Any]) -> None:
        number = trial.number
        state.handles[number] = trial
        units = []
        for seed in study.grid.seeds:
            spec = spec_for(study, state.cell, params, seed)
            unit = Unit(state.cell, number, seed, params, run_id="", budget=(spec.train.steps, spec.train.eval_every))
            live_keys.add(unit.key)
            tags = {"grokscale.cell": state.cell.key, "grokscale.trial_number": str(number),
                    "grokscale.seed": str(seed), "grokscale.status": "running"}
            logged = {"cell": state.cell.key, "n_params": state.cell.n_params.total,
                      "n_params_non_embedding": state.cell.n_params.non_embedding,
                      "n_params_embedding": state.cell.n_params.embedding, "n_train": state.cell.n_train,
                      "d_value": state.cell.d_value, "seed": seed, "optuna_trial_number": number,
                      **{f"param.{k}": v for k, v in params.items()},
                      "spec_json": spec.model_dump_json()}
            unit.run_id = tracker.start_run(unit.key, f"{state.cell.key} t{number} s{seed}", logged, tags)
            cpus, gpus = study.resources.for_n(state.cell.n(study.grid.n_convention))
            ckpt = study.checkpoint_path / state.cell.key / f"trial={number}" / f"seed={seed}"
            unit.ref = train_task.options(num_cpus=cpus, num_gpus=gpus, max_retries=study.ray.max_retries,
                                          retry_exceptions=False).remote(
                spec.model_dump_json(), str(ckpt.resolve()), inbox, unit.run_id)
            in_flight[unit.ref] = unit
            units.append(unit)
            trial.set_user_attr(f"run_id.seed={seed}", unit.run_id)
        state.trials[number] = units

    def finish(unit: Unit, result: dict) -> None:
        unit.result = result
        # The result's history is the record: steps whose live report was lost or late are logged now.
        tracker.log_history(unit.run_id, result.get("history") or {})
        unit.summary = summarize(result)
        status = result.get("status", "failed")
        counts[status] = counts.get(status, 0) + 1
        counts["busy_s"] += result.get("wall_time_s", 0.0)
        if "started_at" in result:  # on which worker, from when to when: the benchmark's timeline
            counts["timeline"].append((result["worker_pid"], result["started_at"], result["ended_at"]))
        if result.get("resumed_from_step"):
            counts["resumed"] += 1
        extra = {"grokscale.resumed_from_step": str(result.get("resumed_from_step", 0)),
                 "grokscale.node_id": str(result.get("node_id", ""))}
        final = {k: v for k, v in unit.summary.items() if isinstance(v, (int, float))}
        for k, v in (result.get("n_params") or {}).items():
            final[f"n_params_{k}"] = v
        tracker.finish_run(unit.run_id, status, result.get("reason", ""), final, extra)
        state = next(s for s in states if s.cell is unit.cell)
        units = state.trials[unit.trial_number]
        if all(u.result is not None for u in units):
            tell(state, unit.trial_number, units)
            del state.trials[unit.trial_number]

    def tell(state: CellState, number: int, units: list[Unit]) -> None:
        trial = state.handles.pop(number)
        bad = next((u for u in units if u.result["status"] != "completed"), None)
        if bad is not None:
            trial.set_user_attr("status", bad.result["status"])
            trial.set_user_attr("reason", bad.result.get("reason", "")[:2000])
            state.optuna.tell(trial, state=TrialState.FAIL)
            return
        values = []
        for obj in study.objectives:
            vals = [objective_value(obj.metric, u.summary, *u.budget) for u in units]
            values.append(sum(vals) / len(vals))  # the mean over seeds
        trial.set_user_attr("status", "completed")
        if any(math.isnan(v) for v in values):
            trial.set_user_attr("reason", "an objective metric was not recorded")
            state.optuna.tell(trial, state=TrialState.FAIL)
        else:
            state.optuna.tell(trial, values if len(values) > 1 else values[0])

    t0 = time.monotonic()
    counts["startup_s"] = t0 - t_start
    counts["first_submit_at"] = time.time()
    # Keep every slot busy and one more run queued behind each, so a slot never waits on the driver.
    limit = max(capacity * (1 + PREFETCH_PER_SLOT), len(study.grid.seeds))
    by_cost = sorted(states, key=lambda s: -run_cost(study, s.cell))
    with progress:
        while True:
            # Fill the cluster: trials a dead driver left in flight first, then new trials from
            # the costliest cell that has work left (longest first, so the study does not end
            # with one long run holding the wall clock while the other slots idle).
            while len(in_flight) + len(study.grid.seeds) <= limit:
                state = (next((s for s in states if s.to_resume), None)
                         or next((s for s in by_cost if s.has_work), None))
                if state is None:
                    break
                if state.to_resume:
                    frozen = state.to_resume.pop(0)
                    # A trial left RUNNING by a dead driver: same number, same values.
                    submit(state, optuna.Trial(state.optuna, frozen._trial_id), dict(frozen.params))
                else:
                    trial = state.optuna.ask()
                    state.new_left -= 1
                    try:
                        submit(state, trial, suggest(trial, study))
                    except Exception as err:  # noqa: BLE001 - a value the trainer refuses
                        trial.set_user_attr("reason", str(err)[:2000])
                        state.optuna.tell(trial, state=TrialState.FAIL)
                        counts["failed"] += 1
            if not in_flight and not any(s.has_work for s in states):
                break
            # Wake on the first finished run, or every TICK_S to stream metrics; then collect
            # whatever else has finished.
            ready, rest = ray.wait(list(in_flight), num_returns=1, timeout=TICK_S)
            if ready and rest:
                ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
            _stream(inbox, tracker)
            for ref in ready:
                unit = in_flight.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayError as err:  # the worker died more often than max_retries
                    result = {"status": "failed", "reason": f"{type(err).__name__}: {err}"[:4000]}
                finish(unit, result)
            tracker.flush()
            progress.update(in_flight.values(), time.monotonic() - t0)

    counts["scheduled_s"] = time.monotonic() - t0  # first submission to last result recorded
    counts["last_recorded_at"] = time.time()
    tracker.close_orphans(live_keys)
    tracker.finish_study()
    if not tracker.drain():
        raise RuntimeError(f"the tracking server at {study.tracking.uri} did not come back; "
                           f"{len(tracker.pending)} writes could not be sent")
    ray.kill(inbox)
    counts["wall_time_s"] = time.monotonic() - t0
    counts["parent_run_id"] = tracker.parent_id
    return counts


def _stream(inbox, tracker: Tracker) -> None:
    """Every record posted since the last tick, one MLflow batch per run."""
    by_run: dict[str, list[dict]] = {}
    for run_id, record in ray.get(inbox.take.remote()):
        by_run.setdefault(run_id, []).append(record)
    for run_id, records in by_run.items():
        tracker.log_records(run_id, records)

