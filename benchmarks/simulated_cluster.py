"""A simulated cluster behind the driver's launcher seam (orchestrator/sweep/launcher.py), for the
driver scale benchmark (bench_driver_scale.py): thousands of slots on a real clock, each run a
stream of evaluations of a realistic grokking curve, in a separate process.

Why a separate process: the driver's CPU time must be the driver's own. Ray's workers and its
inbox actor live outside the driver process, and the driver pays only for taking their records
(`ray.get` of a pickled list) and results; here the cluster process plays both, and the driver pays
the same: unpickling one message per tick from a pipe. The worker's side of the stopping rules
runs in the cluster process with the real code (`RunState`, `first_stop`), as Ray's workers run it.

The curves (`GrokCurve`) follow what the built-in trainer records on modular arithmetic (trainers/
core.py: the same keys, one record per evaluation): training accuracy rises within a few hundred
steps (memorization); validation accuracy jumps late, once the decay clock lr x wd x steps reaches
what the cell's data needs (grokking time scales as 1 / (lr x wd): Lyu et al. 2024, Omnigrok; less
data needs more, Power et al. 2022, Fig. 1), or never within the budget; decay too strong to fit
the training set (wd >= STRONG_WD, as in bench_sweep_compute.py's naive phase diagram) settles at a
high training loss. Losses follow the accuracies: training cross-entropy falls to ~1e-6 once
memorized, validation loss rises while memorizing and falls on generalization.

Time: a full-budget run lasts `run_seconds`; its evaluations are spread evenly over it, and a run
a stop rule ends early frees its slot early. The delay from a run's end to the next start in its
slot is measured here, on the cluster's clock (`CLUSTER_DELAYS`).
"""

from __future__ import annotations

import contextlib
import heapq
import math
import multiprocessing as mp
import os
import queue
import random
import threading
import time
from collections import deque
from dataclasses import dataclass

from orchestrator.store.names import RunStatus
from orchestrator.sweep.outcome import STOP_KIND
from orchestrator.sweep.stopping import RunState, StopRules, first_stop

SEND_S = 0.01  # the cluster posts what happened at most this often (Ray's inbox is taken per tick)
STRONG_WD = 2.5  # decay this strong balances the gradient before the training set is fitted
LSTAR_AT_03 = 8.0  # decay clock (sum lr x wd) a run with 30% of the data needs to generalize
CELL_TOKENS = 3  # "a + b =" : tokens per example of the modular task (accounting only)


@dataclass(frozen=True)
class GrokCurve:
    """One run's curve, drawn from its config and seed; `record(step)` is its evaluation there."""

    lr: float
    weight_decay: float
    steps: int
    eval_every: int
    train_threshold: float
    val_threshold: float
    d_value: float  # fraction of the p^2 pairs used for training
    p: int
    seed: int
    n_params: int
    n_train: int

    @property
    def memorization_step(self) -> float:
        # More data takes longer to memorize; x0.8-1.25 between seeds.
        return 300.0 * (self.d_value / 0.3) * self._jitter(1, 0.1)

    @property
    def fits(self) -> bool:
        return self.weight_decay < STRONG_WD

    @property
    def generalization_step(self) -> float:
        """Where validation accuracy jumps: the decay clock the data needs / lr x wd (inf: never)."""
        if not self.fits or self.weight_decay <= 0:
            return math.inf
        need = LSTAR_AT_03 * (0.3 / self.d_value) ** 2 * self._jitter(2, 0.15)
        return max(need / (self.lr * self.weight_decay), 1.5 * self.memorization_step)

    def _jitter(self, salt: int, sigma: float) -> float:
        return math.exp(
            random.Random(hash((self.seed, self.weight_decay, self.d_value, salt))).gauss(0.0, sigma)
        )

    def records(self) -> list[dict[str, float]]:
        """Every evaluation of the full budget (a stop rule may end the run before the last)."""
        m, g = self.memorization_step, self.generalization_step
        rng = random.Random(hash((self.seed, self.weight_decay, self.d_value)))
        chance = 1.0 / self.p
        out = []
        for step in range(self.eval_every, self.steps + 1, self.eval_every):
            train_top = 1.0 if self.fits else 0.7
            train_acc = chance + (train_top - chance) / (1.0 + math.exp(-(step - m) / (0.15 * m)))
            if self.fits:  # log10 loss: from ln p down to 1e-2 at memorization, then to 1e-6 by 3 m
                x = (
                    -2.0 + (math.log10(math.log(self.p)) + 2.0) * max(0.0, 1.0 - step / m)
                    if step < m
                    else -2.0 - 4.0 * min(1.0, (step - m) / (2.0 * m))
                )
                train_loss = 10.0 ** (x + rng.gauss(0.0, 0.05))
            else:
                train_loss = 0.3 + 0.01 * rng.random()
            grok = 1.0 / (1.0 + math.exp(-(step - g) / (0.05 * g))) if math.isfinite(g) else 0.0
            plateau = chance + 0.04 * min(1.0, step / m)  # a little above chance while memorizing
            val_acc = min(1.0, plateau + (1.0 - plateau) * grok + 0.002 * rng.random())
            val_loss = math.log(self.p) * (1.0 + 0.5 * min(1.0, step / m)) * (1.0 - grok) + 1e-3
            clock = self.lr * self.weight_decay * step
            examples = float(step * self.n_train)
            out.append(
                {
                    "step": step,
                    "train_loss": train_loss,
                    "train_acc": min(1.0, train_acc),
                    "val_loss": val_loss,
                    "val_acc": val_acc,
                    "weight_norm": 12.0 + 30.0 * math.exp(-clock / 3.0),
                    "lr": self.lr,
                    "examples": examples,
                    "tokens": examples * CELL_TOKENS,
                    "epochs": float(step),
                    "flops": examples * 6.0 * self.n_params,
                }
            )
        return out


