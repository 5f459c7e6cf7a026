"""The tiny study the real-study tests run: modular addition at p = 23, one transformer of
d_model 16 without LayerNorm, weight decay searched; each run takes about a second."""

from __future__ import annotations

from typing import Any


def tiny_study(name: str, *, steps: int = 100, eval_every: int = 50, d: tuple[float, ...] = (0.3, 0.5),
               trials: int = 2, sampler: str | None = "tpe", seeds: tuple[int, ...] = (0,),
               num_cpus: int | None = 2, **sections: Any) -> dict:
    """The study as a dict (write it with support.cli.write_study); `sections` replace whole
    top-level sections (e.g. pack={"mode": "off"})."""
    search: dict[str, Any] = {"trials_per_cell": trials,
                              "space": {"train.weight_decay": {"type": "float", "low": 0.1, "high": 3.0,
                                                               "log": True}}}
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
