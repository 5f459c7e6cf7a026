"""The typed description of one training run: task, model, optimisation, seed.

A `TrainSpec` is everything needed to repeat a run bit for bit on CPU. It is frozen pydantic
data with unknown keys forbidden, so the orchestrator embeds it in a study config and a
reviewer can rebuild it from the JSON that MLflow recorded.

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
    log-likelihood) and `language_model: ClassVar[bool]` (D counts tokens: one pass by default).
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
"""

from __future__ import annotations

import hashlib
import inspect
import json
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PositiveFloat,
    PositiveInt,
    Tag,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from trainers.corpus.spec import CorpusTask

MODULAR_OPS = ("add", "sub", "mul", "div", "x2+y2", "x2+xy+y2", "x3+xy")


class Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def invalid(field: str, message: str) -> PydanticCustomError:
    """A check across fields that names the field it is about, so the study's error says
    `task.p: p must be >= 3` rather than pointing at the whole section."""
    return PydanticCustomError("invalid_field", message, {"field": field})


def _is_prime(p: int) -> bool:
    return p >= 2 and all(p % q for q in range(2, int(p**0.5) + 1))


class ModularTask(Frozen):
    """(a op b) mod p over all pairs, Power et al. (2022)."""

    name: Literal["modular"] = "modular"
    # Fields the grid's D axis may set (the first is the default), read by orchestrator/study.
    d_fields: ClassVar[tuple[str, ...]] = ("train_fraction", "n_train")
    sequence_metrics: ClassVar[bool] = False
    language_model: ClassVar[bool] = False  # True: D counts tokens; one pass is the default length
    p: PositiveInt = 97
    op: Literal[MODULAR_OPS] = "add"  # type: ignore[valid-type]
    # D: exactly one of a fraction of all pairs or a count of training pairs.
    train_fraction: float | None = Field(default=None, gt=0, lt=1)
    n_train: PositiveInt | None = None

    @model_validator(mode="before")
    @classmethod
    def _default_fraction(cls, data):
        # 0.3 of all pairs (Nanda et al. 2023) unless the study gives a size.
        if isinstance(data, dict) and data.get("train_fraction") is None and data.get("n_train") is None:
            data = {**data, "train_fraction": 0.3}
        return data

    @model_validator(mode="after")
    def _check(self) -> ModularTask:
        if (self.train_fraction is None) == (self.n_train is None):
            raise ValueError("give exactly one of train_fraction or n_train")
        if self.p < 3:
            raise invalid("p", f"p must be >= 3, got {self.p}")
        if self.op == "div" and not _is_prime(self.p):
            # b has an inverse mod p for every b != 0 only when p is prime.
            raise invalid("op", f"op 'div' needs a prime p, got {self.p}")
        if self.n_train is not None and self.n_train >= self.n_pairs:
            raise invalid("n_train", f"n_train must be < the {self.n_pairs} pairs for p={self.p}, got {self.n_train}")
        return self

    @property
    def n_pairs(self) -> int:
        return self.p * (self.p - 1) if self.op == "div" else self.p * self.p


class SparseParityTask(Frozen):
    """Parity of k hidden bits out of n, Barak et al. (2022)."""

    name: Literal["sparse_parity"] = "sparse_parity"
    d_fields: ClassVar[tuple[str, ...]] = ("n_train",)
    sequence_metrics: ClassVar[bool] = False
    language_model: ClassVar[bool] = False
    n_bits: PositiveInt = 40
    k: PositiveInt = 3
    n_train: PositiveInt = 1000
    n_val: PositiveInt = 2000

    @model_validator(mode="after")
    def _check(self) -> SparseParityTask:
        if self.k > self.n_bits:
            raise invalid("k", f"k must be <= n_bits ({self.n_bits}), got {self.k}")
        return self


class AdditionTask(Frozen):
    """n_digits-digit integer addition as a token sequence for a causal transformer."""

    name: Literal["addition"] = "addition"
    d_fields: ClassVar[tuple[str, ...]] = ("n_train",)
    sequence_metrics: ClassVar[bool] = True
    language_model: ClassVar[bool] = False
    n_digits: PositiveInt = Field(default=3, le=18)
    n_train: PositiveInt = 2000
    n_val: PositiveInt = 1000


