"""The study end to end on real components: a local Ray with 2 CPUs, an Optuna journal file,
an MLflow SQLite store; then a driver killed with SIGKILL and resumed."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from orchestrator.store import names
from orchestrator.store.hold import HOLD_STUDY_PREFIX
from orchestrator.store.names import StopKind
from orchestrator.study import load_study
from orchestrator.study.grid import build_cells
from orchestrator.sweep.cell import CellSearch
from orchestrator.sweep.search import open_storage
from orchestrator.sweep.stopping import make_stopping
from orchestrator.sweep.unit import run_info

from support import cli
from support.cli import GROKSCALE, grokscale
from support.driver import RAY_ENV
from support.ports import free_port
from support.ray_cluster import start_cluster

TINY_STUDY = {
    "name": "tiny",
    "task": {"name": "modular", "p": 23},
    "model": {"family": "transformer", "n_layer": 1, "n_head": 4, "layer_norm": False},
    "train": {"steps": 200, "eval_every": 50, "lr": 3e-3},
    "grid": {"n": [{"d_model": 16}, {"d_model": 32}], "d": [0.3, 0.5], "seeds": [0]},
    "search": {
        "sampler": "tpe",
        "trials_per_cell": 2,
        "space": {"train.weight_decay": {"type": "float", "low": 0.1, "high": 3.0, "log": True}},
    },
    "objectives": [{"metric": "max_val_acc", "direction": "maximize"}],
    "ray": {"num_cpus": 2},
}


def write_study(tmp_path: Path, **updates) -> Path:
    return cli.write_study(tmp_path, TINY_STUDY, **updates)


def child_runs(tmp_path: Path, study: str = "tiny") -> tuple[list, list]:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name(study)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def optuna_studies(tmp_path: Path, study: str = "tiny") -> dict[str, optuna.Study]:
    from orchestrator.sweep.search import open_storage

    storage = open_storage(str(tmp_path / "runs" / study / "optuna.journal"))
    return {
        s.study_name: optuna.load_study(study_name=s.study_name, storage=storage)
        for s in optuna.get_all_study_summaries(storage)
        if not s.study_name.startswith(HOLD_STUDY_PREFIX)
    }


def test_study_end_to_end(tmp_path):
    path = write_study(tmp_path)
    out = grokscale("run", str(path), "--quiet", "--json", "--no-report", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    counts = json.loads(out.stdout.strip().splitlines()[-1])
    assert counts["completed"] == 8 and counts["failed"] == 0

    parents, children = child_runs(tmp_path)
    assert len(parents) == 1 and len(children) == 8
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert len(parent.data.tags["grokscale.config_hash"]) == 16
    assert "grokscale.version.torch" in parent.data.tags
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert [a.path for a in client.list_artifacts(parent.info.run_id)] == ["study.yaml"]
    for run in children:
        assert run.info.status == "FINISHED" and run.data.tags["grokscale.status"] == "completed"
        assert {
            "cell",
            "n_params",
            "n_train",
            "seed",
            "param.train.weight_decay",
            "optuna_trial_number",
            "spec_json",
        } <= set(run.data.params)
        curve = client.get_metric_history(run.info.run_id, "val_acc")
        assert [m.step for m in curve] == [50, 100, 150, 200]  # the curve, one point per evaluation
        assert run.data.metrics["final.val_acc"] == curve[-1].value

    studies = optuna_studies(tmp_path)
    assert len(studies) == 4
    for s in studies.values():
        trials = s.get_trials()
        assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
        assert all(0 <= t.value <= 1 for t in trials)
    # The searched value MLflow recorded is the one Optuna tried.
    by_key = {r.data.tags["grokscale.run_key"]: r for r in children}
    for name, s in studies.items():
        for t in s.get_trials():
            run = by_key[f"{name.split('/', 1)[1]}/trial={t.number}/seed=0"]
            assert float(run.data.params["param.train.weight_decay"]) == t.params["train.weight_decay"]

    status = grokscale("status", str(path), "--json", cwd=tmp_path)
    rows = json.loads(status.stdout)
    assert status.returncode == 0 and [r["complete"] for r in rows] == [2, 2, 2, 2]
    assert all(r["best_params"] is not None for r in rows)

    # Running it again retrains nothing and duplicates nothing.
    again = grokscale("run", str(path), "--quiet", "--json", "--no-report", cwd=tmp_path)
    assert again.returncode == 0 and json.loads(again.stdout.strip().splitlines()[-1])["completed"] == 0
    assert len(child_runs(tmp_path)[1]) == 8

    # A cell added to the grid is started; the others are left alone.
    grown = grokscale(
        "run", str(path), "--quiet", "--json", "--no-report", "--set", "grid.d=[0.3, 0.5, 0.7]", cwd=tmp_path
    )
    assert grown.returncode == 0 and json.loads(grown.stdout.strip().splitlines()[-1])["completed"] == 4
    assert len(child_runs(tmp_path)[1]) == 12 and len(optuna_studies(tmp_path)) == 6


def test_driver_killed_then_resumed(tmp_path):
    # Runs of about 2 s each, so the kill lands with some trials done and others in flight.
    path = write_study(
        tmp_path, train={**TINY_STUDY["train"], "steps": 600, "eval_every": 50, "checkpoint_every": 100}
    )
    driver = subprocess.Popen(
        [*GROKSCALE, "run", str(path), "--quiet"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    journal = tmp_path / "runs" / "tiny" / "optuna.journal"
    deadline = time.monotonic() + 180
    done_before: set[tuple[str, int]] = set()
    while time.monotonic() < deadline and len(done_before) < 3:
        time.sleep(0.5)
        if journal.exists():
            done_before = {
                (n, t.number)
                for n, s in optuna_studies(tmp_path).items()
                for t in s.get_trials()
                if t.state == optuna.trial.TrialState.COMPLETE
            }
    assert len(done_before) >= 3, "the study never got going"
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started
    driver.wait()
    assert len(done_before) < 8, "the study finished before the kill"

    out = grokscale("run", str(path), "--quiet", "--json", "--no-report", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    studies = optuna_studies(tmp_path)
    trials = {(n, t.number): t for n, s in studies.items() for t in s.get_trials()}
    assert len(trials) == 8 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials.values())
    parents, children = child_runs(tmp_path)
    assert len(parents) == 1 and len(children) == 8  # nothing duplicated
    assert all(r.info.status == "FINISHED" for r in parents + children)  # nothing left RUNNING
    by_key = {r.data.tags["grokscale.run_key"]: r for r in children}
    for name, number in done_before:
        run = by_key[f"{name.split('/', 1)[1]}/trial={number}/seed=0"]
        assert run.data.tags["grokscale.attempts"] == "1"  # a completed trial is never started again
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for run in children:  # resumed runs carry one whole curve, no step logged twice
        # In logging order: a step the killed driver never sent is filled in from the run's
        # history when it ends, after the steps the resumed worker streamed live.
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
        assert sorted(steps) == list(range(50, 601, 50)), steps


def test_validate_reports_and_creates_nothing(tmp_path):
    good = grokscale("validate", str(write_study(tmp_path)), cwd=tmp_path)
    assert good.returncode == 0 and "4 cells x 2 trials x 1 seeds = 8 training runs" in good.stdout
    bad = grokscale(
        "validate", str(write_study(tmp_path, grid={**TINY_STUDY["grid"], "d": [0.3, 1.5]})), cwd=tmp_path
    )
    assert bad.returncode == 2 and "grid.d[1]" in bad.stderr and "(0, 1)" in bad.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.yaml"]


@pytest.mark.slow
def test_two_node_cluster_with_ray_job_submit(tmp_path):
    """A head and a second node on this machine; the study goes in through `ray job submit`.
    The study is one written for a laptop (`ray.num_cpus: 1`, no address): it joins the job's
    cluster, whose size is its own (Ray refuses num_cpus when joining). The cluster's ports are its
    own and stopping it kills only its process trees, so a Ray running beside it (a test on the
    other xdist worker, a study) is left alone."""
    env = {**os.environ, **RAY_ENV}
    port, dashboard = free_port(), free_port()
    logs = tmp_path / "logs"
    logs.mkdir()
    head, node, _ = start_cluster(port, env, logs, dashboard_port=dashboard)
    try:
        write_study(tmp_path, ray={"num_cpus": 1}, train={**TINY_STUDY["train"], "steps": 400})
        submit = [
            Path(sys.executable).parent / "ray",
            "job",
            "submit",
            "--address",
            f"http://127.0.0.1:{dashboard}",
            "--working-dir",
            str(tmp_path),
            "--",
            sys.executable,
            "-m",
            "orchestrator.cli",
            "run",
            "study.yaml",
            "--quiet",
            "--no-report",
            "--set",
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
            "--set",
            f"workdir={tmp_path / 'runs' / 'tiny'}",
        ]
        # The head's job agent starts after its node is up: on a loaded machine, later.
        for _ in range(40):
            job = subprocess.run(submit, env=env, capture_output=True, text=True, check=False, timeout=600)
            if "No available agent to submit job" not in job.stderr:
                break
            time.sleep(3)
        assert job.returncode == 0, (job.stdout + job.stderr)[-3000:]
    finally:
        node.cleanup()
        head.cleanup()
    _, children = child_runs(tmp_path)
    assert len(children) == 8 and all(r.data.tags["grokscale.status"] == "completed" for r in children)
    nodes = {r.data.tags["grokscale.node_id"] for r in children}
    assert len(nodes) == 2, f"trials ran on {len(nodes)} node(s)"


def test_packed_runs_equal_unpacked_runs(tmp_path):
    """`pack.mode: on` trains the runs of a cell as one batched model in one Ray task; every run's
    curves equal those of the same run trained alone (`pack.mode: off`)."""
    finals = {}
    for mode in ("on", "off"):
        where = tmp_path / mode
        where.mkdir()
        path = write_study(
            where,
            pack={"mode": mode, "max_runs": 4},
            grid={**TINY_STUDY["grid"], "n": [{"d_model": 16}], "d": [0.3, 0.5]},
        )
        out = grokscale("run", str(path), "--quiet", "--json", "--no-report", cwd=where)
        assert out.returncode == 0, out.stderr[-3000:]
        counts = json.loads(out.stdout.strip().splitlines()[-1])
        assert counts["completed"] == 4 and counts.get("packed_tasks", 0) == (2 if mode == "on" else 0)
        _, children = child_runs(where)
        client = MlflowClient(f"sqlite:///{where / 'mlflow.db'}")
        finals[mode] = {
            r.data.tags["grokscale.run_key"]: (
                r.data.params["param.train.weight_decay"],
                [m.value for m in client.get_metric_history(r.info.run_id, "val_loss")],
            )
            for r in children
        }
        assert all(len(curve) == 4 for _, curve in finals[mode].values())
    assert finals["on"] == finals["off"]  # same searched values, bitwise the same curves on CPU


def test_grid_sampler_runs_every_grid_point(tmp_path):
    # Optuna's GridSampler stops the study after its last point, which raises under ask/tell.
    path = write_study(
        tmp_path,
        grid={**TINY_STUDY["grid"], "n": [{"d_model": 16}], "d": [0.3]},
        train={**TINY_STUDY["train"], "steps": 50},
        search={
            "sampler": "grid",
            "trials_per_cell": 3,
            "space": {"train.weight_decay": {"type": "categorical", "choices": [0.1, 0.5, 1.0]}},
        },
    )
    out = grokscale("run", str(path), "--quiet", "--json", "--no-report", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    trials = next(iter(optuna_studies(tmp_path).values())).get_trials()
    assert sorted(t.params["train.weight_decay"] for t in trials) == [0.1, 0.5, 1.0]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)


def _pruning_study(where: Path, mode: str, num_cpus: int, pack: str) -> Path:
    """One cell where weight decay decides the phase: high decay generalizes within the budget,
    low decay only memorizes. The QMC sampler draws the same six values in every run."""
    where.mkdir()
    return write_study(
        where,
        name="prune",
        task={"name": "modular", "p": 59},
        train={"steps": 2000, "eval_every": 50, "lr": 3e-3, "success_stop_evals": 2},
        grid={"n": [{"d_model": 32}], "d": [0.5], "seeds": [0]},
        search={
            "sampler": "qmc",
            "trials_per_cell": 6,
            "space": {"train.weight_decay": {"type": "float", "low": 0.01, "high": 10.0, "log": True}},
        },
        objectives=[{"metric": "generalization_step", "direction": "minimize"}],
        # memorized_for 5: memorization comes at step ~200, so the default 10x would
        # prune at the 2000-step budget, saving nothing to check
        prune={"mode": mode, "memorized_for": 5},
        pack={"mode": pack, "max_runs": 2},
        ray={"num_cpus": num_cpus},
    )


def _pruning_outcome(where: Path) -> tuple[dict, dict]:
    """Per trial number: (weight decay, Optuna state, value), and the MLflow runs' rows."""
    from orchestrator.analysis.grokking import grokking_phases
    from orchestrator.store.results import load_results

    trials = next(iter(optuna_studies(where, "prune").values())).get_trials()
    runs = grokking_phases(load_results(f"sqlite:///{where / 'mlflow.db'}", "prune", with_curves=False).runs)
    return (
        {t.number: (t.params["train.weight_decay"], t.state, t.value) for t in trials},
        {int(r.trial_number): r for r in runs.itertuples()},
    )


