"""Your own task and model classes, named by import path and checked against their protocol.

Your own task and model, by import path (`task: {name: mypkg.tasks:Copying, ...}`,
`model: {family: mypkg.models:MyNet, ...}`); the other keys of the section are the class's fields.

A task class must be
  - a pydantic model (`BaseModel`) of its settings, with no field `name` (that is the import path);
  - `d_fields: ClassVar[tuple[str, ...]]`: its fields the grid's D may set, the first the default;
    an int field counts examples (or tokens), a float one is a fraction;
  - `make(self, seed: int) -> trainers.tasks.TaskData`: train and validation tensors from the
    seed (x: (N, T) int64 tokens; y: (N,) for target "last", (N, T) with -100 where nothing is
    scored for "sequence"), `vocab_size`, `n_out`, `accuracy` ("exact" or "token") and `n_train`;
  - optionally `sequence_metrics: ClassVar[bool]` (it reports per-token accuracy and answer
    log-likelihood), `language_model: ClassVar[bool]` (D counts tokens: one pass by default) and
    a property `chance_level: float | None`, the accuracy of guessing (the report's baseline).
A model class must be
  - a `torch.nn.Module` whose nested `Config` is a pydantic model of its settings (no `family`);
  - built as `MyNet(config, vocab_size, n_out, seq_len)`, as the built-in models are;
  - called as `model(x, last_only=False)`: x (B, T) int64 -> logits (B, T, n_out), or (B, n_out)
    at the last position when last_only (target "last");
  - counted by `models.count_params`: every nn.Embedding and the modules named tok_emb, pos_emb,
    unembed are "embedding", the rest "non_embedding". It keeps its own initialization (built
    after `torch.manual_seed(seed)`); `train.init_scale` multiplies it. Its FLOPs are Kaplan et
    al.'s 2N per position forward, N its nn.Linear weights (trainers/flops.py).
Each is imported and checked when the spec is validated: a failed import, a missing attribute or
a wrong signature is an error naming `task.name` or `model.family`.

The built-in tasks (trainers/tasks/) and models (trainers/models.py: MODELS) keep the same
protocol, checked by the same functions (`task_problem`, `model_problem`); they differ only in
declaring their short name, a `name` (`family`) literal field, where yours is its import path.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, model_serializer, model_validator

from trainers.fields import invalid
from trainers.import_path import ImportPathError, import_object, is_import_path

__all__ = [
    "OwnCodeError",
    "OwnModel",
    "OwnTask",
    "is_import_path",
    "model_problem",
    "own_class",
    "task_problem",
]


class OwnCodeError(ValueError):
    """A task or model class named by import path that cannot be used; the message says why."""


def _signature_problem(fn: Any, args: tuple, kwargs: dict, wanted: str) -> str | None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None  # no signature to read (a builtin): the call will tell
    try:
        sig.bind(*args, **kwargs)
    except TypeError:
        return f"must accept {wanted}; it has the signature {sig}"
    return None


def task_problem(cls: Any, builtin: bool = False) -> str | None:
    """Why `cls` is not a task class (module docstring), None if it is. A built-in one declares
    its `name`; yours must not (its name is the import path)."""
    if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
        return (
            "a task must be a pydantic model class (BaseModel: its fields are the task's settings), "
            f"got {cls!r}"
        )
    if builtin and "name" not in cls.model_fields:
        return "a built-in task class needs a field name: Literal['<its name>'] = '<its name>'"
    if not builtin and "name" in cls.model_fields:
        return "a task class must not declare a field 'name': task.name is its import path"
    if not callable(getattr(cls, "make", None)):
        return "a task class needs a method make(self, seed) -> trainers.tasks.TaskData"
    problem = _signature_problem(cls.make, (None, 0), {}, "(self, seed)")
    if problem:
        return f"make {problem}"
    d_fields = getattr(cls, "d_fields", None)
    if not (isinstance(d_fields, (tuple, list)) and d_fields and all(isinstance(f, str) for f in d_fields)):
        return (
            "a task class needs d_fields: ClassVar[tuple[str, ...]], the fields the grid's D may set "
            f"(e.g. ('n_train',)), got {d_fields!r}"
        )
    unknown = [f for f in d_fields if f not in cls.model_fields]
    if unknown:
        return f"d_fields names {unknown}, not fields of the class; its fields: {sorted(cls.model_fields)}"
    for flag in ("sequence_metrics", "language_model"):
        if not isinstance(getattr(cls, flag, False), bool):
            return f"{flag} must be a bool ClassVar, got {getattr(cls, flag)!r}"
    return None


def model_problem(cls: Any, builtin: bool = False) -> str | None:
    """Why `cls` is not a model class (module docstring), None if it is. A built-in one's Config
    declares its `family`; yours must not (its family is the import path)."""
    from torch import nn  # lazily: the rest of this module is plain pydantic

    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        return f"a model must be a torch.nn.Module class, got {cls!r}"
    config = getattr(cls, "Config", None)
    if not (isinstance(config, type) and issubclass(config, BaseModel)):
        return "a model class needs a nested Config, a pydantic model (BaseModel) of its settings"
    if builtin and "family" not in config.model_fields:
        return "a built-in model's Config needs a field family: Literal['<its family>']"
    if not builtin and "family" in config.model_fields:
        return "its Config must not declare a field 'family': model.family is its import path"
    problem = _signature_problem(cls, (None, 1, 1, 1), {}, "(config, vocab_size, n_out, seq_len)")
    if problem:
        return f"the constructor {problem}"
    problem = _signature_problem(cls.forward, (None, None), {"last_only": True}, "(x, last_only=False)")
    return f"forward {problem}" if problem else None


def own_class(ref: str, kind: Literal["task", "model"]) -> type:
    """The class a study names by import path, checked against its protocol (module docstring);
    OwnCodeError says why it cannot be used."""
    try:
        cls = import_object(ref, what="Class")
    except ImportPathError as err:
        raise OwnCodeError(str(err)) from None
    problem = (task_problem if kind == "task" else model_problem)(cls)
    if problem:
        raise OwnCodeError(f"{ref}: {problem}")
    return cls


class _Own(BaseModel):
    """A task or model section naming a class of the user's: the tag, then the class's fields,
    validated by the class (errors keep their field's path: `task.n_train`)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    _tag: ClassVar[str]

    @classmethod
    def settings_class(cls, ref: str) -> type[BaseModel]:
        raise NotImplementedError

    @model_validator(mode="after")
    def _load(self):
        # A name that is neither built in nor an import path is refused before this, by the spec's
        # union (trainers/spec.py), which knows the built-ins.
        ref = getattr(self, self._tag)
        try:
            settings = self.settings_class(ref)
        except OwnCodeError as err:
            raise invalid(self._tag, str(err)) from None
        settings.model_validate(self.model_extra or {})  # its errors keep their paths
        return self

    @property
    def config(self) -> BaseModel:
        """The class's own settings, validated."""
        return self.settings_class(getattr(self, self._tag)).model_validate(self.model_extra or {})

    @model_serializer(mode="plain")
    def _dump(self) -> dict[str, Any]:
        # The settings as the class reads them (defaults filled in), so the digest and the
        # recorded spec name the run exactly.
        return {self._tag: getattr(self, self._tag), **self.config.model_dump(mode="json")}


class OwnTask(_Own):
    """`task: {name: package.module:Class, ...}`: a task class of the user's (module docstring)."""

    _tag = "name"
    name: str

    @classmethod
    def settings_class(cls, ref: str) -> type[BaseModel]:
        return own_class(ref, "task")

    def make(self, seed: int) -> Any:
        """The class's make(seed): its TaskData (trainers.tasks.make_task checks the type)."""
        return self.config.make(seed)


class OwnModel(_Own):
    """`model: {family: package.module:Class, ...}`: a torch module of the user's (module docstring)."""

    _tag = "family"
    family: str

    @classmethod
    def settings_class(cls, ref: str) -> type[BaseModel]:
        return own_class(ref, "model").Config
