"""How long each run trains: the study's one training length, resolved per cell into steps.

A study gives its length in `train:` as exactly one of
  steps   optimizer steps, the trainer's own unit (TrainConfig.steps);
  tokens  examples x tokens per example trained on (for the LM, positions predicted);
  epochs  passes over the cell's unique training examples;
or, with an IsoFLOP grid (`grid.flops`), none of steps and tokens: each cell's FLOP budget is its
length, and `epochs` (default 1) says how often its unique data repeats (D = tokens / epochs).
A language-modelling task with no length trains one pass, `epochs: 1`: tokens trained = D unique
tokens, Hoffmann et al. (2022)'s D. Other tasks keep the trainer's default steps.

`tokens` and `epochs` are the study's words, never the trainer's: the grid turns them into a
concrete `train.steps` per cell (orchestrator/study/grid.py: spec_for), so the schedules (a
cosine cycle's length is `steps`) and the pruning rule's decay clock see the run's real length.
Steps are rounded up, so a run trains at least its length and at most one step more.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestrator.study.errors import format_errors

LENGTH_KEYS = ("steps", "tokens", "epochs")  # study.train keys that give the length
STUDY_ONLY_KEYS = ("tokens", "epochs")  # resolved into train.steps; the trainer never sees them
# A run's spec is first validated with this many steps to read its batch size and model; every
# check on steps (warmup <= steps, WSD's warmup + decay <= steps) passes at a large enough one.
PROBE_STEPS = 2**40


class _Keys(BaseModel):
    """The types of the study-only length keys, so their errors read like the trainer's."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)  # epochs: .inf would never end
    tokens: Annotated[int, Field(gt=0)] | None = None
    epochs: Annotated[float, Field(gt=0)] | None = None


@dataclass(frozen=True)
class Length:
    kind: Literal["steps", "tokens", "epochs", "flops"]
    value: float | None  # tokens or epochs; None for steps (train.steps) and flops (the cell's budget)
    epochs: float = 1.0  # flops: passes over the unique data, D = tokens trained / epochs


def length_keys(train: dict[str, Any]) -> list[str]:
    return [k for k in LENGTH_KEYS if train.get(k) is not None]


def study_length(train: dict[str, Any], isoflop: bool, language_model: bool) -> Length:
    """The study's length, with the defaults: a FLOP budget per cell on an IsoFLOP grid, one pass
    for a language model, the trainer's steps otherwise. Assumes length_problems found none."""
    if isoflop:
        return Length("flops", None, float(train.get("epochs") or 1.0))
    given = length_keys(train)
    if given and given[0] != "steps":
        return Length(given[0], float(train[given[0]]))  # type: ignore[arg-type]
    if not given and language_model:
        return Length("epochs", 1.0)
    return Length("steps", None)


def length_problems(
    train: dict[str, Any], isoflop: bool, language_model: bool, searched: list[str]
) -> list[str]:
    """Why the study's training length is not one well-formed length ([] if it is)."""
    try:
        _Keys.model_validate(train)
    except ValidationError as err:
        return format_errors(err, "train", model=_Keys)
    given = length_keys(train)
    if isoflop:
        problems = [
            f"train.{k}: an IsoFLOP grid (grid.flops) sets each run's length from its FLOP budget; "
            f"remove train.{k} (train.epochs may say how often the unique data repeats)"
            for k in given
            if k != "epochs"
        ]
    elif len(given) > 1:
        problems = [f"train: give one training length (steps, tokens or epochs), got {' and '.join(given)}"]
    else:
        problems = []
    length = study_length(train, isoflop, language_model) if not problems else None
    if length is not None and length.kind != "steps":
        # The length is counted on the cell's data and the spec's batch; a searched length or
        # a searched task field (seq_len, a data size) would count it on data the cell lacks.
        source = f"train.{length.kind}" if length.kind != "flops" else "grid.flops"
        problems += [
            f"search.space.{key}: the run's length comes from {source}, counted on each cell's data; "
            f"a searched {key} would change it: fix it in the study instead"
            for key in searched
            if key.startswith("task.") or key.removeprefix("train.") in LENGTH_KEYS
        ]
    return problems


def examples_per_step(batch_size: int | None, n_examples: int) -> int:
    """Examples in one optimizer step: the batch, or all of them for full batch (as the trainer)."""
    return n_examples if batch_size is None or batch_size >= n_examples else batch_size


def steps_for(
    length: Length,
    *,
    n_examples: int,
    per_step: int,
    tokens_per_example: int,
    flops_per_example: float,
    flops_budget: float | None,
) -> int | None:
    """Steps that train at least `length` (None for a length given in steps: train.steps stands)."""
    if length.kind == "tokens":
        return max(1, math.ceil(length.value / (per_step * tokens_per_example)))
    if length.kind == "epochs":
        return max(1, math.ceil(length.value * n_examples / per_step))
    if length.kind == "flops":
        return max(1, math.ceil(flops_budget / (per_step * flops_per_example)))
    return None


def isoflop_d(flops_budget: float, flops_per_token: float, epochs: float) -> int:
    """An IsoFLOP cell's unique tokens D: the budget buys C / flops_per_token tokens, seen `epochs`
    times each."""
    return max(1, round(flops_budget / flops_per_token / epochs))
