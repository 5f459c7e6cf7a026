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
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from orchestrator.study import Study
from orchestrator.study.grid import Cell, spec_for
from orchestrator.sweep.progress import Progress
from orchestrator.sweep.pruning import Pruner, RunState, StopRule, decay_rate, stop_reason
from orchestrator.sweep.search import cell_study, open_storage, suggest
from orchestrator.store.tracker import Tracker, config_yaml
from trainers.packed import can_pack


# Runs queued on Ray beyond the free slots, per slot: a slot that frees up starts its next run
# at once instead of waiting for the driver to record the last one and ask Optuna for the next.
PREFETCH_PER_SLOT = 1
TICK_S = 0.5  # how often the driver wakes to stream metrics when no run has finished
UNSET = "unset"  # the inbox's answer for a run whose rule the driver has not changed since launch
NON_ADAPTIVE_SAMPLERS = ("qmc", "grid", "random")  # their draws do not depend on results


@ray.remote(num_cpus=0)
class Inbox:
    """Where workers post metric records while they train; the driver takes them all at once."""

    def __init__(self) -> None:
        self.items: list[tuple[str, dict]] = []
        self.rules: dict[str, StopRule | None] = {}  # run id -> its stop rule, from the driver

    def put(self, item: tuple[str, dict]) -> StopRule | None | str:
        """Take a record; answer with the stop rule the driver last posted for the run, or UNSET
        (the worker reads the answer when it has arrived, never waiting for it)."""
        self.items.append(item)
        return self.rules.get(item[0], UNSET)

    def set_rule(self, run_id: str, rule: StopRule | None) -> None:
        self.rules[run_id] = rule

    def take(self) -> list[tuple[str, dict]]:
        items, self.items = self.items, []
        return items


@ray.remote(num_cpus=1)
def warm_up() -> None:
    """Import torch and the trainers on a worker while the driver sets up MLflow and Optuna."""
    import trainers  # noqa: F401


class Reporter:
    """A run's report hook on its worker: posts every evaluation to the inbox (fire and forget,
    so the trainer never waits), picks up the stop rule the driver answers with once it has
    arrived, and applies it to the run's own evaluations (orchestrator/sweep/pruning.py)."""

    def __init__(self, inbox, run_id: str, spec, rule: StopRule | None = None) -> None:
        self.inbox, self.run_id, self.rule = inbox, run_id, rule
        self.state = RunState(spec.train.train_threshold, spec.train.val_threshold)
        self.pending: list = []
        self.fired: str | None = None  # the rule's reason, once it stopped the run

    def __call__(self, record: dict) -> bool:
        if self.pending:
            ready, _ = ray.wait(self.pending, num_returns=len(self.pending), timeout=0)
            if ready:
                done = set(ready)
                latest = [ref for ref in self.pending if ref in done][-1]
                answer = ray.get(latest)
                if answer != UNSET:  # the newest posted rule wins, None included
                    self.rule = answer
                self.pending = [ref for ref in self.pending[self.pending.index(latest) + 1:]]
        self.pending.append(self.inbox.put.remote((self.run_id, record)))
        self.state.see(record)
        why = stop_reason(self.rule, self.state, int(record["step"]))
        if why is not None:
            self.fired = f"{why} (stopped at step {int(record['step'])})"
            return True
        return False

    def finish(self, out: dict) -> dict:
        if out.get("status") == "stopped" and self.fired:
            out["reason"] = self.fired
        return out


@ray.remote
def train_task(spec_json: str, checkpoint_dir: str, inbox, run_id: str, rule: StopRule | None = None) -> dict:
    """One training run on a worker. Metrics go to the inbox as they happen (best effort: the
    result carries the whole history too); an error in training comes back as a failed result,
    so only a dead worker makes Ray retry."""
    from trainers import TrainSpec, train  # imported on the worker

    started = time.time()
    where = {"node_id": ray.get_runtime_context().get_node_id(), "worker_pid": os.getpid()}
    try:
        spec = TrainSpec.model_validate_json(spec_json)
        report = Reporter(inbox, run_id, spec, rule)
        out = report.finish(train(spec, report=report, checkpoint_dir=checkpoint_dir).to_dict())
    except Exception:  # noqa: BLE001 - a trial's failure is data, never a crashed sweep
        out = {"status": "failed", "reason": traceback.format_exc(limit=5)[-4000:]}
    return {**out, **where, "started_at": started, "ended_at": time.time()}


