"""A small study through the real driver on the benchmark's simulated cluster (no Ray): real
Optuna and MLflow stores in tmp_path, runs of a fraction of a second. Launchers built on it add
what a misbehaving trainer or user would (bad metric names, a deleted run)."""

from __future__ import annotations

import sys
from pathlib import Path

from orchestrator.study import Study

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

from simulated_cluster import SimulatedCluster  # noqa: E402


def small_study(
    tmp_path: Path, name: str, trials: int = 3, storage: str | None = None, tracking_uri: str | None = None
) -> Study:
    """One cell, `trials` trials of one seed, 10 evaluations each; the Optuna journal and a SQLite
    MLflow store in tmp_path unless `storage`, `tracking_uri` name others."""
    return Study.model_validate(
        {
            "name": name,
            "task": {"name": "modular", "p": 97},
            "model": {"family": "transformer", "n_layer": 1, "n_head": 4, "d_model": 32, "layer_norm": False},
            "train": {"steps": 1000, "eval_every": 100, "lr": 1e-3, "warmup_steps": 0},
            "grid": {"n": [{"d_model": 32}], "d": [0.5], "seeds": [0]},
            "search": {
                "sampler": "random",
                "trials_per_cell": trials,
                "space": {"train.weight_decay": {"type": "float", "low": 0.03, "high": 3.0, "log": True}},
            },
            "pack": {"mode": "off"},
            "storage": storage,
            "tracking": {"uri": tracking_uri or f"sqlite:///{tmp_path / 'mlflow.db'}"},
            "workdir": str(tmp_path / "runs"),
        }
    )


def cluster(slots: int = 2, run_seconds: float = 0.3):
    """The launcher argument of `Driver`: the simulated cluster."""
    return lambda study, cells: SimulatedCluster(study, cells, slots, run_seconds)


__all__ = ["SimulatedCluster", "cluster", "small_study"]