class CharLMTask(Frozen):
    """Byte- or character-level LM on the Python standard library's own source files."""

    name: Literal["charlm"] = "charlm"
    d_fields: ClassVar[tuple[str, ...]] = ("n_train_tokens",)
    sequence_metrics: ClassVar[bool] = True
    # D counts tokens: a study trains one pass over them by default (Hoffmann et al. 2022's D)
    # and may give an IsoFLOP grid (orchestrator/study/length.py).
    language_model: ClassVar[bool] = True
    level: Literal["byte", "char"] = "byte"
    n_train_tokens: PositiveInt = 200_000
    n_val_tokens: PositiveInt = 50_000
    seq_len: PositiveInt = 64


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


def _task_problem(cls: Any) -> str | None:
    """Why `cls` is not a task class (module docstring), None if it is."""
    if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
        return f"a task must be a pydantic model class (BaseModel: its fields are the task's settings), got {cls!r}"
    if "name" in cls.model_fields:
        return "a task class must not declare a field 'name': task.name is its import path"
    if not callable(getattr(cls, "make", None)):
        return "a task class needs a method make(self, seed) -> trainers.tasks.TaskData"
    problem = _signature_problem(cls.make, (None, 0), {}, "(self, seed)")
    if problem:
        return f"make {problem}"
    d_fields = getattr(cls, "d_fields", None)
    if not (isinstance(d_fields, (tuple, list)) and d_fields and all(isinstance(f, str) for f in d_fields)):
        return ("a task class needs d_fields: ClassVar[tuple[str, ...]], the fields the grid's D may set "
                f"(e.g. ('n_train',)), got {d_fields!r}")
    unknown = [f for f in d_fields if f not in cls.model_fields]
    if unknown:
        return f"d_fields names {unknown}, not fields of the class; its fields: {sorted(cls.model_fields)}"
    for flag in ("sequence_metrics", "language_model"):
        if not isinstance(getattr(cls, flag, False), bool):
            return f"{flag} must be a bool ClassVar, got {getattr(cls, flag)!r}"
    return None


def _model_problem(cls: Any) -> str | None:
    """Why `cls` is not a model class (module docstring), None if it is."""
    from torch import nn  # lazily: the rest of this module is plain pydantic

    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        return f"a model must be a torch.nn.Module class, got {cls!r}"
    config = getattr(cls, "Config", None)
    if not (isinstance(config, type) and issubclass(config, BaseModel)):
        return "a model class needs a nested Config, a pydantic model (BaseModel) of its settings"
    if "family" in config.model_fields:
        return "its Config must not declare a field 'family': model.family is its import path"
    problem = _signature_problem(cls, (None, 1, 1, 1), {}, "(config, vocab_size, n_out, seq_len)")
    if problem:
        return f"the constructor {problem}"
    problem = _signature_problem(cls.forward, (None, None), {"last_only": True}, "(x, last_only=False)")
    return f"forward {problem}" if problem else None


def own_class(ref: str, kind: Literal["task", "model"]) -> type:
    """The class a study names by import path, checked against its protocol (module docstring);
    OwnCodeError says why it cannot be used."""
    from trainers.protocol import TrainerError, import_object  # lazily: protocol.py imports this module

    try:
        cls = import_object(ref, what="Class")
    except TrainerError as err:
        raise OwnCodeError(str(err)) from None
    problem = (_task_problem if kind == "task" else _model_problem)(cls)
    if problem:
        raise OwnCodeError(f"{ref}: {problem}")
    return cls


def is_import_path(name: Any) -> bool:
    return isinstance(name, str) and ":" in name


class _Own(BaseModel):
    """A task or model section naming a class of the user's: the tag, then the class's fields,
    validated by the class (errors keep their field's path: `task.n_train`)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    _tag: ClassVar[str]
    _builtin: ClassVar[tuple[str, ...]]

    @classmethod
    def settings_class(cls, ref: str) -> type[BaseModel]:
        raise NotImplementedError

    @model_validator(mode="after")
    def _load(self):
        ref = getattr(self, self._tag)
        if not is_import_path(ref):
            allowed = ", ".join(repr(b) for b in self._builtin)
            raise invalid(self._tag, f"unknown {ref!r}; allowed: {allowed}, or your own class as "
                                     f"'package.module:Class'")
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
    _builtin = ("modular", "sparse_parity", "addition", "charlm", "corpus")
    name: str

    @classmethod
    def settings_class(cls, ref: str) -> type[BaseModel]:
        return own_class(ref, "task")


class OwnModel(_Own):
    """`model: {family: package.module:Class, ...}`: a torch module of the user's (module docstring)."""

    _tag = "family"
    _builtin = ("transformer", "mlp")
    family: str

    @classmethod
    def settings_class(cls, ref: str) -> type[BaseModel]:
        return own_class(ref, "model").Config


