"""Does the driver keep up with a lab-sized study? 10,000 runs on 1,000 slots, phase pruning on,
Optuna on PostgreSQL and MLflow behind a real `mlflow server` on PostgreSQL (both started here).
By default (`--store database`) the driver writes runs' rows straight into the server's database
(`tracking.database`); `--store server` sends them through the server's REST API instead.

The cluster is simulated (simulated_cluster.py): this machine cannot hold 1,000 Ray workers, and
Ray's own envelope is Ray's to publish. The driver is the real one (orchestrator/sweep/driver.py:
Optuna ask/tell, the MLflow tracker, the phase rule, progress), fed through the launcher seam
by a cluster process whose runs stream grokking curves of about 100 evaluations on a real clock.

Measured, from samples every second of the driver process (this one) and of /proc:
  runs/s          runs recorded per second over the steady part (10% to 90% of the runs);
  points/s        metric points the tracking server accepted per second, same window;
  CPU             driver process CPU time / wall, and per 1,000 runs in flight; CPU-ms per run;
  memory          driver RSS over the study (flat: O(runs in flight), not O(runs done));
  delay           a run's end to the next start in its slot, p50 and p99 (cluster clock);
  cores           the machine's busy cores and PostgreSQL's (every backend), CPU-us a point;
  backlog         the most MLflow writes waiting at once (fill_slots stops starting runs past
                  BACKLOG_PER_SLOT a slot: the store, not the driver, then sets the pace).
Targets: >= 100 runs/s and >= 50,000 points/s with the driver under one core; memory
flat; p99 delay <= 50 ms.

`--ray`: the companion on real Ray: the same study and curves through the real RayLauncher, its
Inbox actor and the worker's Reporter (orchestrator/sweep/worker.py), on `--slots` fractional-CPU
slots, each run a task that sleeps between its evaluations; its driver CPU-ms per run is the
figure to set beside the simulation's.

Usage:
  python benchmarks/bench_driver_scale.py                         # the full study (minutes)
  python benchmarks/bench_driver_scale.py --runs 400 --slots 100  # quick
  python benchmarks/bench_driver_scale.py --ray --runs 256 --slots 64
  python benchmarks/bench_driver_scale.py --store server          # runs' rows through the server's REST API
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from simulated_cluster import SimulatedCluster

from orchestrator.study import Study
from orchestrator.study.grid import build_cells
from orchestrator.sweep.driver import Driver

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the tests' throwaway servers
from support.mlflow_server import MlflowServer  # noqa: E402
from support.postgres import Postgres, unavailable  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
D_VALUES = (0.3, 0.4, 0.5, 0.6, 0.7)
SEEDS = (0, 1)
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


def make_study(root: Path, runs: int, tracking: dict, storage: str, ray_slots: int | None = None) -> Study:
    """One N, five D values, two seeds, weight decay searched with a random sampler (the phase
    rule then runs each cell's fastest decay first); 10,000 steps, an evaluation every 100."""
    trials = max(1, runs // (len(D_VALUES) * len(SEEDS)))
    data = {
        "name": "scale",
        "task": {"name": "modular", "p": 97},
        "model": {"family": "transformer", "n_layer": 1, "n_head": 4, "d_model": 32, "layer_norm": False},
        "train": {"steps": 10_000, "eval_every": 100, "lr": 1e-3, "warmup_steps": 0},
        "grid": {"n": [{"d_model": 32}], "d": list(D_VALUES), "seeds": list(SEEDS)},
        "search": {
            "sampler": "random",
            "trials_per_cell": trials,
            "space": {"train.weight_decay": {"type": "float", "low": 0.03, "high": 3.0, "log": True}},
        },
        "objectives": [{"metric": "max_val_acc", "direction": "maximize"}],
        "prune": {"mode": "phase"},
        "pack": {"mode": "off"},
        "tracking": tracking,
        "workdir": str(root / "runs"),
        "storage": storage,
    }
    if ray_slots is not None:  # fractional CPUs: ray_slots slots on 2 CPUs
        data["ray"] = {"num_cpus": 2, "max_retries": 0}
        data["resources"] = {"cpus": 2 / ray_slots}
    return Study.model_validate(data)


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in f.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / TICKS


def user_cpu_s(uid: int, seen: dict[int, float]) -> float:
    """CPU seconds of `uid`'s processes (PostgreSQL's), each process's largest reading kept in
    `seen` so that a backend that has exited still counts."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != uid:
                continue
            with open(f"/proc/{entry.name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            seen[int(entry.name)] = max(
                seen.get(int(entry.name), 0.0), (int(fields[11]) + int(fields[12])) / TICKS
            )
        except (OSError, IndexError, ValueError):  # it exited meanwhile
            continue
    return sum(seen.values())


class Sampler(threading.Thread):
    """Every `every_s`: wall, driver CPU, RSS, runs in flight, runs recorded, points sent, MLflow
    writes waiting, the machine's busy CPU and PostgreSQL's."""

    def __init__(self, driver: Driver, every_s: float = 1.0, db_uid: int | None = None) -> None:
        super().__init__(daemon=True)
        self.driver, self.every_s, self.db_uid = driver, every_s, db_uid
        self.rows: list[dict] = []
        self.db_seen: dict[int, float] = {}
        self.done = threading.Event()

    def sample(self) -> dict:
        d = self.driver
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * PAGE
        s = d.stats
        tracker = getattr(d, "tracker", None)
        return {
            "t": time.monotonic(),
            "cpu_s": time.process_time(),
            "rss_mb": rss / 2**20,
            "in_flight": len(d.live),
            "recorded": s.completed + s.stopped + s.failed + s.diverged,
            "points": getattr(tracker, "points_sent", 0),
            "backlog": getattr(tracker, "backlog", 0),
            "busy_s": machine_busy_s(),
            "db_cpu_s": user_cpu_s(self.db_uid, self.db_seen) if self.db_uid is not None else 0.0,
        }

    def run(self) -> None:
        while not self.done.wait(self.every_s):
            self.rows.append(self.sample())


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def window(rows: list[dict], total: int, lo: float = 0.1, hi: float = 0.9) -> tuple[dict, dict]:
    """The samples where the recorded runs first pass lo and hi of the total: the steady part."""
    a = next(r for r in rows if r["recorded"] >= lo * total)
    b = next((r for r in rows if r["recorded"] >= hi * total), rows[-1])
    return a, b


def summarize(rows: list[dict], total: int, t0: float, stats, delays: list[float], extra: dict) -> dict:
    a, b = window(rows, total)
    span = max(1e-9, b["t"] - a["t"])
    steady = [r for r in rows if a["t"] <= r["t"] <= b["t"]]
    cpu_frac = (b["cpu_s"] - a["cpu_s"]) / span
    in_flight = statistics.mean(r["in_flight"] for r in steady) if steady else float("nan")
    per_interval = []
    for x, y in zip(steady, steady[1:]):
        if y["in_flight"]:
            per_interval.append((y["cpu_s"] - x["cpu_s"]) / (y["t"] - x["t"]) / (y["in_flight"] / 1000))
    last = rows[-1]
    recorded = stats.completed + stats.stopped + stats.failed + stats.diverged
    quart = [next((r for r in rows if r["recorded"] >= q * total), last) for q in (0.25, 0.5, 0.75, 1.0)]
    return {
        **extra,
        "runs": recorded,
        "completed": stats.completed,
        "stopped": stats.stopped,
        "failed": stats.failed,
        "runs_per_s": (b["recorded"] - a["recorded"]) / span,
        "points_per_s": (b["points"] - a["points"]) / span,
        "points_total": last["points"],
        "driver_cpu_fraction": cpu_frac,
        "driver_cpu_ms_per_run": 1e3 * (b["cpu_s"] - a["cpu_s"]) / max(1, b["recorded"] - a["recorded"]),
        # Whole study, the writer thread's drain of MLflow writes included (the window's figure
        # misses writes still queued when it closes).
        "driver_cpu_ms_per_run_all": 1e3 * (last["cpu_s"] - rows[0]["cpu_s"]) / max(1, recorded),
        "driver_cpu_fraction_per_1000_in_flight": cpu_frac / (in_flight / 1000) if in_flight else None,
        "driver_cpu_per_1000_in_flight_p50_p90": [pct(per_interval, 0.5), pct(per_interval, 0.9)],
        "mean_in_flight": in_flight,
        "rss_mb_at_25_50_75_100pct": [round(r["rss_mb"], 1) for r in quart],
        "rss_mb_per_1000_in_flight": statistics.mean(r["rss_mb"] for r in steady) / (in_flight / 1000)
        if in_flight
        else None,
        "delay_ms_p50": 1e3 * pct(delays, 0.5),
        "delay_ms_p99": 1e3 * pct(delays, 0.99),
        "delay_ms_max": 1e3 * max(delays, default=float("nan")),
        "delays_measured": len(delays),
        # Where the cores went in the steady window: the whole machine (out of host_cpus) and
        # PostgreSQL (every backend: Optuna's, MLflow's, the driver's writers).
        "machine_busy_cores": (b["busy_s"] - a["busy_s"]) / span,
        "database_cores": (b["db_cpu_s"] - a["db_cpu_s"]) / span,
        "database_cpu_us_per_point": 1e6
        * (b["db_cpu_s"] - a["db_cpu_s"])
        / max(1, b["points"] - a["points"]),
        "backlog_max": max(r["backlog"] for r in rows),
        "steady_window_s": span,
        "wall_s": last["t"] - t0,
        "startup_s": stats.startup_s,
        "scheduled_s": stats.scheduled_s,
        "driver_wall_s": stats.wall_time_s,
        "samples": [{k: round(v - t0, 2) if k == "t" else round(v, 3) for k, v in r.items()} for r in rows],
    }


def run_driver(
    study: Study, launcher, show: bool, db_uid: int | None = None
) -> tuple[Driver, Sampler, float]:
    cells = build_cells(study)
    driver = Driver(study, cells, show=show, launcher=launcher)
    sampler = Sampler(driver, db_uid=db_uid)
    t0 = time.monotonic()
    sampler.start()
    try:
        driver.run()
    finally:
        sampler.rows.append(sampler.sample())
        sampler.done.set()
    return driver, sampler, t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--slots", type=int, default=1_000)
    ap.add_argument(
        "--run-seconds",
        type=float,
        default=None,
        help="a full-budget run's length (default: slots / 150, so the cluster asks for >= 100 runs/s)",
    )
    ap.add_argument("--mlflow-workers", type=int, default=2)
    ap.add_argument("--ray", action="store_true", help="real Ray instead of the simulated cluster")
    ap.add_argument(
        "--store",
        choices=("server", "database"),
        default="database",
        help="how runs' rows reach MLflow: through the tracking server's REST API, or as plain SQL "
        "into the server's own PostgreSQL (tracking.database); the server runs either way",
    )
    ap.add_argument(
        "--out", type=Path, default=None, help="JSON file (default: benchmarks/results/driver_scale/)"
    )
    ap.add_argument("--show", action="store_true", help="the live progress lines on stderr")
    args = ap.parse_args()
    run_seconds = args.run_seconds or max(1.0, args.slots / 150)
    why = unavailable()
    if why:
        sys.exit(f"bench_driver_scale: {why}")
    pg = Postgres()
    root = Path(tempfile.mkdtemp(prefix="gs-scale-"))
    server = None
    try:
        pg.start(databases=("optuna", "mlflow"), max_connections=200)  # MLflow's workers hold pools
        server = MlflowServer(
            root, backend=pg.url("mlflow", "postgresql+psycopg2"), workers=args.mlflow_workers
        )
        server.start()
        optuna_url = pg.url("optuna", "postgresql+psycopg2")
        tracking = {"uri": server.uri}
        if args.store == "database":
            tracking["database"] = pg.url("mlflow")
        study = make_study(root, args.runs, tracking, optuna_url, args.slots if args.ray else None)
        if args.ray:
            import ray
            from simulated_cluster import ray_launcher

            # The workers import simulated_cluster too; num_cpus=2 with `--slots` fractional slots.
            ray.init(
                num_cpus=2,
                include_dashboard=False,
                log_to_driver=False,
                runtime_env={"env_vars": {"PYTHONPATH": f"{ROOT}:{ROOT / 'benchmarks'}"}},
            )
            launcher = lambda s, c: ray_launcher(s, c, run_seconds)  # noqa: E731
        else:
            launcher = lambda s, c: SimulatedCluster(s, c, args.slots, run_seconds)  # noqa: E731
        load0 = os.getloadavg()
        driver, sampler, t0 = run_driver(study, launcher, args.show, pwd.getpwnam("postgres").pw_uid)
        cluster = getattr(driver.launcher, "cluster_stats", {})
        runs_in_mlflow = pg.query("mlflow", "SELECT count(*) FROM runs WHERE status <> 'RUNNING'")
        points_in_mlflow = pg.query("mlflow", "SELECT count(*) FROM metrics")
        trials_in_optuna = pg.query(
            "optuna",
            "SELECT count(*) FROM trials t JOIN studies s USING (study_id) "
            "WHERE s.study_name NOT LIKE 'grokscale.hold/%' AND t.state <> 'RUNNING'",
        )
        extra = {
            "mode": "ray" if args.ray else "simulated",
            "store": args.store,
            "slots": args.slots,
            "run_seconds": run_seconds,
            "evaluations_per_run": 100,
            "metrics_per_evaluation": 10,
            "mlflow_workers": args.mlflow_workers,
            "loadavg_before": load0,
            "loadavg_after": os.getloadavg(),
            "host_cpus": os.cpu_count(),
            "cluster_cpu_s": cluster.get("cpu_s"),
            "mlflow_runs_finished": int(runs_in_mlflow or 0) - 1,
            "mlflow_points": int(points_in_mlflow or 0),
            "optuna_trials_finished": int(trials_in_optuna or 0),
            "children_cpu_s": sum(resource.getrusage(resource.RUSAGE_CHILDREN)[:2]),
        }
        delays = cluster.get("delays_s")
        if delays is None:  # on Ray: from the runs' own start and end times, per worker process
            spans: dict[int, list] = {}
            for pid, start, end in driver.stats.timeline:
                spans.setdefault(pid, []).append((start, end))
            delays = [b[0] - a[1] for iv in spans.values() for a, b in zip(sorted(iv), sorted(iv)[1:])]
        out = summarize(sampler.rows, args.runs, t0, driver.stats, delays, extra)
    finally:
        if server is not None:
            server.stop()
        pg.remove()
        shutil.rmtree(root, ignore_errors=True)
    samples = out.pop("samples")
    print(json.dumps(out, indent=2))
    path = (
        args.out
        or ROOT
        / "benchmarks"
        / "results"
        / "driver_scale"
        / f"{out['mode']}_{args.store}_{args.runs}runs_{args.slots}slots.json"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**out, "samples": samples}, indent=1))
    print(f"written: {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