def curve_of(unit) -> GrokCurve:
    """A driver's run (orchestrator/sweep/unit.py) as its curve."""
    t, task = unit.spec.train, unit.spec.task
    return GrokCurve(
        t.lr,
        t.weight_decay,
        t.steps,
        t.eval_every,
        t.train_threshold,
        t.val_threshold,
        unit.cell.d_value,
        int(getattr(task, "p", 97)),
        unit.seed,
        unit.cell.n_params.total,
        unit.cell.n_train,
    )


def result_of(
    curve: GrokCurve,
    seen: list[dict],
    status: RunStatus,
    reason: str,
    stop_kind: str | None,
    started: float,
    ended: float,
    slot: int,
) -> dict:
    """The result dict a Ray worker returns (trainers/core.py TrainResult.to_dict() + worker fields)."""
    history: dict[str, list[float]] = {k: [r[k] for r in seen] for k in seen[0]} if seen else {}
    state = RunState(curve.train_threshold, curve.val_threshold)
    for r in seen:
        state.see(r)
    out = {
        "status": status.value,
        "reason": reason,
        "steps": int(seen[-1]["step"]) if seen else 0,
        "final": {k: v[-1] for k, v in history.items()},
        "history": history,
        "events": {
            "memorization_step": state.memorized_at,
            "generalization_step": state.generalized_at,
            "diverged_step": None,
        },
        "n_params": {"total": curve.n_params},
        "n_train": curve.n_train,
        "wall_time_s": ended - started,
        "eval_time_s": 0.0,
        "resumed_from_step": 0,
        "task_info": {},
        "flops": {},
        "checkpoint_note": None,
        "node_id": "simulated",
        "worker_pid": slot,
        "started_at": started,
        "ended_at": ended,
    }
    if stop_kind is not None:
        out[STOP_KIND] = stop_kind
    return out


# -- the cluster's side, in its own process -------------------------------------------------------
class _Run:
    __slots__ = ("run_id", "curve", "rules", "records", "state", "next", "slot", "started", "dt")

    def __init__(self, run_id: str, curve: GrokCurve, rules: StopRules) -> None:
        self.run_id, self.curve, self.rules = run_id, curve, rules
        self.records = curve.records()
        self.state = RunState(curve.train_threshold, curve.val_threshold)
        self.next = 0  # index of its next evaluation
        self.slot = -1
        self.started = 0.0
        self.dt = 0.0