@ray.remote
def packed_task(spec_jsons: list[str], checkpoint_dirs: list[str], inbox, run_ids: list[str],
                rules: list[StopRule | None] | None = None) -> list[dict]:
    """Several runs of one cell trained together as one batched model (trainers/packed.py), each
    streaming under its own run id and stopped by its own rule; the results come back in order,
    one per run."""
    from trainers import TrainSpec
    from trainers.packed import train_packed

    started = time.time()
    where = {"node_id": ray.get_runtime_context().get_node_id(), "worker_pid": os.getpid(), "packed": len(run_ids)}
    try:
        specs = [TrainSpec.model_validate_json(s) for s in spec_jsons]
        reports = [Reporter(inbox, r, spec, rule) for r, spec, rule in zip(run_ids, specs, rules or [None] * len(specs))]
        outs = [rep.finish(r.to_dict()) for rep, r in zip(reports, train_packed(specs, reports, checkpoint_dirs))]
    except Exception:  # noqa: BLE001 - the pack's failure is data: every run in it failed
        reason = traceback.format_exc(limit=5)[-4000:]
        outs = [{"status": "failed", "reason": reason} for _ in run_ids]
    ended = time.time()
    return [{**out, **where, "started_at": started, "ended_at": ended} for out in outs]


# Packing pays on a CPU only while one run's step is small: measured with benchmarks/
# bench_packing.py on 2 cores, K packed runs beat K separate ones by 1.6x at 159 examples x 14k
# parameters per step and broke even at 505 x 15k. On a GPU a small model's step is mostly
# kernel launches, which packing shares.
CPU_PACK_MAX_WORK = 3e6  # examples per step x parameters


