"""What the study layer needs to know about each trainer task: read from the task schemas.

The built-in tasks are trainers.tasks.builtin_tasks() (one module each in trainers/tasks/), so a
task added there is known here without an edit: its name, which of its fields the grid's D axis
may set, and whether it reports the sequence metrics (per-token accuracy, answer log-likelihood),
and its `chance_level` for the report (task_settings). A task of
the user's, named by import path (`task.name: mypkg.tasks:Copying`), is known once imported: its
class declares the same.

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
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from trainers.own_code import OwnCodeError, is_import_path, own_class
from trainers.tasks import builtin_tasks


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


def kind_of(cls, name: str) -> TaskKind:
    """The TaskKind of one task schema class (a pydantic model) under the name a study gives it."""
    d_fields = tuple(getattr(cls, "d_fields", ()))
    counts = frozenset(f for f in d_fields if _is_int(cls.model_fields[f].annotation))
    return TaskKind(
        name,
        d_fields,
        counts,
        bool(getattr(cls, "sequence_metrics", False)),
        bool(getattr(cls, "language_model", False)),
    )


def kinds_of(classes) -> dict[str, TaskKind]:
    """The TaskKind of each task schema class (a pydantic model whose `name` default names it)."""
    return {
        cls.model_fields["name"].default: kind_of(cls, cls.model_fields["name"].default) for cls in classes
    }


class TaskKinds(dict):
    """The built-in tasks by name; an import path (`package.module:Class`) is imported and checked
    on lookup (trainers/own_code.py: own_class), and is then known like a built-in. Listing the kinds
    (keys, values) gives the built-ins only."""

    def __missing__(self, name: str) -> TaskKind:
        if not isinstance(name, str) or not is_import_path(name):
            raise KeyError(name)
        return _own_kind(name)  # OwnCodeError (a ValueError) when it cannot be used

    def get(self, name: Any, default: Any = None) -> Any:
        try:
            return self[name]
        except (KeyError, TypeError, ValueError):  # TypeError: a name that is no string (a list)
            return default

    def __contains__(self, name: object) -> bool:
        return self.get(name) is not None


@cache
def _own_kind(name: str) -> TaskKind:
    return kind_of(own_class(name, "task"), name)


@cache
def task_kinds() -> TaskKinds:
    """Every built-in trainer task by name, in the order of trainers.tasks.builtin_tasks(); import
    paths resolve on lookup."""
    return TaskKinds(kinds_of(builtin_tasks().values()))


def task_settings(task: dict[str, Any]) -> BaseModel | None:
    """A study's task section validated by its class, built-in or the user's; None when it names
    no task that can be used or does not validate."""
    name = task.get("name")
    try:
        if is_import_path(name):
            return own_class(name, "task").model_validate({k: v for k, v in task.items() if k != "name"})
        cls = builtin_tasks().get(name)
        return None if cls is None else cls.model_validate(task)
    except (OwnCodeError, ValidationError):
        return None


def import_problems(task: dict[str, Any], model: dict[str, Any]) -> list[str]:
    """Why a task or model named by import path cannot be used ([] if each imports and keeps its
    protocol, trainers/own_code.py), each naming its field: checked before anything else of the study."""
    problems = []
    for section, key, kind in ((task, "name", "task"), (model, "family", "model")):
        ref = section.get(key)
        if is_import_path(ref):
            try:
                own_class(ref, kind)
            except OwnCodeError as err:
                problems.append(f"{'task' if kind == 'task' else 'model'}.{key}: {err}")
    return problems