def cluster_main(conn, slots: int, run_seconds: float) -> None:
    """The cluster: `slots` slots, a FIFO queue of submitted runs (as Ray queues tasks beyond its
    resources), evaluations due on the real clock. Posts ("events", records, results) at most
    every SEND_S; on ("close",) answers ("stats", {...}) and ends."""
    free = list(range(slots))
    last_end: dict[int, float] = {}  # slot -> when its last run ended
    waiting: deque[tuple[_Run, float]] = deque()  # (run, when it arrived)
    live: dict[str, _Run] = {}
    due: list[tuple[float, int, _Run]] = []  # (time of its next evaluation, tiebreak, run)
    seq = 0
    delays: list[float] = []  # run end -> next start in the same slot, seconds
    records: list[tuple[str, dict]] = []
    results: list[tuple[str, dict]] = []
    last_send = time.monotonic()
    cpu0 = time.process_time()
    # Messages are read on a thread of their own: the driver may be sending a large batch of
    # submissions while this process sends its events, and two processes each blocked writing
    # to a full pipe would wait for ever.
    inbox: queue.Queue = queue.Queue()

    def read() -> None:
        while True:
            msg = conn.recv()
            inbox.put(msg)
            if msg[0] == "close":
                return

    threading.Thread(target=read, daemon=True).start()
    held: list = []

    def start(run: _Run, at: float) -> None:
        nonlocal seq
        run.slot = free.pop()
        if run.slot in last_end:
            delays.append(at - last_end.pop(run.slot))
        run.started, run.dt = at, run_seconds * run.curve.eval_every / run.curve.steps
        live[run.run_id] = run
        seq += 1
        heapq.heappush(due, (at + run.dt, seq, run))

    def end(run: _Run, at: float, status: RunStatus, reason: str, kind: str | None) -> None:
        del live[run.run_id]
        free.append(run.slot)
        last_end[run.slot] = at
        results.append(
            (
                run.run_id,
                result_of(
                    run.curve, run.records[: run.next], status, reason, kind, run.started, at, run.slot
                ),
            )
        )
        while free and waiting:  # the slot takes the next queued run at once (prefetched on Ray)
            nxt, arrived = waiting.popleft()
            start(nxt, max(at, arrived))

    while True:
        now = time.monotonic()
        while not inbox.empty():
            held.append(inbox.get_nowait())
        for msg in held:
            if msg[0] == "close":
                conn.send(("stats", {"delays_s": delays, "cpu_s": time.process_time() - cpu0}))
                return
            _, submits, rules = msg
            for run_id, curve, rs in submits:
                run = _Run(run_id, curve, rs)
                if free:
                    start(run, now)
                else:
                    waiting.append((run, now))
            for run_id, rs in rules:
                if run_id in live:
                    live[run_id].rules = rs
                else:  # still queued
                    for run, _ in waiting:
                        if run.run_id == run_id:
                            run.rules = rs
        held = []
        while due and due[0][0] <= now:
            at, _, run = heapq.heappop(due)
            record = run.records[run.next]
            run.next += 1
            records.append((run.run_id, record))
            run.state.see(record)
            stop = first_stop(run.rules, run.state, int(record["step"]))
            if stop is not None:
                kind, why = stop
                end(run, at, RunStatus.STOPPED, f"{why} (stopped at step {int(record['step'])})", kind.value)
            elif run.next == len(run.records):
                end(run, at, RunStatus.COMPLETED, "budget", None)
            else:
                seq += 1
                heapq.heappush(due, (at + run.dt, seq, run))
        if (records or results) and (results or now - last_send >= SEND_S):
            conn.send(("events", records, results))
            records, results = [], []
            last_send = now
        wake = min(due[0][0] if due else now + SEND_S, now + SEND_S)
        with contextlib.suppress(queue.Empty):
            held.append(inbox.get(timeout=max(0.0, wake - time.monotonic())))


