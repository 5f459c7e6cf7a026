"""What a study survives, on real components under real faults: a local Ray (and a
two-node one), an Optuna journal file, an MLflow SQLite store or a real `mlflow server`.

- a worker SIGKILLed 10 times mid-trial: Ray retries it and it resumes from its checkpoint;
- a node SIGKILLed mid-study: its trials move to the head and the study completes;
- the driver SIGKILLed at 3 points: each rerun resumes, nothing finished is redone or duplicated;
- a trial whose loss turns NaN: recorded as diverged, the rest of the study goes on;
- the tracking server unreachable at start (exit 2, nothing started) or gone for ~20 s mid-study
  (every metric point still arrives).

Each fault of `make test` lands at an event the test controls, never after a guessed delay or in
a race with training speed: the study's runs wait at gates the test opens (tests/support/gates.py),
so a node dies, Ray dies or the server goes while the runs it must hit are waiting where the test
wants them. The repeated kills of `make test-all` (`long`) still aim at random moments and run
again when a fault misses (support/races.py).

Processes are found through /proc (the driver's descendants; a node's `ray start --block` tree)
and only those this test started are ever signalled; which trial a worker runs is read from its
gate marker, or (the `long` kills) from its stack with py-spy (installed with ray[default]).
Linux only.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from orchestrator.sweep.driver import PREFETCH_PER_SLOT

from support import cli
from support.cli import GROKSCALE, merged, sqlite_uri
from support.driver import RAY_ENV, runs, start_driver, trials, wait_driver
from support.gates import TESTS, Gates
from support.mlflow_server import MlflowServer
from support.ports import free_port
from support.processes import kill_tree, train_workers, tree, wait_gone
from support.races import Race, retry_races
from support.ray_cluster import cluster_nodes, start_cluster

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

BIN = Path(sys.executable).parent
PY_SPY = shutil.which("py-spy", path=str(BIN)) or shutil.which("py-spy")  # ships with ray[default]
# Runs of 1-5 s: a 1-layer width-16 transformer on (a + b) mod 23.
STUDY = {
    "name": "faults",
    "task": {"name": "modular", "p": 23},
    "model": {"family": "transformer", "n_layer": 1, "n_head": 4, "d_model": 16, "layer_norm": False},
    "train": {"steps": 600, "eval_every": 50, "checkpoint_every": 100, "lr": 3e-3},
    "grid": {"n": [{"d_model": 16}], "d": [0.3, 0.5], "seeds": [0]},
    "search": {
        "sampler": "random",
        "trials_per_cell": 4,
        "space": {"train.weight_decay": {"type": "float", "low": 0.1, "high": 3.0, "log": True}},
    },
    "objectives": [{"metric": "max_val_acc", "direction": "maximize"}],
    "ray": {"num_cpus": 2, "max_retries": 20},
    "pack": {"mode": "off"},  # one Ray task per run: the unit these faults hit (packing: see below)
}
# The same study of the gated stand-in trainer (support/gates.py: a deterministic curve, checkpointed
# as a user trainer must), for the faults whose moment is an event: each run waits before it reports
# step GATE until the test opens its gate, its checkpoint then that of step GATE - EVERY.
EVERY, GATE = 50, 150
GATED = {
    **{k: STUDY[k] for k in ("name", "grid", "search", "objectives", "ray", "pack")},
    "trainer": "support.gates:run",
    "grid": {**STUDY["grid"], "n": [{"width": 1}]},
    "train": {"steps": 300, "eval_every": EVERY},
}
# Runs the driver keeps submitted (orchestrator/sweep/driver.py: a slot each, one queued behind
# each): with every slot's run at its gate, it starts nothing until the test opens one.
IN_FLIGHT = STUDY["ray"]["num_cpus"] * (1 + PREFETCH_PER_SLOT)


# ------------------------------------------------------------------------------ helpers


def write_study(tmp_path: Path, **sections) -> Path:
    """STUDY with each given section merged into its own (a dict) or replacing it."""
    return cli.write_study(tmp_path, merged(STUDY, **sections))


def gated_study(tmp_path: Path, **sections) -> tuple[Path, Gates]:
    """GATED, sections merged as write_study does, with a gate at step GATE in every run."""
    gates = Gates(tmp_path / "runs" / "faults" / "checkpoints", tmp_path / "gates")
    study = merged(GATED, **sections)
    return cli.write_study(tmp_path, merged(study, train=gates.train(GATE))), gates


@pytest.fixture
def gated_trainer(monkeypatch):
    """support.gates importable by the driver, as PYTHONPATH makes a researcher's package; the
    workers get its folder from the run's spec."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([TESTS, *filter(None, [os.environ.get("PYTHONPATH")])]))


FRAME = re.compile(r"^    (\S+) \((.+):(\d+)\)$")
VAR = re.compile(r"^            (\w+): (.*)$")


