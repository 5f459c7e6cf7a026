"""The tiny studies the real-study tests (and benchmarks) run: modular addition at p = 23, one
transformer of d_model 16 without LayerNorm, weight decay searched, each run about a second; and
a sparse-parity study for grid.refine."""

from __future__ import annotations

from typing import Any


def tiny_study(
    name: str,
    *,
    steps: int = 100,
    eval_every: int = 50,
    d: tuple[float, ...] = (0.3, 0.5),
    trials: int = 2,
    sampler: str | None = "tpe",
    seeds: tuple[int, ...] = (0,),
    num_cpus: int | None = 2,
    **sections: Any,
) -> dict:
    """The study as a dict (write it with support.cli.write_study); `sections` replace whole
    top-level sections (e.g. pack={"mode": "off"})."""
    search: dict[str, Any] = {
        "trials_per_cell": trials,
        "space": {"train.weight_decay": {"type": "float", "low": 0.1, "high": 3.0, "log": True}},
    }
    if sampler is not None:
        search = {"sampler": sampler, **search}
    study: dict[str, Any] = {
        "name": name,
        "task": {"name": "modular", "p": 23},
        "model": {"family": "transformer", "n_layer": 1, "n_head": 4, "d_model": 16, "layer_norm": False},
        "train": {"steps": steps, "eval_every": eval_every, "lr": 3e-3},
        "grid": {"n": [{"d_model": 16}], "d": list(d), "seeds": list(seeds)},
        "search": search,
        "objectives": [{"metric": "max_val_acc", "direction": "maximize"}],
    }
    if num_cpus is not None:
        study["ray"] = {"num_cpus": num_cpus}
    return {**study, **sections}


def refine_parity_study(name: str, max_cells: int) -> dict:
    """A sparse-parity study (8 bits, 3 relevant) whose accuracy jumps between MLP widths 1 and 16
    within 300 steps: grid.refine's bracket to narrow (tests/study/test_refine.py, bench_refine.py)."""
    return {
        "name": name,
        "task": {"name": "sparse_parity", "n_bits": 8, "k": 3, "n_train": 400, "n_val": 400},
        "model": {"family": "mlp", "d_embed": 2, "n_hidden": 1},
        "train": {"steps": 300, "eval_every": 100, "lr": 1.0e-2, "weight_decay": 0.0, "warmup_steps": 0},
        "grid": {
            "n": [{"d_hidden": 1}, {"d_hidden": 16}, {"d_hidden": 64}],
            "d": [400],
            "seeds": [0],
            "refine": {"axis": "n", "max_cells": max_cells, "width_decades": 0.1},
        },
        "search": {"sampler": "random", "trials_per_cell": 1},
        "objectives": [{"metric": "max_val_acc", "direction": "maximize"}],
        "ray": {"num_cpus": 2},
    }
