"""A study of the researcher's own trainer (`trainer:`, trainers/protocol.py): what is checked
before anything starts, and each run's spec.

The task, model and train sections are the function's own and pass through as given; grokscale
reads only the budget and thresholds of `train:` (trainers.protocol.BUDGET_KEYS), and the grid's
N entries go to the function as written (it reports the N it built).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from orchestrator.study.errors import format_errors
from orchestrator.study.length import LENGTH_KEYS
from orchestrator.study.schema import Study
from trainers.overrides import OverrideError, apply_overrides
from trainers.protocol import RunConfig, TrainerError, UserSpec, grokscale_train, load_trainer, package_root
from trainers.spec import TrainConfig

SECTIONS = ("task", "model", "train")


def _budget_problems(study: Study) -> list[str]:
    """The budget keys as grokscale reads them, fixed and under each searched value's ends."""
    problems = _train_problems(study, {})
    if problems:
        return problems
    for key, p in study.search.space.items():
        if key.startswith("train.") and key.removeprefix("train.") in TrainConfig.model_fields:
            for v in [p.low, p.high] if p.type != "categorical" else p.choices:
                problems += [
                    f"search.space.{key}: value {v!r} is not allowed: {line}"
                    for line in _train_problems(study, {key: v})
                ]
    return problems


def _train_problems(study: Study, params: dict[str, Any]) -> list[str]:
    try:
        grokscale_train(sections(study, params)["train"])
    except ValidationError as err:
        return format_errors(err, "train", model=TrainConfig)
    except OverrideError as err:
        return [str(err)]
    return []


def own_trainer_problems(study: Study) -> list[str]:
    """Why this study of a user trainer cannot run ([] when it can): the function imports and
    takes (config, report, checkpoint_dir), and nothing asks for what only the built-in
    trainers do."""
    problems = []
    try:
        load_trainer(study.trainer or "")
    except TrainerError as err:
        problems.append(f"trainer: {err}")
    if study.pack.mode != "off":
        problems.append(
            "pack.mode: packing trains several runs of the built-in models as one batched model; "
            "a study of your own trainer runs one call per run: remove pack or set pack.mode: off"
        )
    if study.isoflop:
        problems.append(
            "grid.flops: an IsoFLOP grid derives each cell's D from the built-in models' FLOPs; "
            "with your own trainer give grid.d"
        )
    if study.prune.mode == "phase":
        problems.append(
            "prune.mode: 'phase' models the built-in optimizer's weight-decay clock; with your own "
            "trainer use 'objective' or 'off'"
        )
    problems += [
        f"train.{k}: your own trainer's length is train.steps (its RunConfig.steps); remove train.{k}"
        for k in LENGTH_KEYS
        if k != "steps" and study.train.get(k) is not None
    ]
    return problems + _budget_problems(study)


def sections(study: Study, params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The study's task, model and train sections with the searched values applied; a model
    section the study did not write is empty (not the built-in default)."""
    data = {
        "task": dict(study.task),
        "model": dict(study.model) if "model" in study.model_fields_set else {},
        "train": dict(study.train),
    }
    return apply_overrides(data, [f"{k}={json.dumps(v)}" for k, v in params.items()])


def user_spec(
    study: Study,
    n_entry: int | dict[str, Any],
    d_value: float,
    params: dict[str, Any],
    seed: int,
    device: str = "cpu",
) -> UserSpec:
    """One run of the user's trainer: its RunConfig and grokscale's reading of its budget."""
    parts = sections(study, params)
    train = grokscale_train(parts["train"])
    config = RunConfig(
        n=n_entry,
        d=d_value,
        seed=seed,
        steps=train.steps,
        eval_every=train.eval_every,
        params=dict(params),
        device=device,
        **parts,
    )
    root = package_root(study.trainer or "")
    return UserSpec(
        trainer=study.trainer, sys_path=[root] if root else [], config=config.to_dict(), train=train
    )