def _tagged(key: str, builtin: tuple[str, ...]):
    """The union's tag: the built-in name, else "own" (an import path, or an unknown name, which
    OwnTask/OwnModel refuse naming the built-ins)."""
    def tag(v: Any) -> str:
        name = v.get(key) if isinstance(v, dict) else getattr(v, key, None)
        return name if name in builtin else "own"
    return tag


Task = Annotated[
    Annotated[ModularTask, Tag("modular")] | Annotated[SparseParityTask, Tag("sparse_parity")]
    | Annotated[AdditionTask, Tag("addition")] | Annotated[CharLMTask, Tag("charlm")]
    | Annotated[CorpusTask, Tag("corpus")] | Annotated[OwnTask, Tag("own")],
    Discriminator(_tagged("name", OwnTask._builtin))]


class TransformerModel(Frozen):
    family: Literal["transformer"] = "transformer"
    n_layer: PositiveInt = 1
    d_model: PositiveInt = 128
    n_head: PositiveInt = 4
    d_mlp: PositiveInt | None = None  # None: 4 * d_model
    dropout: float = Field(default=0.0, ge=0, lt=1)
    # Nanda et al. (2023)'s grokking transformer has no LayerNorm; LMs want it.
    layer_norm: bool = True

    @model_validator(mode="after")
    def _check(self) -> TransformerModel:
        if self.d_model % self.n_head:
            raise invalid("d_model", f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
        return self

    @property
    def mlp_width(self) -> int:
        return self.d_mlp if self.d_mlp is not None else 4 * self.d_model


class MLPModel(Frozen):
    """Embed each input token, concatenate, then an MLP (Liu et al. 2022 use this for grokking)."""

    family: Literal["mlp"] = "mlp"
    d_embed: PositiveInt = 32
    d_hidden: PositiveInt = 256
    n_hidden: PositiveInt = 2
    dropout: float = Field(default=0.0, ge=0, lt=1)


Model = Annotated[
    Annotated[TransformerModel, Tag("transformer")] | Annotated[MLPModel, Tag("mlp")] | Annotated[OwnModel, Tag("own")],
    Discriminator(_tagged("family", OwnModel._builtin))]


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

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        for i, b in enumerate(self.betas):
            if not 0 <= b < 1:
                raise invalid(f"betas[{i}]", f"betas[{i}] must be in [0, 1), got {b}")
        if self.warmup_steps > self.steps:
            raise invalid("warmup_steps", f"warmup_steps ({self.warmup_steps}) must be <= steps ({self.steps})")
        if self.schedule == "wsd":
            n_decay = self.decay_steps
            if self.warmup_steps + n_decay > self.steps:
                raise invalid(
                    "warmup_steps", f"schedule 'wsd': warmup_steps ({self.warmup_steps}) + decay steps ({n_decay} = "
                    f"decay_fraction {self.decay_fraction} x steps {self.steps}) must be <= steps ({self.steps})")
        return self

    @property
    def decay_steps(self) -> int:
        """WSD: the number of final steps over which the rate decays, at least one."""
        return max(1, round(self.decay_fraction * self.steps))


class TrainSpec(Frozen):
    task: Task = Field(default_factory=ModularTask)
    model: Model = Field(default_factory=TransformerModel)
    train: TrainConfig = Field(default_factory=TrainConfig)
    seed: int = Field(default=0, ge=0)
    device: str = "cpu"

    @model_validator(mode="before")
    @classmethod
    def _default_kinds(cls, data):
        # The task and model unions are tagged by name/family; an untagged section means the default.
        if isinstance(data, dict):
            data = dict(data)
            for key, tag, default in (("task", "name", "modular"), ("model", "family", "transformer")):
                if isinstance(data.get(key), dict) and tag not in data[key]:
                    data[key] = {tag: default, **data[key]}
        return data

    @model_validator(mode="after")
    def _check(self) -> TrainSpec:
        if self.model.family == "mlp" and self.task.name in ("addition", "charlm", "corpus"):
            raise invalid("model.family", f"task '{self.task.name}' needs model.family 'transformer'; 'mlp' reads "
                          "fixed-length inputs only")
        if self.task.name == "corpus" and self.train.batch_size is None:
            # A corpus is read from disk a batch at a time; "full batch" would read all of it every step.
            raise invalid("train.batch_size", "task 'corpus' trains on minibatches of windows read from disk; "
                                              "give train.batch_size (e.g. 32)")
        return self

    def digest(self) -> str:
        """A short hash of the spec: names a checkpoint so a resumed run never loads another's."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]
