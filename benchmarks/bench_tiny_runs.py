"""What a tiny run costs outside training: N runs of about 0.1 s each (modular addition, p = 23,
100 steps) through `grokscale run` on 2 CPUs, with packing off and with `pack: auto`, against
the same runs trained in a plain sequential loop, in one run (before the driver's batching, 1,000
such runs took 121 s, about 80 ms of slot time per run outside training).

Orchestrated: the CLI's `run` command in this process (a local Ray with 2 CPUs, a journal
Optuna storage, an MLflow SQLite store: everything a user gets; no report). It reports the
scheduled time W (first submission to last result recorded), the start-up S and the runs'
summed busy time T; this process's CPU time during the command is the driver's (its threads,
Ray's client included).
Baseline: the pack-off study's runs, as Optuna recorded them, trained one after another in
this process on one thread (as a Ray worker with one CPU trains): their summed time B.
  overhead per run     = (2 W - B) / N    slot time not spent training (target < 20 ms)
  overhead vs own busy = (2 W - T) / N    the same against the runs' own time beside the driver
  driver CPU per run   = the driver's CPU seconds from the first submission to the last result / N
A packed run trains faster than alone, so against B its overhead reads low: `vs own busy`
is its fair figure. On a loaded machine wall times stretch; driver CPU per run and the ratios
to B measured in the same run hold better.

Usage: python benchmarks/bench_tiny_runs.py [--runs 1000] [--modes off auto] [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import yaml
from bench_orchestrator import recorded_specs, sequential_seconds

from orchestrator import cli
from orchestrator.study import load_study
from orchestrator.study.grid import build_cells

TRIALS_PER_CELL = 10
D_FRACTIONS = [0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75]
CPUS = 2
OUT = Path(__file__).resolve().parent / "results" / "tiny_runs"


def study_dict(workdir: Path, name: str, runs: int, pack: str) -> dict:
    """runs / 10 cells (up to 10 data fractions x as many widths as needed) x 10 trials, weight
    decay searched: real cells, real Optuna asks, as a user's sweep of many small models."""
    cells = max(1, runs // TRIALS_PER_CELL)
    d = D_FRACTIONS[: min(cells, len(D_FRACTIONS))]
    widths = [{"d_model": 8 * (i + 1)} for i in range(max(1, cells // len(d)))]
    return {
        "name": name,
        "task": {"name": "modular", "p": 23},
        "model": {"family": "transformer", "n_layer": 1, "n_head": 2, "layer_norm": False},
        "train": {"steps": 100, "eval_every": 20, "lr": 1e-3},
        "grid": {"n": widths, "d": d, "seeds": [0]},
        "search": {
            "sampler": "random",
            "trials_per_cell": TRIALS_PER_CELL,
            "space": {"train.weight_decay": {"type": "float", "low": 0.1, "high": 1.0, "log": True}},
        },
        "pack": {"mode": pack},
        "tracking": {"uri": f"sqlite:///{workdir}/mlflow.db"},
        "workdir": str(workdir / "runs"),
        "ray": {"num_cpus": CPUS},
        "resources": {"cpus": 1},
    }


class CpuClock(threading.Thread):
    """This process's CPU seconds against the wall clock, sampled every `every_s`: the CPU spent
    between two moments (the driver's scheduled phase, without its start-up)."""

    def __init__(self, every_s: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.every_s, self.samples, self.done = (
            every_s,
            [(time.time(), time.process_time())],
            threading.Event(),
        )

    def run(self) -> None:
        while not self.done.wait(self.every_s):
            self.samples.append((time.time(), time.process_time()))

    def at(self, t: float) -> float:
        """CPU seconds at epoch time `t`, from the sample just before it."""
        return max((c for s, c in self.samples if s <= t), default=self.samples[0][1])


def run_cli(path: Path) -> tuple[dict, float, float, float]:
    """`grokscale run STUDY --quiet --json --no-report` in this process: its JSON answer, wall
    seconds, and this process's CPU seconds while it ran and in its scheduled phase alone."""
    out = io.StringIO()
    clock = CpuClock()
    clock.start()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(out):
        rc = cli.main(["run", str(path), "--quiet", "--json", "--no-report"])
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    clock.done.set()
    clock.join()
    if rc != 0:
        raise SystemExit(f"grokscale run {path} exited {rc}: {out.getvalue()[-2000:]}")
    stats = json.loads(out.getvalue().strip().splitlines()[-1])
    return stats, wall, cpu, clock.at(stats["last_recorded_at"]) - clock.at(stats["first_submit_at"])


def measure(root: Path, runs: int, pack: str) -> tuple[dict, Path]:
    workdir = root / f"pack_{pack}"
    workdir.mkdir()
    path = workdir / "study.yaml"
    path.write_text(yaml.safe_dump(study_dict(workdir, f"tiny_{pack}", runs, pack), sort_keys=False))
    stats, wall, cpu, scheduled_cpu = run_cli(path)
    n = stats["completed"] + stats["stopped"] + stats["diverged"] + stats["failed"]
    return {
        "pack": pack,
        "runs": n,
        "completed": stats["completed"],
        "failed": stats["failed"],
        "packed_tasks": stats["packed_tasks"],
        "command_wall_s": wall,
        "startup_s": stats["startup_s"],
        "scheduled_s": stats["scheduled_s"],
        "busy_s": stats["busy_s"],
        "driver_cpu_s": cpu,
        "driver_cpu_ms_per_run": scheduled_cpu / n * 1e3,
        "driver_cpu_ms_per_run_all_told": cpu / n * 1e3,
        "runs_per_s": n / stats["scheduled_s"],
    }, path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=1000, help="runs per mode (10 trials per cell)")
    ap.add_argument("--modes", nargs="+", default=["off", "auto"], choices=["off", "auto", "on"])
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # as `grokscale run` does: 127.0.0.1 only
    import ray

    # Ray once, before the first mode (as the launcher starts it), so that no mode pays for it.
    ray.init(num_cpus=CPUS, include_dashboard=False, log_to_driver=False)
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        modes, first = [], None
        for pack in args.modes:
            row, path = measure(root, args.runs, pack)
            modes.append(row)
            first = first or path
        # The baseline: the first mode's runs, one after another on one thread (a Ray worker's CPU).
        import torch

        torch.set_num_threads(1)
        study = load_study(str(first))
        specs = recorded_specs(study, build_cells(study))
        baseline = sequential_seconds(specs)
    per_run = baseline / len(specs)
    for row in modes:
        n, w = row["runs"], row["scheduled_s"]
        row["overhead_ms_per_run"] = (CPUS * w - per_run * n) / n * 1e3
        row["overhead_ms_per_run_vs_own_busy"] = (CPUS * w - row["busy_s"]) / n * 1e3
        row["overhead_ms_per_run_all_told"] = (CPUS * (row["command_wall_s"]) - per_run * n) / n * 1e3
        row["wall_vs_ideal"] = w / (per_run * n / CPUS)  # 1.0: the 2 slots never idle, nothing added
    out = {
        "runs_per_mode": args.runs,
        "code": str(Path(cli.__file__).parent.parent),
        "sequential_s": baseline,
        "sequential_ms_per_run": per_run * 1e3,
        "modes": modes,
        "cpus": CPUS,
        "host_cpus": os.cpu_count(),
        "load_average_1m": {"start": load0, "end": os.getloadavg()[0]},
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(json.dumps(out, indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"tiny_{args.runs}runs_{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}.json").write_text(
        json.dumps(out, indent=2)
    )


if __name__ == "__main__":
    main()