def pack_size(study: Study, cell: Cell) -> int:
    """How many runs of this cell to train in one packed task (1: none)."""
    mode, k = study.pack.mode, study.pack.max_runs
    if mode == "off" or k < 2:
        return 1
    if mode == "on":
        return k
    on_gpu = study.resources.for_n(cell.n(study.grid.n_convention))[1] > 0
    return k if on_gpu or run_cost(study, cell) <= CPU_PACK_MAX_WORK else 1


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
    out["diverged_step"] = events.get("diverged_step")
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
    spec: Any = None  # its TrainSpec
    checkpoint_dir: str = ""
    result: dict | None = None
    summary: dict = field(default_factory=dict)
    group: tuple = ()  # runs whose decay clocks compare (orchestrator/sweep/pruning.py)
    rule: StopRule | None = None  # the stop rule last posted to its worker
    taught: bool = False  # objective: its generalization, seen live, was already taught to the pruner

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
    ahead: list[tuple[optuna.Trial, dict | None]] = field(default_factory=list)  # asked ahead, run in order

    @property
    def has_work(self) -> bool:
        return bool(self.to_resume) or self.new_left > 0 or bool(self.ahead)


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
    # On the driver's own node: an actor dies with its node, and a dead inbox would stop the driver.
    inbox = Inbox.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        ray.get_runtime_context().get_node_id(), soft=False)).remote()

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

    pruner = make_pruner(study, states)
    decides_fastest_first = (pruner is not None and pruner.mode == "phase"
                             and study.search.sampler in NON_ADAPTIVE_SAMPLERS)
    progress = Progress(study, states, show=show)
    ray.get(warm)
    in_flight: dict[Any, list[Unit]] = {}  # a Ray task -> its runs (several when packed)
    live: dict[str, Unit] = {}  # run id -> its unit, while it trains
    counts: dict[str, Any] = {"completed": 0, "diverged": 0, "failed": 0, "stopped": 0, "resumed": 0, "busy_s": 0.0,
                              "capacity": capacity, "timeline": []}
    live_keys: set[str] = set()

    def prepare(state: CellState, trial: optuna.Trial, params: dict[str, Any]) -> list[Unit]:
        """The runs of one trial (one per seed), each with its spec and its MLflow run."""
        number = trial.number
        state.handles[number] = trial
        units = []
        for seed in study.grid.seeds:
            spec = spec_for(study, state.cell, params, seed)
            ckpt = study.checkpoint_path / state.cell.key / f"trial={number}" / f"seed={seed}"
            unit = Unit(state.cell, number, seed, params, run_id="", budget=(spec.train.steps, spec.train.eval_every),
                        spec=spec, checkpoint_dir=str(ckpt.resolve()))
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
            if pruner is not None:
                unit.group = Pruner.group(state.cell.n_index, params)
                unit.rule = pruner.rule(state.cell.key, unit.group, state.cell.d_value, spec.train, unit.key)
            units.append(unit)
            trial.set_user_attr(f"run_id.seed={seed}", unit.run_id)
        state.trials[number] = units
        return units

    def launch(units: list[Unit]) -> None:
        """One Ray task per run, or one packed task for runs that can train as one batched model."""
        if not units:
            return
        live.update((u.run_id, u) for u in units)
        cell = units[0].cell
        cpus, gpus = study.resources.for_n(cell.n(study.grid.n_convention))
        options = dict(num_cpus=cpus, num_gpus=gpus, max_retries=study.ray.max_retries, retry_exceptions=False)
        if len(units) > 1 and can_pack([u.spec for u in units]) is None:
            ref = packed_task.options(**options).remote(
                [u.spec.model_dump_json() for u in units], [u.checkpoint_dir for u in units], inbox,
                [u.run_id for u in units], [u.rule for u in units])
            in_flight[ref] = units
            counts["packed_tasks"] = counts.get("packed_tasks", 0) + 1
            return
        for u in units:
            ref = train_task.options(**options).remote(u.spec.model_dump_json(), u.checkpoint_dir, inbox, u.run_id,
                                                       u.rule)
            in_flight[ref] = [u]

    def next_trial(state: CellState) -> list[Unit]:
        """The runs of the cell's next trial: one a dead driver left in flight, else a new one."""
        if state.to_resume:
            frozen = state.to_resume.pop(0)
            # A trial left RUNNING by a dead driver: same number, same values.
            return prepare(state, optuna.Trial(state.optuna, frozen._trial_id), dict(frozen.params))
        if not state.ahead and state.new_left > 0 and decides_fastest_first:
            # A sampler that ignores results draws the same values asked now or later: ask the
            # cell's trials at once and run the fastest decay first. It is the first to
            # generalize or settle, and what it teaches prunes the slower ones (pruning.py).
            while state.new_left > 0:
                state.new_left -= 1
                trial = state.optuna.ask()
                try:
                    state.ahead.append((trial, suggest(trial, study)))
                except ValueError:  # asked again below, where it fails like any refused value
                    state.ahead.append((trial, None))
            state.ahead.sort(key=lambda tp: -decay_rate_of(state.cell, tp[1]))
        if state.ahead:
            trial, params = state.ahead.pop(0)
        else:
            trial, params = state.optuna.ask(), None
            state.new_left -= 1
        try:
            return prepare(state, trial, suggest(trial, study) if params is None else params)
        except ValueError as err:  # a value the trainer refuses (pydantic, --set paths)
            state.handles.pop(trial.number, None)
            state.trials.pop(trial.number, None)
            trial.set_user_attr("reason", str(err)[:2000])
            state.optuna.tell(trial, state=TrialState.FAIL)
            counts["failed"] += 1
            return []

    def decay_rate_of(cell: Cell, params: dict[str, Any] | None) -> float:
        if params is None:
            return math.inf
        try:
            return decay_rate(spec_for(study, cell, params, study.grid.seeds[0]).train)
        except ValueError:  # refused by the trainer: fails when it is prepared
            return math.inf

    def finish(unit: Unit, result: dict) -> None:
        unit.result = result
        live.pop(unit.run_id, None)
        # The result's history is the record: steps whose live report was lost or late are logged now.
        tracker.log_history(unit.run_id, result.get("history") or {})
        unit.summary = summarize(result)
        status = result.get("status", "failed")
        counts[status] = counts.get(status, 0) + 1
        if "started_at" in result:  # on which worker, from when to when: the benchmark's timeline
            span = (result["worker_pid"], result["started_at"], result["ended_at"])
            if result.get("packed"):  # the runs of a pack share its task: count its time once
                counts["busy_s"] += (span[2] - span[1]) / result["packed"]
                if span not in counts["timeline"]:
                    counts["timeline"].append(span)
            else:
                counts["busy_s"] += result.get("wall_time_s", 0.0)
                counts["timeline"].append(span)
        if result.get("resumed_from_step"):
            counts["resumed"] += 1
        extra = {"grokscale.resumed_from_step": str(result.get("resumed_from_step", 0)),
                 "grokscale.node_id": str(result.get("node_id", ""))}
        final = {k: v for k, v in unit.summary.items() if isinstance(v, (int, float))}
        for k, v in (result.get("n_params") or {}).items():
            final[f"n_params_{k}"] = v
        tracker.finish_run(unit.run_id, status, result.get("reason", ""), final, extra)
        state = next(s for s in states if s.cell is unit.cell)
        gen = unit.summary.get("generalization_step")
        handle = state.handles[unit.trial_number]
        handle.set_user_attr(f"generalization_step.seed={unit.seed}", gen)
        learned = False
        if pruner is not None:
            learned = pruner.run_done(unit.key, unit.group, unit.cell.d_value, unit.spec.train,
                                      result.get("history") or {}, result.get("reason", ""))
            if pruner.mode == "phase":  # what it taught, for a resumed driver (make_pruner)
                handle.set_user_attr(f"decay_unresolved.seed={unit.seed}",
                                     pruner.unresolved_clock(unit.group, unit.key))
        units = state.trials[unit.trial_number]
        if all(u.result is not None for u in units):
            learned = tell(state, unit.trial_number, units) or learned
            del state.trials[unit.trial_number]
        if learned:
            post_rules()

    def learn(items: list[tuple[str, dict]]) -> bool:
        """The live evaluations, taught to the pruner as they come rather than when their run
        ends (a packed run ends with its whole pack)."""
        new = False
        for run_id, record in items:
            u = live.get(run_id)
            if u is None:
                continue
            new = pruner.see(u.key, u.group, u.cell.d_value, u.spec.train, record) or new
            if u.taught or record.get("val_acc", -1.0) < u.spec.train.val_threshold:
                continue
            u.taught = True
            if len(study.grid.seeds) == 1 and pruner.metric == "generalization_step":
                # objective: the trial's value, known now
                new = pruner.trial_done(u.cell.key, float(record["step"])) or new
        return new

    def post_rules() -> None:
        """What a finished run taught its cell, as new stop rules for the runs still training."""
        for units in in_flight.values():
            for u in units:
                rule = pruner.rule(u.cell.key, u.group, u.cell.d_value, u.spec.train, u.key)
                if rule != u.rule:
                    u.rule = rule
                    inbox.set_rule.remote(u.run_id, rule)

    def tell(state: CellState, number: int, units: list[Unit]) -> bool:
        """Report the trial to Optuna; True when it is its cell's new best (objective pruning)."""
        trial = state.handles.pop(number)
        bad = next((u for u in units if u.result["status"] not in ("completed", "stopped")), None)
        if bad is not None:
            trial.set_user_attr("status", bad.result["status"])
            trial.set_user_attr("reason", bad.result.get("reason", "")[:2000])
            state.optuna.tell(trial, state=TrialState.FAIL)
            return False
        stopped = next((u for u in units if u.result["status"] == "stopped"), None)
        values = []
        for obj in study.objectives:
            # A stopped run's step objective is censored where it stopped: a bound, not a value.
            vals = [objective_value(obj.metric, u.summary, u.result.get("steps") or u.budget[0], u.budget[1])
                    if stopped else objective_value(obj.metric, u.summary, *u.budget) for u in units]
            values.append(sum(vals) / len(vals))  # the mean over seeds
        if stopped is not None:
            trial.set_user_attr("status", "pruned")
            trial.set_user_attr("reason", stopped.result.get("reason", "")[:2000])
            if len(values) == 1 and not math.isnan(values[0]):
                trial.report(values[0], max(u.result.get("steps") or 0 for u in units))
            state.optuna.tell(trial, state=TrialState.PRUNED)
            return False
        trial.set_user_attr("status", "completed")
        if any(math.isnan(v) for v in values):
            trial.set_user_attr("reason", "an objective metric was not recorded")
            state.optuna.tell(trial, state=TrialState.FAIL)
            return False
        state.optuna.tell(trial, values if len(values) > 1 else values[0])
        return pruner is not None and pruner.trial_done(state.cell.key, values[0])

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
                # A packed task takes the runs of several trials of the cell into one slot.
                units = list(next_trial(state))  # a copy: the trial's own list must not grow
                k = pack_size(study, state.cell)
                if k > 1:
                    while state.has_work and len(units) + len(study.grid.seeds) <= k:
                        units += next_trial(state)
                    launch(units)
                else:
                    for unit in units:
                        launch([unit])
            if not in_flight and not any(s.has_work for s in states):
                break
            # Wake on the first finished run, or every TICK_S to stream metrics; then collect
            # whatever else has finished.
            ready, rest = ray.wait(list(in_flight), num_returns=1, timeout=TICK_S)
            if ready and rest:
                ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
            items = _stream(inbox, tracker)
            if pruner is not None and learn(items):
                post_rules()
            for ref in ready:
                units = in_flight.pop(ref)
                try:
                    results = ray.get(ref)
                except ray.exceptions.RayError as err:  # the worker died more often than max_retries
                    results = [{"status": "failed", "reason": f"{type(err).__name__}: {err}"[:4000]}] * len(units)
                for unit, result in zip(units, results if isinstance(results, list) else [results]):
                    finish(unit, result)
            tracker.flush()
            progress.update([u for units in in_flight.values() for u in units], time.monotonic() - t0)

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