def stop_kinds(where: Path, pruned: list[int]) -> set[str]:
    """The stop kinds the pruned trials' runs carry, asserting MLflow's tag and Optuna's attribute agree."""
    trials = {t.number: t for t in next(iter(optuna_studies(where, "prune").values())).get_trials()}
    _, children = child_runs(where, "prune")
    by_trial = {int(r.data.tags[names.TAG_TRIAL_NUMBER]): r for r in children}
    kinds = set()
    for n in pruned:
        kind = trials[n].user_attrs[names.TRIAL_STOP_KIND]
        assert by_trial[n].data.tags[names.TAG_STOP_KIND] == kind, n
        kinds.add(kind)
    unpruned = [r for n, r in by_trial.items() if n not in pruned]
    assert not any(names.TAG_STOP_KIND in r.data.tags for r in unpruned)
    return kinds


@pytest.mark.long  # 4-9 minutes: `make test-all`; pruning exactness is also what bench_sweep_compute checks
def test_pruning_keeps_every_answer_of_the_unpruned_study(tmp_path, monkeypatch):
    """`prune.mode: objective` never changes a cell's best; `prune.mode: phase` never stops a run
    that would have generalized within its budget, and every run keeps its phase. Both train
    fewer steps than the same study unpruned. The objective run packs its runs in pairs, so a
    pruned run also stops inside a pack while its partner trains on."""
    outcome = {}
    # 1 CPU for phase: the trials run in QMC order, so what is known when is the same every time.
    for mode, cpus, pack in (("off", 2, "off"), ("objective", 2, "on"), ("phase", 1, "off")):
        where = tmp_path / mode
        # Six runs of 2000 steps on one or two CPUs: minutes on a loaded CI machine.
        out = grokscale(
            "run",
            str(_pruning_study(where, mode, cpus, pack)),
            "--quiet",
            "--json",
            "--no-report",
            cwd=where,
            timeout=900,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        outcome[mode] = _pruning_outcome(where)
    trials, runs = outcome["off"]
    done = optuna.trial.TrialState.COMPLETE
    pruned_state = optuna.trial.TrialState.PRUNED
    assert all(state == done for _, state, _ in trials.values())
    best = min(v for _, _, v in trials.values())
    assert best < 2000, "no trial generalized: the test would prove nothing"
    steps_off = sum(r.steps for r in runs.values())

    # objective: the same best; every pruned trial scored no better than it unpruned.
    o_trials, o_runs = outcome["objective"]
    assert [wd for wd, _, _ in o_trials.values()] == [wd for wd, _, _ in trials.values()]
    assert min(v for _, s, v in o_trials.values() if s == done) == best
    pruned = [n for n, (_, s, _) in o_trials.items() if s == pruned_state]
    assert pruned, "nothing was pruned"
    for n in pruned:
        assert trials[n][2] >= best
        assert o_runs[n].status == "stopped" and o_runs[n].reason.startswith("pruned: no generalization_step")
    assert stop_kinds(tmp_path / "objective", pruned) == {StopKind.OBJECTIVE.value}
    # Each stops at or past the bound its reason names; trials asked once a best was known carry
    # their bound from launch and stop right at it.
    bounds = [
        tuple(map(int, re.search(r"by step (\d+).*stopped at step (\d+)", o_runs[n].reason).groups()))
        for n in pruned
    ]
    assert all(stop >= bound for bound, stop in bounds) and any(stop == bound for bound, stop in bounds)
    assert sum(r.steps for r in o_runs.values()) < steps_off

    # phase: each run's phase and generalization step as unpruned; the pruned ones only memorized.
    p_trials, p_runs = outcome["phase"]
    pruned = [n for n, (_, s, _) in p_trials.items() if s == pruned_state]
    assert pruned, "nothing was pruned"
    for n, run in p_runs.items():
        assert run.phase == runs[n].phase
        assert run.generalization_step == runs[n].generalization_step or (
            math.isnan(run.generalization_step) and math.isnan(runs[n].generalization_step)
        )
    assert stop_kinds(tmp_path / "phase", pruned) == {StopKind.DECAY_CLOCK.value}
    for n in pruned:
        assert runs[n].phase == "memorization" and p_runs[n].reason.startswith("pruned: memorized")
        # Stopped at its first evaluation 5x past memorization: the rule reached it in time.
        mem = p_runs[n].memorization_step
        assert p_runs[n].steps == math.ceil(5 * mem / 50) * 50 < runs[n].steps
    # The QMC sampler ignores results: the cell's trials were asked at once and ran fastest decay first.
    where = tmp_path / "phase"
    client = MlflowClient(f"sqlite:///{where / 'mlflow.db'}")
    started = sorted(p_runs, key=lambda n: client.get_run(p_runs[n].run_id).info.start_time)
    decays = [p_trials[n][0] for n in started]
    assert decays == sorted(decays, reverse=True), decays
    # What the runs taught is kept in Optuna: a driver resuming the study would prune the same runs.
    monkeypatch.chdir(where)
    study = load_study(where / "study.yaml")
    cells, storage = build_cells(study), open_storage(study.storage_url)
    resumed = make_stopping(study)
    for i, c in enumerate(cells):
        CellSearch(study, c, i, storage).teach(resumed)
    for n in pruned:
        rules = resumed.rules(run_info(study, cells[0], n, {"train.weight_decay": p_trials[n][0]}, 0))
        assert any(r.kind == StopKind.DECAY_CLOCK for r in rules), n
    # A pruned run is reproduced bit for bit up to the step it was stopped at.
    again = grokscale(
        "reproduce", p_runs[pruned[0]].run_id, "--tracking-uri", f"sqlite:///{where / 'mlflow.db'}", cwd=where
    )
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-2000:]


def test_a_resumed_cell_draws_new_values(tmp_path):
    """A seeded TPE sampler starts afresh in every driver; a cell resumed with more trials must not
    draw its first trials' values again (it did: 5 of 16 trials of a resumed search repeated)."""
    small = {**TINY_STUDY["grid"], "n": [{"d_model": 16}], "d": [0.3]}
    path = write_study(tmp_path, grid=small, train={**TINY_STUDY["train"], "steps": 50})
    for trials in (2, 4):
        out = grokscale(
            "run",
            str(path),
            "--quiet",
            "--json",
            "--no-report",
            "--set",
            f"search.trials_per_cell={trials}",
            cwd=tmp_path,
        )
        assert out.returncode == 0, out.stderr[-3000:]
    values = [
        t.params["train.weight_decay"] for t in next(iter(optuna_studies(tmp_path).values())).get_trials()
    ]
    assert len(values) == 4 and len(set(values)) == 4, values
