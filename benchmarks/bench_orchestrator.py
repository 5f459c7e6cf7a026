"""Orchestration overhead and cluster utilization for 64 short trials on 2 CPUs, against a plain
sequential loop over the same trials, in one run.

Orchestrated: `run_study` on a local Ray with 2 CPUs, a journal Optuna storage and an MLflow
SQLite store (everything a user gets). It reports its start-up S (Ray, MLflow, Optuna; once per
study), its scheduled time W (first submission to last result recorded) and the summed busy time
T of the trials as they ran (each trial's own `wall_time_s`).
Baseline: the same 64 TrainSpecs trained one after another in this process (no Ray, Optuna or
MLflow): their summed time B is the pure training work.
  overhead per trial = (2 W - T) / 64         slot time not spent in a trial (target <= 20 ms)
  utilization        = T / (2 W)              trial busy time / available CPU time (>= 90%)
The slot time not spent in a trial splits, from the trials' own start and end times per worker,
into three parts:
  slot start         from the first submission to each slot's first trial: a Ray worker's cold
                     start (a process importing torch and the trainer), once per slot per study;
  dispatch           between one trial's end and the next one's start on the same worker: the
                     per-trial cost of the driver, Optuna, MLflow and Ray (target <= 20 ms);
  tail               a slot idle at the end while the other finishes its last trial (bin
                     packing, once per study).
  vs sequential      = T / B (how much slower a trial runs beside the driver and Ray's daemons on
                       2 cores) and B / (S + W), the end-to-end speed-up over the sequential loop.
The slot start is not counted as dispatch: it is paid once per slot, not per trial, and
a cold start depends on the file cache (a fresh clone imports torch from disk), which is the
suspected source of the figure moving between 7.5 and 31.6 ms per trial from one run to the next.
--repeat K runs the whole measurement K times and reports each figure's median.

Usage: python benchmarks/bench_orchestrator.py [--trial-seconds 5] [--trials 64] [--repeat 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path

from orchestrator.study import Study
from orchestrator.study.grid import build_cells, spec_for
from orchestrator.sweep.driver import run_study
from trainers import train


def make_study(workdir: str, trials: int, steps: int) -> Study:
    # 4 cells x trials/4, weight decay searched: real cells, real Optuna asks.
    return Study.model_validate(
        {
            "name": "bench",
            "task": {"name": "modular", "p": 31},
            "model": {"family": "transformer", "n_layer": 1, "n_head": 4, "layer_norm": False},
            "train": {"steps": steps, "eval_every": max(1, steps // 10), "lr": 1e-3},
            "grid": {"n": [{"d_model": 32}, {"d_model": 48}], "d": [0.3, 0.5], "seeds": [0]},
            "search": {
                "sampler": "random",
                "trials_per_cell": trials // 4,
                "space": {"train.weight_decay": {"type": "float", "low": 0.1, "high": 1.0, "log": True}},
            },
            "tracking": {"uri": f"sqlite:///{workdir}/mlflow.db"},
            "workdir": f"{workdir}/runs",
            "ray": {"num_cpus": 2},
        }
    )


def calibrate_steps(seconds: float) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        study = make_study(tmp, 4, 200)
        cells = build_cells(study)
        per_step = (
            sum(train(spec_for(study, c, {"train.weight_decay": 0.3}, 0)).wall_time_s / 200 for c in cells)
            / 4
        )
    return max(10, int(seconds / per_step))


def recorded_specs(study: Study, cells: list) -> list:
    """The study's trials as Optuna recorded them, as the TrainSpecs of their runs (every seed)."""
    import optuna

    from orchestrator.sweep.search import open_storage

    storage = open_storage(study.storage_url)
    specs = []
    for cell in cells:
        ostudy = optuna.load_study(study_name=f"{study.name}/{cell.key}", storage=storage)
        specs += [
            spec_for(study, cell, t.params, seed) for t in ostudy.get_trials() for seed in study.grid.seeds
        ]
    return specs


def sequential_seconds(specs: list) -> float:
    """The pure training work: the runs one after another in this process, no Ray, Optuna or MLflow."""
    t0 = time.perf_counter()
    for spec in specs:
        train(spec)
    return time.perf_counter() - t0


def slot_gaps(stats) -> tuple[float, float, float]:
    """(slot start, dispatch, tail) in seconds of slot time, summed over the slots, from the runs'
    start and end times per worker process (module docstring)."""
    spans: dict[int, list[tuple[float, float]]] = {}
    for pid, start, end in stats.timeline:
        spans.setdefault(pid, []).append((start, end))
    first = gaps = tail = 0.0
    for iv in spans.values():
        iv.sort()
        first += iv[0][0] - stats.first_submit_at
        gaps += sum(b[0] - a[1] for a, b in pairwise(iv))
        tail += stats.last_recorded_at - iv[-1][1]
    return first, gaps, tail


def measure(trial_seconds: float, trials: int) -> dict:
    """One orchestrated study and its sequential baseline."""
    steps = calibrate_steps(trial_seconds)
    with tempfile.TemporaryDirectory() as tmp:
        study = make_study(tmp, trials, steps)
        cells = build_cells(study)
        cpu0 = time.process_time()
        stats = run_study(study, cells, show=False)
        driver_cpu = time.process_time() - cpu0
        specs = recorded_specs(study, cells)
    baseline = sequential_seconds(specs)
    cpus = 2
    n = len(specs)
    busy, sched, startup = stats.busy_s, stats.scheduled_s, stats.startup_s
    first, gaps, tail = slot_gaps(stats)
    return {
        "trials": n,
        "worker_processes": len({pid for pid, _, _ in stats.timeline}),
        "dispatch_ms_per_trial": gaps / n * 1e3,
        "slot_start_s": first,
        "tail_s": tail,
        "steps_per_trial": steps,
        "trial_seconds_sequential": baseline / n,
        "startup_s": startup,
        "scheduled_s": sched,
        "trial_busy_s": busy,
        "sequential_s": baseline,
        "overhead_ms_per_trial": (cpus * sched - busy) / n * 1e3,
        "utilization": busy / (cpus * sched),
        "driver_cpu_ms_per_trial": driver_cpu / n * 1e3,
        "trial_slowdown_vs_sequential": busy / baseline,
        "utilization_vs_sequential_work": baseline / (cpus * sched),
        "speedup_vs_sequential_end_to_end": baseline / (startup + sched),
        "completed": stats.completed,
        "cpus": cpus,
        "host_cpus": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trial-seconds", type=float, default=5.0)
    ap.add_argument("--trials", type=int, default=64)
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="measure this many times, each in a fresh process (its own Ray), and report the medians",
    )
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()
    if args.repeat == 1:
        out = measure(args.trial_seconds, args.trials)
    else:  # each repeat as a user's run is: a new process starting its own Ray and workers
        cmd = [
            sys.executable,
            __file__,
            "--trial-seconds",
            str(args.trial_seconds),
            "--trials",
            str(args.trials),
        ]
        runs = [
            json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
            for _ in range(args.repeat)
        ]
        out = {key: statistics.median(r[key] for r in runs) for key in runs[0]} | {"repeats": runs}
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
