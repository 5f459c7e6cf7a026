"""The driver scale benchmark's simulated cluster beside real stores: a small study through the
real driver (Optuna ask/tell on a journal file, an MLflow SQLite store, phase pruning), fed by
benchmarks/simulated_cluster.py. What the benchmark counts must be what the stores hold: every
run recorded once, its curve whole up to where it stopped, and Optuna's trials matching."""

from __future__ import annotations

import sys
from pathlib import Path

import optuna
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from orchestrator.store import names
from orchestrator.store.hold import HOLD_STUDY_PREFIX
from orchestrator.study import Study
from orchestrator.study.grid import build_cells
from orchestrator.sweep.driver import Driver
from orchestrator.sweep.search import open_storage

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

from simulated_cluster import GrokCurve, SimulatedCluster  # noqa: E402

RUNS, SLOTS = 48, 4  # 3 cells x 8 trials x 2 seeds, on 4 slots: the fastest decay teaches the rest


def make_study(tmp_path: Path) -> Study:
    return Study.model_validate(
        {
            "name": "simscale",
            "task": {"name": "modular", "p": 97},
            "model": {"family": "transformer", "n_layer": 1, "n_head": 4, "d_model": 32, "layer_norm": False},
            "train": {"steps": 10_000, "eval_every": 100, "lr": 1e-3, "warmup_steps": 0},
            "grid": {"n": [{"d_model": 32}], "d": [0.3, 0.5, 0.7], "seeds": [0, 1]},
            "search": {
                "sampler": "random",
                "trials_per_cell": RUNS // 6,  # 3 cells x 2 seeds
                "space": {"train.weight_decay": {"type": "float", "low": 0.03, "high": 3.0, "log": True}},
            },
            "prune": {"mode": "phase"},
            "pack": {"mode": "off"},
            "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
            "workdir": str(tmp_path / "runs"),
        }
    )


def test_curves_are_grokking_shaped():
    """Strong-enough decay groks within the budget, weak decay only memorizes, decay too strong
    to fit never memorizes; the losses go with the accuracies."""
    base = dict(
        lr=1e-3,
        steps=10_000,
        eval_every=100,
        train_threshold=0.99,
        val_threshold=0.95,
        d_value=0.5,
        p=97,
        seed=0,
        n_params=30_000,
        n_train=4704,
    )
    grok = GrokCurve(weight_decay=1.0, **base).records()
    weak = GrokCurve(weight_decay=0.05, **base).records()
    strong = GrokCurve(weight_decay=2.9, **base).records()
    assert len(grok) == 100 and list(grok[0]) == [
        "step",
        "train_loss",
        "train_acc",
        "val_loss",
        "val_acc",
        "weight_norm",
        "lr",
        "examples",
        "tokens",
        "epochs",
        "flops",
    ]
    mem = next(r["step"] for r in grok if r["train_acc"] >= 0.99)
    gen = next(r["step"] for r in grok if r["val_acc"] >= 0.95)
    assert mem < 1000 < gen < 10_000  # memorized early, generalized late
    assert grok[-1]["train_loss"] < 1e-4 and grok[-1]["val_loss"] < 0.01
    assert max(r["val_acc"] for r in weak) < 0.2 and weak[-1]["train_acc"] > 0.99
    assert weak[-1]["val_loss"] > weak[0]["val_loss"]  # overfitting: validation loss rises
    assert max(r["train_acc"] for r in strong) < 0.9 and min(r["train_loss"] for r in strong) > 0.1


def test_simulated_study_through_the_real_driver_matches_its_stores(tmp_path):
    study = make_study(tmp_path)
    cells = build_cells(study)
    driver = Driver(study, cells, show=False, launcher=lambda s, c: SimulatedCluster(s, c, SLOTS, 0.3))
    stats = driver.run()
    n_runs = len(cells) * study.search.trials_per_cell * len(study.grid.seeds)
    assert stats.completed + stats.stopped == n_runs and stats.failed == 0
    assert stats.stopped > 0, "phase pruning stopped nothing: the test would not cover it"
    delays = driver.launcher.cluster_stats["delays_s"]
    assert len(delays) >= n_runs - SLOTS  # every slot's next start was timed

    client = MlflowClient(study.tracking.uri)
    exp = client.get_experiment_by_name("simscale")
    runs = client.search_runs(
        [exp.experiment_id], f"tags.`{names.PARENT_RUN}` = '{stats.parent_run_id}'", max_results=1000
    )
    keys = [r.data.tags[names.TAG_RUN_KEY] for r in runs]
    assert len(keys) == n_runs == len(set(keys))  # every run recorded once
    for r in runs:
        status = r.data.tags[names.TAG_STATUS]
        assert (status, r.info.status) in (
            ("completed", "FINISHED"),
            ("stopped", "FAILED"),
        )  # tracker.finish_run
        steps = int(r.data.metrics["final_step"]) if "final_step" in r.data.metrics else None
        history = client.get_metric_history(r.info.run_id, "val_acc")
        logged = sorted(m.step for m in history)
        last = logged[-1]
        assert logged == list(range(100, last + 1, 100)), r.data.tags[names.TAG_RUN_KEY]  # whole, once each
        assert steps in (None, last)
        if r.data.tags[names.TAG_STATUS] == "completed":
            assert last == 10_000
        else:
            reason = r.data.tags[names.TAG_REASON]
            assert reason.startswith("pruned:") and reason.endswith(f"(stopped at step {last})")
        assert len(client.get_metric_history(r.info.run_id, "train_loss")) == len(logged)

    storage = open_storage(study.storage_url)
    trials = [
        t
        for s in optuna.get_all_study_summaries(storage)
        if not s.study_name.startswith(HOLD_STUDY_PREFIX)
        for t in optuna.load_study(study_name=s.study_name, storage=storage).get_trials()
    ]
    assert len(trials) == n_runs // len(study.grid.seeds)
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    pruned = sum(t.state == TrialState.PRUNED for t in trials)
    assert 0 < pruned <= stats.stopped
    # Each trial names its runs, and they are the runs MLflow holds.
    run_ids = {r.info.run_id for r in runs}
    assert {t.user_attrs[names.trial_run_id(s)] for t in trials for s in study.grid.seeds} == run_ids
