"""The typed description of one training run: task, model, optimisation, seed.

A `TrainSpec` is everything needed to repeat a run bit for bit on CPU. It is frozen pydantic
data with unknown keys forbidden, so the orchestrator embeds it in a study config and a
reviewer can rebuild it from the JSON that MLflow recorded.

Its task and model sections are tagged unions read from the registries: the built-in tasks
(trainers/tasks/: builtin_tasks) by `name`, the built-in models (trainers/models.py: MODELS) by
`family`, and your own class by import path (trainers/own_code.py), so a new built-in needs no
edit here.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BeforeValidator,
    Discriminator,
    Field,
    PositiveFloat,
    PositiveInt,
    Tag,
    model_validator,
)

from trainers.fields import Frozen, invalid
from trainers.import_path import is_import_path
from trainers.models import DEFAULT_MODEL, MODELS, GPTModel, MLPModel, TransformerModel
from trainers.own_code import OwnModel, OwnTask
from trainers.tasks import DEFAULT_TASK, builtin_tasks

__all__ = ["GPTModel", "MLPModel", "Model", "Task", "TrainConfig", "TrainSpec", "TransformerModel"]

TASKS = builtin_tasks()  # name -> task class
MODEL_CONFIGS = {family: cls.Config for family, cls in MODELS.items()}  # family -> its section


def _tagged(key: str, builtin: tuple[str, ...]):
    """The union's tag: the built-in name, else "own" (an import path, or an unknown name, which
    _known refuses naming the built-ins)."""

    def tag(v: Any) -> str:
        name = v.get(key) if isinstance(v, dict) else getattr(v, key, None)
        return name if name in builtin else "own"

    return tag


def _known(key: str, builtin: tuple[str, ...]):
    """Refuses a name that is neither built in nor an import path, listing what is allowed."""

    def check(v: Any) -> Any:
        name = v.get(key) if isinstance(v, dict) else None
        if isinstance(name, str) and not is_import_path(name):
            allowed = ", ".join(repr(b) for b in builtin)
            raise invalid(
                key, f"unknown {name!r}; allowed: {allowed}, or your own class as 'package.module:Class'"
            )
        return v

    return check


def _union(builtin: dict[str, type], own: type, key: str) -> Any:
    """Annotated[Union[Annotated[A, Tag("a")], ..., Annotated[own, Tag("own")]], Discriminator]."""
    names = tuple(builtin)
    members = [Annotated[cls, Tag(name)] for name, cls in builtin.items()]
    members.append(Annotated[own, BeforeValidator(_known(key, names)), Tag("own")])
    # Union[...] of a tuple: the members are known only at run time.
    return Annotated[Union[tuple(members)], Discriminator(_tagged(key, names))]  # noqa: UP007


Task = _union(TASKS, OwnTask, "name")
Model = _union(MODEL_CONFIGS, OwnModel, "family")


class TrainConfig(Frozen):
    steps: PositiveInt = 10_000
    lr: PositiveFloat = 1e-3
    # betas (0.9, 0.98) and weight decay 1 follow Nanda et al. (2023).
    betas: tuple[float, float] = (0.9, 0.98)
    eps: PositiveFloat = 1e-8
    weight_decay: float = Field(default=1.0, ge=0)
    warmup_steps: int = Field(default=10, ge=0)
    # Learning-rate schedule after warmup (trainers/schedules.py). Constant is Nanda et al.'s
    # grokking set-up; cosine matches its cycle to `steps` (Hoffmann et al. 2022); wsd decays
    # linearly over the last `decay_fraction` of the steps (Hägele et al. 2024).
    schedule: Literal["constant", "cosine", "wsd"] = "constant"
    min_lr_fraction: float = Field(default=0.1, ge=0, le=1)  # cosine/wsd floor, as a fraction of lr
    decay_fraction: float = Field(default=0.2, gt=0, le=1)  # wsd: the share of steps spent decaying
    batch_size: PositiveInt | None = None  # None: full batch
    eval_every: PositiveInt = 100
    eval_batch_size: PositiveInt = 8192
    init_scale: PositiveFloat = 1.0  # Omnigrok's alpha, Liu et al. (2022)
    grokfast: bool = False  # EMA gradient filter, Lee et al. (2024)
    grokfast_alpha: float = Field(default=0.98, ge=0, lt=1)
    grokfast_lamb: float = Field(default=2.0, ge=0)
    train_threshold: float = Field(default=0.99, gt=0, le=1)  # memorization event
    val_threshold: float = Field(default=0.95, gt=0, le=1)  # generalization event
    success_stop_evals: PositiveInt | None = None  # stop after m evals at/above val_threshold
    checkpoint_every: PositiveInt | None = None
    threads: PositiveInt = 1  # torch intra-op threads; fixed so results do not depend on the host
    # The GPU-grade loop (trainers/train.py, README "GPUs and several nodes"). "auto": bf16 on a
    # GPU that supports it, fp32 otherwise (CPU runs stay bitwise what they were).
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # torch.compile the model. "auto": GPU runs whose step is large enough (trainers/device.py).
    compile: Literal["auto", "on", "off"] = "auto"
    # The global batch in tokens instead of examples (batch_size): batch_tokens / seq_len
    # sequences a step, whatever the number of workers.
    batch_tokens: PositiveInt | None = None
    # Examples per forward/backward on one worker; the batch is reached by gradient accumulation.
    # None: the worker's whole share of the batch at once.
    micro_batch: PositiveInt | None = None
    grad_clip: PositiveFloat | None = None  # clip the global gradient norm to this
    # Shard parameters, gradients and optimizer state over a run's workers (FSDP2 fully_shard)
    # instead of replicating them (DDP). Only a run with more than one worker.
    shard: bool = False

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        for i, b in enumerate(self.betas):
            if not 0 <= b < 1:
                raise invalid(f"betas[{i}]", f"betas[{i}] must be in [0, 1), got {b}")
        if self.warmup_steps > self.steps:
            raise invalid(
                "warmup_steps", f"warmup_steps ({self.warmup_steps}) must be <= steps ({self.steps})"
            )
        if self.batch_tokens is not None and self.batch_size is not None:
            raise invalid("batch_tokens", "give the batch as batch_size (examples) or batch_tokens, not both")
        if self.schedule == "wsd":
            n_decay = self.decay_steps
            if self.warmup_steps + n_decay > self.steps:
                raise invalid(
                    "warmup_steps",
                    f"schedule 'wsd': warmup_steps ({self.warmup_steps}) + decay steps ({n_decay} = "
                    f"decay_fraction {self.decay_fraction} x steps {self.steps}) must be <= steps "
                    f"({self.steps})",
                )
        return self

    def batch_examples(self, seq_len: int) -> int | None:
        """The global batch in examples: batch_size, or batch_tokens / seq_len; None: full batch."""
        if self.batch_tokens is None:
            return self.batch_size
        if self.batch_tokens % seq_len:
            raise ValueError(
                f"train.batch_tokens ({self.batch_tokens}) must be a multiple of the task's "
                f"sequence length ({seq_len})"
            )
        return self.batch_tokens // seq_len

    @property
    def decay_steps(self) -> int:
        """WSD: the number of final steps over which the rate decays, at least one."""
        return max(1, round(self.decay_fraction * self.steps))


class TrainSpec(Frozen):
    task: Task = Field(default_factory=TASKS[DEFAULT_TASK])
    model: Model = Field(default_factory=MODEL_CONFIGS[DEFAULT_MODEL])
    train: TrainConfig = Field(default_factory=TrainConfig)
    seed: int = Field(default=0, ge=0)
    device: str = "cpu"

    @model_validator(mode="before")
    @classmethod
    def _default_kinds(cls, data):
        # The task and model unions are tagged by name/family; an untagged section means the default.
        if isinstance(data, dict):
            data = dict(data)
            for key, tag, default in (("task", "name", DEFAULT_TASK), ("model", "family", DEFAULT_MODEL)):
                if isinstance(data.get(key), dict) and tag not in data[key]:
                    data[key] = {tag: default, **data[key]}
        return data

    @model_validator(mode="after")
    def _check(self) -> TrainSpec:
        # A task scored at every position (its sequence metrics) needs a model that reads sequences.
        if self.model.family == "mlp" and getattr(type(self.task), "sequence_metrics", False):
            raise invalid(
                "model.family",
                f"task '{self.task.name}' needs model.family 'transformer' or "
                "'gpt'; 'mlp' reads fixed-length inputs only",
            )
        if self.task.name == "corpus" and self.train.batch_size is None and self.train.batch_tokens is None:
            # A corpus is read from disk a batch at a time; "full batch" would read all of it every step.
            raise invalid(
                "train.batch_size",
                "task 'corpus' trains on minibatches of windows read from disk; "
                "give train.batch_size (e.g. 32)",
            )
        return self

    def digest(self) -> str:
        """A short hash of the spec: names a checkpoint so a resumed run never loads another's.
        A field added to the spec after checkpoints were written, while it holds its default,
        is left out: those checkpoints are the same runs and still resume."""
        data = self.model_dump(mode="json")
        for section, fields in ADDED_FIELDS.items():
            for name, default in fields.items():
                if data.get(section, {}).get(name, default) == default:
                    data.get(section, {}).pop(name, None)
        blob = json.dumps(data, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# Fields added to a section after the first checkpoints were written, with their defaults
# (TrainSpec.digest leaves them out while they hold these). A new field goes here.
ADDED_FIELDS: dict[str, dict[str, Any]] = {
    "train": {
        "precision": "auto",
        "compile": "auto",
        "batch_tokens": None,
        "micro_batch": None,
        "grad_clip": None,
        "shard": False,
    },
    "model": {"parametrization": "sp", "base_width": 128},
}