# -- the driver's side: the launcher ---------------------------------------------------------------
class SimulatedCluster:
    """The launcher the driver gets (the methods RayLauncher has); the cluster runs in a child
    process. Submissions and rules are sent once per tick, with the poll."""

    def __init__(self, study, cells, slots: int = 1000, run_seconds: float = 10.0) -> None:
        self.study, self.capacity = study, slots
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=cluster_main, args=(child, slots, run_seconds), daemon=True)
        self.proc.start()
        child.close()
        self.in_flight: dict[str, list] = {}  # run id -> [unit]
        self.out_submits: list = []
        self.out_rules: list = []
        self.inbox: list[tuple[str, dict]] = []
        self.cluster_stats: dict = {}

    def wait_warm(self) -> None:
        pass

    def __len__(self) -> int:
        return len(self.in_flight)

    def running(self):
        for units in self.in_flight.values():
            yield from units

    def submit(self, units: list) -> None:
        (unit,) = units  # the benchmark's study does not pack
        self.in_flight[unit.run_id] = units
        self.out_submits.append((unit.run_id, curve_of(unit), unit.rules))

    def post_rules(self, run_id: str, rules: StopRules) -> None:
        self.out_rules.append((run_id, rules))

    def _send(self) -> None:
        if self.out_submits or self.out_rules:
            self.conn.send(("work", self.out_submits, self.out_rules))
            self.out_submits, self.out_rules = [], []

    def poll(self, timeout_s: float) -> list[tuple]:
        """Up to `timeout_s` for a run to finish; every finished run, with its result."""
        self._send()
        deadline = time.monotonic() + timeout_s
        done = []
        while True:
            left = deadline - time.monotonic()
            if not done and left <= 0:
                return done
            if not self.conn.poll(0 if done else left):
                if done:
                    return done
                continue
            _, records, results = self.conn.recv()
            self.inbox += records
            for run_id, result in results:
                units = self.in_flight.pop(run_id)
                done.append((units[0], result))

    def records(self) -> list[tuple[str, dict]]:
        items, self.inbox = self.inbox, []
        return items

    def close(self) -> None:
        self._send()
        self.conn.send(("close",))
        while True:
            msg = self.conn.recv()
            if msg[0] == "stats":
                self.cluster_stats = msg[1]
                break
        self.proc.join(timeout=10)


def child_pids() -> list[int]:
    """This process's children (the cluster among them), for CPU accounting."""
    pids = []
    for task in os.listdir(f"/proc/{os.getpid()}/task"):
        try:
            with open(f"/proc/{os.getpid()}/task/{task}/children") as f:
                pids += [int(p) for p in f.read().split()]
        except OSError:
            continue
    return pids


# -- the same curves on real Ray (bench_driver_scale.py --ray) -------------------------------------
def curve_task_body(curve: GrokCurve, inbox, run_id: str, rules: StopRules, run_seconds: float) -> dict:
    """One run on a Ray worker: sleeps between its evaluations and streams them through the real
    Reporter to the real Inbox (orchestrator/sweep/worker.py), which applies the driver's rules."""
    from types import SimpleNamespace

    from orchestrator.sweep.worker import Reporter

    spec = SimpleNamespace(
        train=SimpleNamespace(train_threshold=curve.train_threshold, val_threshold=curve.val_threshold)
    )
    report = Reporter(inbox, run_id, spec, rules)
    started = time.time()
    dt = run_seconds * curve.eval_every / curve.steps
    seen: list[dict] = []
    status, reason = RunStatus.COMPLETED, "budget"
    for record in curve.records():
        time.sleep(max(0.0, started + dt * (len(seen) + 1) - time.time()))
        seen.append(record)
        if report(record):
            status, reason = RunStatus.STOPPED, ""
            break
    out = result_of(curve, seen, status, reason, None, started, time.time(), os.getpid())
    return report.finish(out)


def ray_launcher(study, cells, run_seconds: float):
    """RayLauncher whose tasks run `curve_task_body`: its poll, inbox, records and rules as is."""
    import ray

    from orchestrator.sweep.launcher import RayLauncher

    curve_task = ray.remote(curve_task_body)

    class CurveRayLauncher(RayLauncher):
        def submit(self, units: list) -> None:
            (u,) = units
            cpus, _ = self.study.resources.for_n(u.cell.n(self.study.grid.n_convention))
            ref = curve_task.options(num_cpus=cpus, max_retries=0).remote(
                curve_of(u), self.inbox, u.run_id, u.rules, run_seconds
            )
            self.in_flight[ref] = units

    return CurveRayLauncher(study, cells)