def trial_of(pid: int) -> str | None:
    """The run key (cell/trial=N/seed=S) of the train_task running in `pid`, read from its
    stack by py-spy: the task's checkpoint_dir argument. py-spy cuts strings at ~128 characters,
    hence the short checkpoint root in these studies. None when no train_task is running."""
    try:
        out = subprocess.run(
            [PY_SPY, "dump", "--locals", "--pid", str(pid)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except subprocess.TimeoutExpired:  # a loaded machine: not seen this time, the caller looks again
        return None
    task = None
    for line in out.stdout.splitlines():
        if m := FRAME.match(line):
            task = {} if m.group(1) == "train_task" else None
        elif task is not None and (m := VAR.match(line)) and m.group(1) == "checkpoint_dir":
            where = re.fullmatch(r'"(.*/trial=\d+/seed=\d+)"', m.group(2))
            return "/".join(Path(where.group(1)).parts[-3:]) if where else None
    return None


def checkpoint(root: Path, key: str) -> tuple[int, bool]:
    """(step, finished) of a run's checkpoint; (0, False) when there is none yet."""
    import torch

    try:
        state = torch.load(root / key / "checkpoint.pt", weights_only=False)
    except (OSError, EOFError, RuntimeError):  # none yet (written by rename, so never half)
        return 0, False
    return int(state["step"]), state.get("finished") is not None


def reported_step(client: MlflowClient, key: str) -> int:
    """The last val_acc step the driver has logged for the run of `key`; 0 if none."""
    exp = client.get_experiment_by_name("faults")
    found = client.search_runs([exp.experiment_id], f"tags.`grokscale.run_key` = '{key}'") if exp else []
    return max(
        (m.step for r in found for m in client.get_metric_history(r.info.run_id, "val_acc")), default=0
    )


@pytest.fixture
def short_dir():
    """A directory with a short path, for checkpoints whose path py-spy shows whole."""
    path = tempfile.mkdtemp(prefix="gsf", dir="/tmp")
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


def check_study_done(
    tmp_path: Path, uri: str, n_cells: int, n_trials: int, steps: int, eval_every: int
) -> dict:
    """Every trial COMPLETE exactly once; one FINISHED MLflow run per (trial, seed), each with
    its whole val_acc curve, no step twice and its final metrics; the parent FINISHED.
    Returns the child runs by run key."""
    cells = trials(tmp_path)
    assert len(cells) == n_cells
    keys = set()
    for cell, ts in cells.items():
        assert sorted(t.number for t in ts) == list(range(n_trials)), (
            f"{cell}: trials {[t.number for t in ts]}"
        )
        assert all(t.state == TrialState.COMPLETE for t in ts), [
            (cell, t.number, t.state.name, t.user_attrs) for t in ts if t.state != TrialState.COMPLETE
        ]
        keys |= {f"{cell}/trial={t.number}/seed=0" for t in ts}
    parents, children = runs(uri)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    run_keys = [r.data.tags["grokscale.run_key"] for r in children]
    assert sorted(run_keys) == sorted(keys), "an MLflow run is missing or duplicated"
    client = MlflowClient(uri)
    expected = list(range(eval_every, steps + 1, eval_every))
    for run in children:
        assert run.info.status == "FINISHED", (run.data.tags["grokscale.run_key"], run.info.status)
        assert run.data.tags["grokscale.status"] == "completed"
        curve = client.get_metric_history(run.info.run_id, "val_acc")
        assert sorted(m.step for m in curve) == expected, (
            run.data.tags["grokscale.run_key"],
            sorted(m.step for m in curve),
        )
        assert run.data.metrics["final.val_acc"] == max(curve, key=lambda m: m.step).value
        assert run.data.metrics["final.steps"] == steps
        assert {"cell", "seed", "param.train.weight_decay", "spec_json"} <= set(run.data.params)
    return dict(zip(run_keys, children))


def test_retry_races_reruns_a_missed_fault_in_fresh_directories_and_nothing_else(tmp_path):
    seen = []

    @retry_races(3)
    def scenario(tmp_path, fail_with=None):
        seen.append(tmp_path)
        if len(seen) < 3:
            raise (fail_with or Race)("missed")

    scenario(tmp_path=tmp_path)
    assert seen == [tmp_path, tmp_path / "r1", tmp_path / "r1" / "r2"] and all(p.is_dir() for p in seen)
    seen.clear()
    with pytest.raises(AssertionError):  # a real failure is never run again
        scenario(tmp_path=tmp_path / "r1", fail_with=AssertionError)
    assert len(seen) == 1


# ------------------------------------------------------------------------------ 1. worker death


@pytest.mark.long  # 1-2 minutes: `make test-all`; make test kills a packed task and a user trainer's worker
@retry_races()
def test_worker_killed_ten_times_resumes_from_checkpoints(tmp_path, short_dir):
    if PY_SPY is None:
        pytest.skip("py-spy (part of ray[default]) is needed to see which trial a worker runs")
    steps, every = 1500, 100
    path = write_study(
        tmp_path, train={"steps": steps, "checkpoint_every": every}, checkpoints=str(short_dir)
    )
    uri = sqlite_uri(tmp_path)
    rng = random.Random(5)
    client = MlflowClient(uri)
    driver = start_driver(path, uri)
    kills: list[dict] = []  # one per SIGKILL that hit a running trial
    try:
        deadline = time.monotonic() + 420
        while len(kills) < 10 and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(rng.uniform(0.3, 2.0))
            # A worker training a trial past its first checkpoint (a fresh worker spends seconds
            # importing torch first; killing it then proves only Ray's retry).
            running = {pid: trial_of(pid) for pid in train_workers(driver.pid)}
            training = sorted(
                pid
                for pid, key in running.items()
                if key and checkpoint(short_dir, key)[0] > 0 and not checkpoint(short_dir, key)[1]
            )
            if not training:
                continue
            victim = rng.choice(training)
            key = running[victim]
            reported = reported_step(client, key)  # a lower bound of its step at the kill
            try:
                os.kill(victim, signal.SIGKILL)
            except ProcessLookupError:
                continue
            wait_gone(victim)
            step, finished = checkpoint(short_dir, key)  # what Ray's retry will resume from
            kills.append({"key": key, "reported": reported, "checkpoint": step, "finished": finished})
        if len(kills) < 10:
            raise Race(f"the study ended after {len(kills)} kills (driver rc {driver.poll()})")
        counts = wait_driver(driver, path, timeout=420)
    finally:
        if driver.poll() is None:
            kill_tree(driver.pid)
    assert counts["completed"] == 8 and counts["failed"] == 0

    by_key = check_study_done(tmp_path, uri, n_cells=2, n_trials=4, steps=steps, eval_every=50)
    for k in kills:  # at each kill, at most one checkpoint interval of work was lost
        assert k["checkpoint"] >= k["reported"] - every, k
    for key in {k["key"] for k in kills}:
        run = by_key[key]
        assert run.data.tags["grokscale.attempts"] == "1"  # Ray's retries, not the driver's
        last = [k for k in kills if k["key"] == key][-1]
        if not last["finished"]:  # else the kill may have come after the result was sent: no retry
            # The tag is the last attempt's: it resumed from the checkpoint the last kill left.
            assert int(run.data.tags["grokscale.resumed_from_step"]) == last["checkpoint"], (key, kills)
    print(
        f"\nkills survived: {len(kills)} over {len({k['key'] for k in kills})} runs; "
        f"(reported step, checkpoint) at each: {[(k['reported'], k['checkpoint']) for k in kills]}"
    )


# ------------------------------------------------------------------------------ 2. node death


@pytest.mark.slow
def test_node_killed_mid_study_its_trials_finish_on_the_head(tmp_path, gated_trainer):
    port = free_port()
    # Health checks every 1 s, dead after 3 misses: the GCS declares the node dead in seconds.
    env = {
        **os.environ,
        **RAY_ENV,
        "RAY_health_check_period_ms": "1000",
        "RAY_health_check_failure_threshold": "3",
    }
    path, gates = gated_study(tmp_path, search={**STUDY["search"], "trials_per_cell": 3})
    steps = GATED["train"]["steps"]
    uri = sqlite_uri(tmp_path)
    head, node, ids = start_cluster(port, env, tmp_path)
    driver = None
    try:
        head_id = next(i for i, sock in ids.items() if sock.startswith(head.temp_dir))
        node_id = next(i for i, sock in ids.items() if sock.startswith(node.temp_dir))
        driver = start_driver(path, uri, "--set", f"ray.address=127.0.0.1:{port}")

        def on_node() -> dict[str, dict]:
            pids = set(tree(node.proc.pid))
            return {k: g for k, g in gates.waiting().items() if g["pid"] in pids}

        # The node dies while a run of it waits at its gate, past its checkpoint of GATE - EVERY.
        waiting = gates.wait_for(
            "a run at its gate on the second node",
            on_node,
            alive=lambda: driver.poll() is None,
            log=tmp_path / "driver.log",
        )
        node.kill()
        t_kill = time.time()
        victims = {k: g["step"] - EVERY for k, g in waiting.items()}  # run key -> the checkpoint it left
        gates.open_all()
        counts = wait_driver(driver, path, timeout=400)
        assert counts["completed"] == 6 and counts["failed"] == 0
        assert len(cluster_nodes(port, 1, env)) == 1
    finally:
        if driver is not None and driver.poll() is None:
            kill_tree(driver.pid)
        node.cleanup()
        head.cleanup()

    by_key = check_study_done(tmp_path, uri, n_cells=2, n_trials=3, steps=steps, eval_every=EVERY)
    for key, step in victims.items():  # finished by the head, from the checkpoints the node left
        run = by_key[key]
        assert run.data.tags["grokscale.node_id"] == head_id != node_id
        assert int(run.data.tags["grokscale.resumed_from_step"]) == step
    assert {r.data.tags["grokscale.node_id"] for r in by_key.values()} <= {head_id, node_id}
    assert all(
        r.data.tags["grokscale.node_id"] == head_id
        for r in by_key.values()
        if r.info.start_time > t_kill * 1000
    ), "a run started after the kill ran on the dead node"
    print(
        f"\nnode killed with {len(victims)} trial(s) on it, checkpoints at {sorted(victims.values())}; "
        f"{sum(r.data.tags['grokscale.node_id'] == node_id for r in by_key.values())} runs had finished there"
    )


@pytest.mark.slow
def test_the_study_s_ray_dying_fails_no_run_and_the_same_command_resumes(tmp_path, gated_trainer):
    """The raylet of the driver's own Ray is SIGKILLed mid-study (as `ray stop --force` from
    another shell, or an out-of-memory kill, does): the runs in flight did not fail, so none is
    recorded as failed (before, every one was: 39 of a real IsoFLOP study's 60 runs). The driver
    exits 1 saying so, and the same command resumes them. It dies once two trials are done and
    two runs wait at their gates (others queued behind them): in flight for certain."""
    path, gates = gated_study(tmp_path)
    uri = sqlite_uri(tmp_path)
    driver = start_driver(path, uri)
    try:

        def wait_for(what, ready):
            return gates.wait_for(
                what, ready, alive=lambda: driver.poll() is None, log=tmp_path / "driver.log"
            )

        first = wait_for("two runs at their gates", lambda: len(gates.waiting()) == 2 and gates.waiting())
        for key, gate in first.items():
            gates.open(key, gate["step"])
        wait_for(
            "two trials complete and the next two runs at their gates",
            lambda: (
                len(gates.waiting()) == 2
                and sum(t.state == TrialState.COMPLETE for ts in trials(tmp_path).values() for t in ts) == 2
            ),
        )
        raylets = [pid for pid, cmd in tree(driver.pid).items() if any("raylet" in part for part in cmd[:1])]
        assert raylets, "no raylet under the driver"
        for pid in raylets:
            os.kill(pid, signal.SIGKILL)
        rc = driver.wait(timeout=300)
    finally:
        kill_tree(driver.pid)
    log = (tmp_path / "driver.log").read_text()
    assert rc == 1 and "this study's Ray died under it" in log, log[-3000:]
    states = [t.state for ts in trials(tmp_path).values() for t in ts]
    assert TrialState.FAIL not in states and TrialState.RUNNING in states, states
    _, children = runs(uri)
    assert not [r for r in children if r.data.tags.get("grokscale.status") == "failed"]
    gates.open_all()
    second = start_driver(path, uri, log="driver2.log")
    out = wait_driver(second, path, timeout=600, log="driver2.log")
    assert out["failed"] == 0 and out["completed"] + out["stopped"] >= 1, out  # what it ran: the rest
    states = [t.state for ts in trials(tmp_path).values() for t in ts]
    assert len(states) == 8 and all(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states)


# ------------------------------------------------------------------------------ 3. driver death


@pytest.mark.long  # 2 minutes: `make test-all`; make test kills a driver once (test_orchestrator.py)
@retry_races()
def test_driver_killed_three_times_then_resumed(tmp_path):
    steps, every = 1500, 100
    path = write_study(tmp_path, train={"steps": steps, "checkpoint_every": every})
    uri = sqlite_uri(tmp_path)
    rng = random.Random(11)
    done: dict[str, tuple] = {}  # run key of a trial COMPLETE at a kill -> what recorded its completion
    in_flight: dict[str, tuple] = {}  # run key of a trial RUNNING at a kill -> (checkpoint step, had a run)
    ckpts = tmp_path / "runs" / "faults" / "checkpoints"
    # Three random points of the study's progress (1 to 6 of its 8 trials complete) plus up to
    # 1 s; each driver is also given time to start training (a checkpoint written since it started).
    for k, target in enumerate(sorted(rng.sample(range(1, 7), 3))):
        driver = start_driver(path, uri)
        try:
            started, deadline = time.time(), time.monotonic() + 300
            while (
                driver.poll() is None
                and time.monotonic() < deadline
                and not (
                    any(f.stat().st_mtime > started for f in ckpts.rglob("checkpoint.pt"))
                    and sum(t.state == TrialState.COMPLETE for ts in trials(tmp_path).values() for t in ts)
                    >= target
                )
            ):
                time.sleep(0.1)
            time.sleep(rng.uniform(0.0, 1.0))
            if driver.poll() is not None:
                raise Race(f"the study finished before kill {k + 1}")
        finally:
            kill_tree(driver.pid)  # the driver, its local Ray and its workers
            driver.wait()
        mlflow_runs = {r.data.tags["grokscale.run_key"]: r for r in runs(uri)[1]}
        for cell, ts in trials(tmp_path).items():
            for t in ts:
                key = f"{cell}/trial={t.number}/seed=0"
                if t.state == TrialState.COMPLETE and key not in done:
                    run = mlflow_runs[key]
                    done[key] = (
                        t.datetime_complete,
                        t.value,
                        run.data.tags["grokscale.attempts"],
                        run.info.end_time,
                    )
                elif t.state == TrialState.RUNNING:
                    in_flight[key] = (checkpoint(ckpts, key)[0], key in mlflow_runs)
    if not (done and in_flight):
        raise Race(f"the kills found no trial complete or none in flight: {done}, {in_flight}")

    counts = wait_driver(start_driver(path, uri), path, timeout=400)
    assert counts["completed"] == 8 - len(done)
    by_key = check_study_done(tmp_path, uri, n_cells=2, n_trials=4, steps=steps, eval_every=50)
    final = {f"{cell}/trial={t.number}/seed=0": t for cell, ts in trials(tmp_path).items() for t in ts}
    for key, recorded in done.items():  # a completed trial is never started or recorded again
        run, trial = by_key[key], final[key]
        now = (trial.datetime_complete, trial.value, run.data.tags["grokscale.attempts"], run.info.end_time)
        assert now == recorded, key
        if key not in in_flight:
            assert recorded[2] == "1"
    resumed = 0
    for key, (step, had_run) in in_flight.items():
        run = by_key[key]
        assert int(run.data.tags["grokscale.attempts"]) >= 1 + had_run  # submitted again, same run...
        assert int(run.data.tags["grokscale.resumed_from_step"]) >= step  # ...from its checkpoint
        resumed += step > 0
    print(
        f"\n3 driver kills; complete at the kills: {len(done)}, in flight: {len(in_flight)} "
        f"({resumed} from a checkpoint)"
    )


# ------------------------------------------------------------------------------ 4. divergence


@pytest.mark.parametrize("pack", ["off", "on"])  # on: both runs train as one batched model
def test_diverged_trial_is_recorded_and_the_study_goes_on(tmp_path, pack):
    path = write_study(
        tmp_path,
        train={"steps": 200, "checkpoint_every": 100},
        pack={"mode": pack},
        grid={**STUDY["grid"], "d": [0.3]},
        # The random sampler's seed 0 draws 1e4 then 3e-3 (the grid sampler would
        # too, but its after_trial calls Study.stop(), which raises under ask/tell).
        search={
            "sampler": "random",
            "seed": 0,
            "trials_per_cell": 2,
            "space": {"train.lr": {"type": "categorical", "choices": [3e-3, 1e4]}},
        },
    )
    uri = sqlite_uri(tmp_path)
    counts = wait_driver(start_driver(path, uri), path, timeout=300)
    # A diverged trial is counted apart from failures, so the run still exits 0.
    assert (counts["completed"], counts["diverged"], counts["failed"]) == (1, 1, 0)
    assert counts.get("packed_tasks", 0) == (pack == "on")

    ((_cell, ts),) = trials(tmp_path).items()
    by_lr = {t.params["train.lr"]: t for t in ts}
    assert sorted(by_lr) == [3e-3, 1e4]
    bad, good = by_lr[1e4], by_lr[3e-3]
    assert good.state == TrialState.COMPLETE and good.user_attrs["status"] == "completed"
    assert bad.state == TrialState.FAIL and bad.user_attrs["status"] == "diverged"
    step = int(re.search(r"at step (\d+)", bad.user_attrs["reason"]).group(1))
    assert 0 < step < 200

    _, children = runs(uri)
    by_trial = {int(r.data.tags["grokscale.trial_number"]): r for r in children}
    run = by_trial[bad.number]
    assert run.info.status == "FAILED"
    assert run.data.tags["grokscale.status"] == "diverged"
    assert f"at step {step}" in run.data.tags["grokscale.reason"]
    assert run.data.metrics["final.steps"] == step
    assert run.data.metrics["final.diverged_step"] == step  # needs summarize() to carry it (see report)
    assert by_trial[good.number].info.status == "FINISHED"


# ------------------------------------------------------------------------------ 5. tracking server


def test_unreachable_tracking_server_stops_before_anything_starts(tmp_path):
    path = write_study(tmp_path)
    t0 = time.monotonic()
    out = subprocess.run(
        [*GROKSCALE, "run", str(path), "--quiet", "--tracking-uri", f"http://127.0.0.1:{free_port()}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 2
    assert "cannot reach the MLflow server at http://127.0.0.1:" in out.stderr
    assert "nothing was started" in out.stderr and "Ray" not in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.yaml"]  # no runs/, no store
    # Fast, not MLflow's default retries (7 with backoff 2: over 4 minutes), even on a loaded
    # machine where starting Python and importing MLflow takes tens of seconds.
    assert time.monotonic() - t0 < 150


def test_tracker_keeps_writes_in_order_while_the_server_is_away(tmp_path, monkeypatch):
    """A Tracker against a closed port: each failed write costs seconds, not minutes, and the
    writes wait in order; a flush within RETRY_S of a failure does not even try (counted)."""
    from orchestrator.store.tracker import HTTP_FAIL_FAST, Tracker
    from orchestrator.study import load_study

    for name, value in HTTP_FAIL_FAST.items():  # what the Tracker sets; restored afterwards
        monkeypatch.setenv(name, value)
    study = load_study(write_study(tmp_path), [f"tracking.uri=http://127.0.0.1:{free_port()}"])
    tracker = Tracker(study)
    sent, tries = [], []

    def unreachable() -> None:
        tries.append(1)
        tracker.client.get_experiment_by_name("faults")

    t0 = time.monotonic()
    tracker._write(unreachable)
    tracker._write(lambda: sent.append(1))
    # Seconds, not MLflow's default retries (over 4 minutes); generous for a loaded machine.
    assert time.monotonic() - t0 < 60 and len(tracker.pending) == 2 and not sent
    # A flush inside the retry window must not try. The window is RETRY_S of wall time, which a
    # loaded machine can spend between two lines: a flush that ended after it proves nothing,
    # so that case is run again (a failed forced flush opens a new window), never failed.
    for _ in range(20):
        assert not tracker.flush(force=True) and not sent  # tries, fails: a new window
        before = len(tries)
        assert not tracker.flush() and not sent
        if time.monotonic() < tracker.queue.retry_at:  # the flush ran inside the window
            assert len(tries) == before, "a flush inside RETRY_S tried the server"
            break
    else:
        pytest.fail("20 flushes in a row ran past RETRY_S: the machine is too slow to tell")
    tracker.queue.pending.popleft()  # as if the server were back: the rest goes, in order
    assert tracker.flush(force=True) and sent == [1]


def test_tracker_drops_a_write_the_store_refuses_and_sends_the_rest(tmp_path):
    """A write MLflow refuses (a param logged again with another value: HTTP 400) would fail on
    every retry; it is dropped, and the writes queued behind it still arrive."""
    from orchestrator.store.tracker import Tracker, config_yaml
    from orchestrator.study import load_study

    study = load_study(write_study(tmp_path), [f"tracking.uri={sqlite_uri(tmp_path)}"])
    tracker = Tracker(study)
    tracker.open(config_yaml(study))
    run_id = tracker.start_run("cell/trial=0/seed=0", "t0", {"lr": 1}, {})
    tracker._write(lambda: tracker.client.log_param(run_id, "lr", 2))
    tracker.log_records(run_id, [{"step": 50, "val_acc": 0.5}, {"step": 100, "val_acc": 0.75}])
    tracker.log_records(run_id, [{"step": 100, "val_acc": 0.0}])  # a retried worker's repeat
    assert tracker.drain(timeout_s=5) and not tracker.pending
    curve = tracker.client.get_metric_history(run_id, "val_acc")
    assert [(m.step, m.value) for m in curve] == [(50, 0.5), (100, 0.75)]
    assert tracker.client.get_run(run_id).data.params["lr"] == "1"


def test_a_sqlite_store_is_in_wal_mode_and_keeps_what_a_killed_driver_wrote(tmp_path):
    """The tracker puts a SQLite store in write-ahead-log mode (each commit synced once, not
    several times). What it wrote before a SIGKILL is there for the next reader, whatever mode
    the file is in: a driver process writes a run, drains, and kills itself at once."""
    study_path = write_study(tmp_path)
    uri = sqlite_uri(tmp_path)
    script = f"""
import os, signal
from orchestrator.store.tracker import Tracker, config_yaml
from orchestrator.study import load_study
study = load_study({str(study_path)!r}, ["tracking.uri={uri}"])
tracker = Tracker(study)
tracker.open(config_yaml(study))
tracker.start_writer()
run_id = tracker.start_run("cell/trial=0/seed=0", "t0", {{"lr": 1}}, {{}})
tracker.log_records(run_id, [{{"step": s, "val_acc": s / 1000}} for s in range(0, 1000, 10)])
assert tracker.drain(timeout_s=60)
print(run_id, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    run_id = done.stdout.split()[-1]
    with contextlib.closing(sqlite3.connect(uri.removeprefix("sqlite:///"))) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    client = MlflowClient(tracking_uri=uri)
    curve = client.get_metric_history(run_id, "val_acc")
    assert [m.step for m in curve] == list(range(0, 1000, 10))
    assert client.get_run(run_id).data.params["lr"] == "1"


def test_a_long_spec_goes_as_an_artifact_through_a_tracking_server(tmp_path):
    """A spec too long for MLflow's param limit is written whole as spec.json, through the
    run's own artifact store (not MlflowClient.log_text, which reads the whole run back first):
    against a server that is its artifact proxy (mlflow-artifacts:/). A spec that fits is only
    the param (no artifact a run). `grokscale reproduce` reads each back whole."""
    from orchestrator.report.reproduce import recorded_spec
    from orchestrator.store.tracker import Tracker, config_yaml
    from orchestrator.study import load_study

    server = MlflowServer(tmp_path)
    server.start()
    try:
        study = load_study(write_study(tmp_path), [f"tracking.uri={server.uri}"])
        tracker = Tracker(study)
        tracker.open(config_yaml(study))
        long = json.dumps({"task": {"name": "modular"}, "seed": 3, "note": "x" * 7000})
        short = json.dumps({"task": {"name": "modular"}, "seed": 4})
        long_id = tracker.start_run("cell/trial=0/seed=0", "t0", {"spec_json": long}, {})
        short_id = tracker.start_run("cell/trial=1/seed=0", "t1", {"spec_json": short}, {})
        assert tracker.drain(timeout_s=60)
        client = MlflowClient(tracking_uri=server.uri)
        assert client.get_run(long_id).info.artifact_uri.startswith("mlflow-artifacts:")
        assert len(client.get_run(long_id).data.params["spec_json"]) == 6000  # cut at MLflow's limit
        got = Path(client.download_artifacts(long_id, "spec.json", str(tmp_path))).read_text()
        assert json.loads(got) == json.loads(long)
        assert client.list_artifacts(short_id) == []
        for run_id, spec in ((long_id, long), (short_id, short)):
            assert recorded_spec(client, client.get_run(run_id)) == spec
    finally:
        server.stop()


def test_a_reopened_run_without_val_acc_gets_no_step_twice(tmp_path):
    """A driver killed and rerun reopens its runs and skips the steps MLflow already has. A user's
    trainer may report no val_acc: the steps come from whatever curve it logged."""
    from orchestrator.store.tracker import Tracker, config_yaml
    from orchestrator.study import load_study

    study = load_study(write_study(tmp_path), [f"tracking.uri={sqlite_uri(tmp_path)}"])
    first = Tracker(study)
    first.open(config_yaml(study))
    run_id = first.start_run("cell/trial=0/seed=0", "t0", {"lr": 1}, {})
    first.log_records(run_id, [{"step": 10, "loss": 2.0}, {"step": 20, "loss": 1.5}])
    assert first.drain(timeout_s=5) and not first.pending
    second = Tracker(study)  # the rerun driver
    second.open(config_yaml(study))
    assert second.start_run("cell/trial=0/seed=0", "t0", {"lr": 1}, {}) == run_id
    second.log_records(
        run_id, [{"step": 10, "loss": 2.0}, {"step": 20, "loss": 1.5}, {"step": 30, "loss": 1.0}]
    )
    assert second.drain(timeout_s=5) and not second.pending
    curve = second.client.get_metric_history(run_id, "loss")
    assert sorted((m.step, m.value) for m in curve) == [(10, 2.0), (20, 1.5), (30, 1.0)]


OUTAGE_MIN_S = 10  # an outage lasts at least this: several failed tries of each write (queue.RETRY_S)


@pytest.mark.slow
def test_tracking_server_dropout_mid_study_loses_nothing(tmp_path, gated_trainer):
    """Two outages of OUTAGE_MIN_S or more, each begun and ended at an event: every slot's run
    waits at its gate when the server goes, and the test lets one of them finish. The driver
    asks Optuna for the next trial only once it has recorded that run's end (its slots were
    full), and the server comes back only once the journal shows that ask.
    Outage 1, while new trials start: the trial asked meanwhile gets its run only once the server
    is back (its run waited). Outage 2, with the last trial still to start, lasting until a run
    has ended and the driver has recorded it: the evaluations it reported meanwhile are buffered,
    and its end is recorded when it ended, not when the server took it."""
    server = MlflowServer(tmp_path, free_port())
    server.start()
    path, gates = gated_study(tmp_path)
    steps = GATED["train"]["steps"]
    n_trials = len(GATED["grid"]["d"]) * GATED["search"]["trials_per_cell"]  # one seed: a run each
    driver = None
    outages = []

    def wait_for(what, ready):
        return gates.wait_for(what, ready, alive=lambda: driver.poll() is None, log=tmp_path / "driver.log")

    def asked() -> list:
        return [t for ts in trials(tmp_path).values() for t in ts]

    opened: set[str] = set()  # the runs let finish

    def settled(n_runs: int) -> dict[str, dict]:
        """The runs waiting at their gates, once every slot's run waits at its gate, the driver
        has made n_runs MLflow runs and the server has every write it made: each run's params,
        each finished run's end and its trial told to Optuna (which waits for its writes), each
        waiting run's evaluations before its gate. Its submitted runs are IN_FLIGHT and none can
        end: it asks and writes nothing more. (With writes still waiting when the server goes, the
        driver could reach its cap on waiting writes, BACKLOG_PER_SLOT, and ask nothing.)"""
        waiting = gates.waiting()
        if len(waiting) != GATED["ray"]["num_cpus"]:  # (its runs' experiment exists then)
            return {}
        children = {r.data.tags["grokscale.run_key"]: r for r in runs(server.uri)[1]}
        if len(children) != n_runs:
            return {}
        told = {
            f"{cell}/trial={t.number}/seed=0"
            for cell, ts in trials(tmp_path).items()
            for t in ts
            if t.state == TrialState.COMPLETE
        }
        client = MlflowClient(server.uri)
        recorded = (
            all("spec_json" in r.data.params for r in children.values())
            and all(k in told and children[k].info.status == "FINISHED" for k in opened)
            and all(
                max(
                    (m.step for m in client.get_metric_history(children[k].info.run_id, "val_acc")), default=0
                )
                == gate["step"] - EVERY
                for k, gate in waiting.items()
            )
        )
        return waiting if recorded else {}

    def settle(n_runs: int) -> dict[str, dict]:
        return wait_for(
            f"{n_runs} runs, every slot's at its gate, every write in the store", lambda: settled(n_runs)
        )

    def let_one_finish(waiting: dict[str, dict]) -> None:
        key, gate = sorted(waiting.items())[0]
        gates.open(key, gate["step"])
        opened.add(key)

    def outage(n_asked: int) -> None:
        """Once settled, the server killed; OUTAGE_MIN_S later one waiting run let finish; the
        server started again once the driver has asked trial n_asked (so recorded that run's
        end). That trial's run waits only for the restart (a create is retried for
        queue.ANSWER_TIMEOUT_S)."""
        waiting = settle(n_asked - 1)
        server.kill()
        down = time.time()
        time.sleep(OUTAGE_MIN_S)  # the length of an outage, not its moment: nothing moves meanwhile
        let_one_finish(waiting)
        wait_for(
            f"the driver asking trial {n_asked} while the server is down", lambda: len(asked()) == n_asked
        )
        server.start()  # same port, same store
        outages.append((down, time.time()))
        print(f"outage {len(outages)}: {time.time() - down:.1f} s")

    try:
        driver = start_driver(path, server.uri)
        outage(IN_FLIGHT + 1)
        for n_runs in range(IN_FLIGHT + 1, n_trials - 1):  # on, until one trial is left to ask
            let_one_finish(settle(n_runs))
        outage(n_trials)
        gates.open_all()
        counts = wait_driver(driver, path, timeout=400)
    finally:
        if driver is not None and driver.poll() is None:
            kill_tree(driver.pid)
        server.kill()
    assert counts["completed"] == n_trials and counts["failed"] == 0

    # Read back from the store itself: nothing lost, nothing doubled.
    uri = f"sqlite:///{tmp_path / 'server.db'}"
    by_key = check_study_done(tmp_path, uri, n_cells=2, n_trials=4, steps=steps, eval_every=EVERY)
    client = MlflowClient(uri)
    (down1, up1), (down2, up2) = outages
    # Outage 1: a trial asked of Optuna before the server was back got its run (start_time is
    # the time of the create_run call that succeeded) only after it was killed: it waited.
    started = {
        f"{cell}/trial={t.number}/seed=0": t.datetime_start.timestamp()
        for cell, ts in trials(tmp_path).items()
        for t in ts
    }
    waited = [k for k, r in by_key.items() if started[k] < up1 and r.info.start_time / 1000 > down1]
    assert waited, "no run waited for the server in outage 1"
    # Outage 2: metrics and completions recorded while the server was away, all delivered.
    stamps = [
        m.timestamp / 1000
        for r in by_key.values()
        for m in client.get_metric_history(r.info.run_id, "val_acc")
    ]
    buffered = sum(down2 < s < up2 for s in stamps)
    completed = [
        r for r in by_key.values() if down2 < r.info.end_time / 1000 < up2
    ]  # when it ended, not sent
    assert buffered > 0 and completed, (buffered, len(completed))
    print(
        f"\nserver down {up1 - down1:.0f} s and {up2 - down2:.0f} s; {len(waited)} run(s) waited to be "
        f"created, {buffered} val_acc points and {len(completed)} completions buffered, all delivered"
    )


CHECKPOINT_GATE = Path(TESTS) / "support" / "checkpoint_gate"  # its sitecustomize gates Checkpoint.save


@pytest.mark.slow
def test_packed_task_killed_resumes_every_run_from_its_checkpoint(tmp_path, monkeypatch):
    """A packed task (4 runs, one Ray task) SIGKILLed once every run has a checkpoint: Ray runs
    the pack again and each run resumes from its own checkpoint, with one whole curve. The pack
    is the built-in trainers' own, so the gate is in their checkpoint (support/checkpoint_gate):
    the task waits before it saves step 200, each run's checkpoint of step 100 saved, and dies there."""
    steps, every, gate = 400, 100, tmp_path / "gate"
    gate.mkdir()
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(CHECKPOINT_GATE), *filter(None, [os.environ.get("PYTHONPATH")])])
    )
    monkeypatch.setenv("GROKSCALE_TEST_CHECKPOINT_GATE", f"{gate}:{2 * every}")
    path = write_study(
        tmp_path,
        train={"steps": steps, "checkpoint_every": every},
        grid={"d": [0.3]},
        pack={"mode": "on", "max_runs": 4},
    )
    uri = sqlite_uri(tmp_path)
    driver = start_driver(path, uri)
    try:
        deadline = time.monotonic() + 600
        while not (gate / "reached").exists():
            assert driver.poll() is None and time.monotonic() < deadline, (
                tmp_path / "driver.log"
            ).read_text()[-3000:]
            time.sleep(0.1)
        waiting = json.loads((gate / "reached").read_text())
        ckpts = tmp_path / "runs" / "faults" / "checkpoints"
        assert [
            checkpoint(ckpts, "/".join(f.parent.relative_to(ckpts).parts))[0]
            for f in ckpts.rglob("checkpoint.pt")
        ] == [every] * 4  # every run's, none past it
        assert tree(driver.pid)[waiting["pid"]][0].startswith("ray::packed_task"), tree(driver.pid)
        os.kill(waiting["pid"], signal.SIGKILL)
        wait_gone(waiting["pid"])
        (gate / "open").touch()
        counts = wait_driver(driver, path, timeout=300)
    finally:
        if driver.poll() is None:
            kill_tree(driver.pid)
    assert counts["completed"] == 4 and counts["packed_tasks"] == 1 and counts["resumed"] == 4

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("faults")
    runs = client.search_runs([exp.experiment_id], "tags.`mlflow.parentRunId` != ''")
    assert len(runs) == 4
    for run in runs:
        assert run.info.status == "FINISHED" and int(run.data.tags["grokscale.resumed_from_step"]) == every
        logged = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
        assert sorted(logged) == list(range(50, steps + 1, 50))  # the whole curve, no step twice
