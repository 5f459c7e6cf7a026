"""`make soak`: a study of many small runs under random SIGKILLs, for GROKSCALE_SOAK_S seconds
(default 1800), then a check that nothing was lost or duplicated.

The faults, drawn at random every 5-30 s: a Ray worker training a run (Ray retries it, it
resumes from its checkpoint), the driver with its local Ray (the same `grokscale run` is started
again and resumes), and the MLflow tracking server (`mlflow server` on 127.0.0.1 with a SQLite
store, killed, down 3-15 s, started again on the same port; the driver buffers meanwhile).
When the study is done before the time is up, it grows: `trials_per_cell` rises and the next
`grokscale run` adds the new trials, as a user would. After the last fault the driver runs to the
end undisturbed, and the store is read back directly (the SQLite file, not the server):
- every Optuna trial exactly once (numbers 0..T-1 in each cell), each COMPLETE;
- one MLflow child run per trial x seed, FINISHED, no run key twice;
- every curve whole: val_acc at eval_every, 2 eval_every, ..., steps, no gap, no step twice.
It prints the faults injected and the runs lost (the goal: 0), writes them as JSON to
benchmarks/results/soak/ (GROKSCALE_SOAK_OUT to change), and fails on any loss.
Not part of `make test` (marker `soak`); run it with `make soak`.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from support.driver import start_driver, trials
from support.mlflow_server import MlflowServer
from support.ports import free_port
from support.processes import kill_tree, train_workers, wait_gone

SOAK_S = float(os.environ.get("GROKSCALE_SOAK_S", "1800"))
STEPS, EVAL_EVERY = 600, 50
DRAIN_S = 1500  # the last, undisturbed driver's time to finish what the faults left
GROW = 4  # trials added to every cell when the study ends before the soak does
# The quickstart's shape (3 N x 3 D, one seed) at a size where a run takes seconds on 2 cores.
STUDY = {
    "name": "soak",
    "task": {"name": "modular", "p": 23},
    "model": {"family": "transformer", "n_layer": 1, "n_head": 4, "layer_norm": False},
    "train": {"steps": STEPS, "eval_every": EVAL_EVERY, "checkpoint_every": 100, "lr": 3e-3},
    "grid": {"n": [{"d_model": 8}, {"d_model": 16}, {"d_model": 24}], "d": [0.2, 0.35, 0.5], "seeds": [0]},
    "search": {
        "sampler": "tpe",
        "trials_per_cell": 2,
        "space": {"train.weight_decay": {"type": "float", "low": 0.3, "high": 3.0, "log": True}},
    },
    "objectives": [{"metric": "max_val_acc", "direction": "maximize"}],
    "ray": {"num_cpus": 2, "max_retries": 50},
    "pack": {"mode": "off"},  # one Ray task per run: a worker kill hits one run
}

pytestmark = [
    pytest.mark.soak,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
    pytest.mark.timeout(int(SOAK_S) + 1800),
]


class Soak:
    """The study, its tracking server and its driver, and the faults injected into them."""

    def __init__(self, root: Path, seed: int = 0):
        self.root, self.rng, self.rng_seed = root, random.Random(seed), seed
        self.trials_per_cell = STUDY["search"]["trials_per_cell"]
        self.path = root / "study.yaml"
        self.write()
        self.server = MlflowServer(root, free_port())
        self.driver: subprocess.Popen | None = None
        self.faults: Counter = Counter()
        self.rounds = 0  # drivers started
        self.crashes: list[str] = []  # drivers that died on their own
        self.log_from = 0  # where the running driver's part of driver.log starts
        self.overran = False  # the last driver did not finish within DRAIN_S

    def write(self) -> None:
        data = {**STUDY, "search": {**STUDY["search"], "trials_per_cell": self.trials_per_cell}}
        self.path.write_text(yaml.safe_dump(data))

    def start_driver(self) -> None:
        self.rounds += 1
        log = self.root / "driver.log"
        self.log_from = log.stat().st_size if log.exists() else 0
        self.driver = start_driver(self.path, self.server.uri, "--no-report", log="driver.log")

    def driver_exited(self) -> int | None:
        """The driver's exit code once it has ended, None while it runs. A driver that died on
        its own (rc != 0, not killed by the soak) is a crash: recorded with the last line of its
        traceback, and started again as a user would (the soak fails on any crash at the end).
        Exit 2 "cannot reach the MLflow server" is not one: started while a server fault had the
        server down, it refused before starting anything, as documented."""
        rc = self.driver.poll()
        if rc in (None, 0):
            return rc
        log = (self.root / "driver.log").read_text(errors="replace")
        tail = log[self.log_from :]
        self.log_from = len(log)
        if not (rc == 2 and "cannot reach the MLflow server" in tail):
            lines = [line for line in tail.splitlines() if line.strip()]
            self.crashes.append(f"driver {self.rounds} exited {rc}: {lines[-1][:300] if lines else ''}")
            (self.root / f"crash{len(self.crashes)}.log").write_text(tail)
        while self.server.proc is None or self.server.proc.poll() is not None:
            self.server.start()
        self.start_driver()
        return None

    def kill_worker(self) -> bool:
        """SIGKILL a Ray worker training a run: waits up to 30 s for one (a driver just started
        is still importing torch in its workers)."""
        deadline = time.monotonic() + 30
        while not (workers := train_workers(self.driver.pid)):
            if time.monotonic() > deadline or self.driver.poll() is not None:
                return False
            time.sleep(0.5)
        victim = self.rng.choice(workers)
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:  # it finished meanwhile: no fault, draw again
            return False
        wait_gone(victim)
        return True

    def kill_driver(self) -> bool:
        kill_tree(self.driver.pid)  # the driver, its local Ray and its workers
        self.driver.wait()
        self.start_driver()
        return True

    def kill_server(self) -> bool:
        self.server.kill()
        time.sleep(self.rng.uniform(3, 15))
        self.server.start()  # same port, same store
        return True

    def inject(self) -> None:
        """One random fault; counted only when it hit something."""
        kind = self.rng.choice(["worker", "worker", "driver", "server"])
        if {"worker": self.kill_worker, "driver": self.kill_driver, "server": self.kill_server}[kind]():
            self.faults[kind] += 1

    def run(self, duration: float) -> None:
        self.server.start()
        self.start_driver()
        end = time.monotonic() + duration
        while time.monotonic() < end:
            time.sleep(self.rng.uniform(5, 30))
            if self.driver_exited() == 0:  # the study is done before the soak: grow it
                self.trials_per_cell += GROW
                self.write()
                self.start_driver()
                continue
            self.inject()
        # The last driver finishes undisturbed (the audit runs and prints either way).
        deadline = time.monotonic() + DRAIN_S
        while self.driver_exited() is None:
            if time.monotonic() > deadline:
                self.overran = True
                return
            time.sleep(1)

    def close(self) -> None:
        if self.driver is not None and self.driver.poll() is None:
            kill_tree(self.driver.pid)
            self.driver.wait()
        self.server.kill()


def audit(root: Path, trials_per_cell: int) -> dict:
    """What the stores hold against what the study asked for: lost and duplicated, by kind."""
    expected = list(range(EVAL_EVERY, STEPS + 1, EVAL_EVERY))
    cells = trials(root, "soak")
    problems: list[str] = []
    keys = set()
    for cell, ts in cells.items():
        numbers = sorted(t.number for t in ts)
        if numbers != list(range(trials_per_cell)):
            problems.append(f"{cell}: trial numbers {numbers}")
        problems += [
            f"{cell}/trial={t.number}: {t.state.name} {t.user_attrs}"
            for t in ts
            if t.state != TrialState.COMPLETE
        ]
        keys |= {f"{cell}/trial={t.number}/seed=0" for t in ts}
    client = MlflowClient(f"sqlite:///{root / 'server.db'}")
    exp = client.get_experiment_by_name("soak")
    found = client.search_runs([exp.experiment_id], max_results=50_000)
    parents = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in found if "mlflow.parentRunId" in r.data.tags]
    if len(parents) != 1:
        problems.append(f"{len(parents)} parent runs")
    by_key = Counter(r.data.tags.get("grokscale.run_key") for r in children)
    duplicated = sorted(k for k, n in by_key.items() if n > 1)
    missing = sorted(keys - set(by_key))
    broken = []
    for run in children:
        key = run.data.tags.get("grokscale.run_key")
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_acc"))
        if run.info.status != "FINISHED" or steps != expected:
            broken.append(key)
            problems.append(f"{key}: {run.info.status}, val_acc steps {steps}")
    return {
        "cells": len(cells),
        "trials": sum(len(ts) for ts in cells.values()),
        "child_runs": len(children),
        "lost": len(missing) + len(set(broken)),
        "duplicated": len(duplicated),
        "missing": missing,
        "duplicated_keys": duplicated,
        "problems": problems,
    }


def test_soak_random_kills_lose_and_duplicate_nothing(tmp_path):
    soak = Soak(tmp_path, seed=int(os.environ.get("GROKSCALE_SOAK_SEED", "0")))
    t0 = time.monotonic()
    try:
        soak.run(SOAK_S)
    finally:
        soak.close()
    result = audit(tmp_path, soak.trials_per_cell)
    print(
        f"\nsoak: {time.monotonic() - t0:.0f} s, {soak.rounds} drivers started, faults injected "
        f"{sum(soak.faults.values())} ({dict(soak.faults)}); {result['cells']} cells, {result['trials']} "
        f"trials, {result['child_runs']} MLflow runs; runs lost {result['lost']}, duplicated "
        f"{result['duplicated']}; driver crashes {len(soak.crashes)}"
    )
    for crash in soak.crashes:
        print(f"  {crash}")
    record = {
        "seconds": round(time.monotonic() - t0),
        "soak_s": SOAK_S,
        "drivers_started": soak.rounds,
        "faults": dict(soak.faults),
        "crashes": soak.crashes,
        "overran": soak.overran,
        "loadavg_end": os.getloadavg(),
        **{k: v for k, v in result.items() if k != "problems"},
        "problems": result["problems"][:50],
    }
    # GROKSCALE_SOAK_OUT: a folder for the figures (a 30-minute soak's figures were lost to a
    # folder taken for a file name once), or a file name ending .json.
    out = Path(
        os.environ.get(
            "GROKSCALE_SOAK_OUT", Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "soak"
        )
    )
    if out.suffix != ".json":
        out = out / f"soak_{int(SOAK_S)}s_seed{soak.rng_seed}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1))
    assert not soak.overran, f"the last driver did not finish within {DRAIN_S} s of the last fault"
    assert result["cells"] == 9
    assert not result["problems"] and not result["missing"] and not result["duplicated_keys"], result
    assert not soak.crashes, f"drivers died on their own (logs: crash*.log in {tmp_path}): {soak.crashes}"