def make_pruner(study: Study, states: list[CellState]) -> Pruner | None:
    """The study's pruner, with what its finished trials already taught it (on resume)."""
    if study.prune.mode == "off":
        return None
    pruner = Pruner(study.prune.mode, metric=study.objectives[0].metric, safety=study.prune.safety,
                    memorized_for=study.prune.memorized_for, n_seeds=len(study.grid.seeds))
    for state in states:
        for t in state.optuna.get_trials(deepcopy=False, states=[TrialState.COMPLETE, TrialState.PRUNED]):
            if t.state == TrialState.COMPLETE and len(t.values) == 1:
                pruner.trial_done(state.cell.key, t.values[0])
            for seed in study.grid.seeds:
                spec = spec_for(study, state.cell, dict(t.params), seed)
                pruner.restore(f"{state.cell.key}/trial={t.number}/seed={seed}",
                               Pruner.group(state.cell.n_index, dict(t.params)), state.cell.d_value, spec.train,
                               t.user_attrs.get(f"generalization_step.seed={seed}"),
                               t.user_attrs.get(f"decay_unresolved.seed={seed}"))
    return pruner


def _stream(inbox, tracker: Tracker) -> list[tuple[str, dict]]:
    """Every record posted since the last tick, one MLflow batch per run; returns the records."""
    by_run: dict[str, list[dict]] = {}
    try:
        items = ray.get(inbox.take.remote(), timeout=60)
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
        return []  # live metrics are best effort: each run's whole history is logged when it ends
    for run_id, record in items:
        by_run.setdefault(run_id, []).append(record)
    for run_id, records in by_run.items():
        tracker.log_records(run_id, records)
    return items

