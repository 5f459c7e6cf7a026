"""What the study layer needs to know about each trainer task: read from the task schemas.

The tasks are the members of `TrainSpec.task`'s union (trainers/spec.py), so a task added there
is known here without an edit: its name, which of its fields the grid's D axis may set, and
whether it reports the sequence metrics (per-token accuracy, answer log-likelihood).

A task class declares these itself as class attributes, `d_fields: ClassVar[tuple[str, ...]]`
(the first is the default D), `sequence_metrics: ClassVar[bool]` and `language_model:
ClassVar[bool]` (its D counts tokens, so a run's default length is one pass over them and an
IsoFLOP grid may derive D from a compute budget); a task without `d_fields` has no D axis to
sweep.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from types import UnionType
from typing import Annotated, Union, get_args, get_origin

from trainers.spec import TrainSpec


@dataclass(frozen=True)
class TaskKind:
    name: str
    d_fields: tuple[str, ...]  # fields the grid's D may set; the first is the default
    counts: frozenset[str]  # the D fields that count examples (or tokens); the others are fractions
    sequence_metrics: bool
    language_model: bool = False  # one pass by default; IsoFLOP grids allowed

    @property
    def d_field(self) -> str:
        return self.d_fields[0]


def _is_int(annotation) -> bool:
    """int, PositiveInt, `PositiveInt | None`: a count."""
    if annotation is int:
        return True
    if get_origin(annotation) is Annotated:
        return _is_int(get_args(annotation)[0])
    if get_origin(annotation) in (Union, UnionType):
        return any(_is_int(a) for a in get_args(annotation))
    return False


def kinds_of(classes) -> dict[str, TaskKind]:
    """The TaskKind of each task schema class (a pydantic model whose `name` default names it)."""
    kinds = {}
    for cls in classes:
        name = cls.model_fields["name"].default
        d_fields = tuple(getattr(cls, "d_fields", ()))
        counts = frozenset(f for f in d_fields if _is_int(cls.model_fields[f].annotation))
        kinds[name] = TaskKind(name, d_fields, counts, bool(getattr(cls, "sequence_metrics", False)),
                               bool(getattr(cls, "language_model", False)))
    return kinds


@cache
def task_kinds() -> dict[str, TaskKind]:
    """Every trainer task by name, in the order of TrainSpec's task union."""
    return kinds_of(get_args(TrainSpec.model_fields["task"].annotation))
