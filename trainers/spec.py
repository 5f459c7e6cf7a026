"""The typed description of one training run: task, model, optimisation, seed.

A `TrainSpec` is everything needed to repeat a run bit for bit on CPU. It is frozen pydantic
data with unknown keys forbidden, so the orchestrator embeds it in a study config and a
reviewer can rebuild it from the JSON that MLflow recorded.

Your own task and model, by import path, are checked in trainers/own_code.py.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    Discriminator,
    Field,
    PositiveFloat,
    PositiveInt,
    Tag,
    model_validator,
)

from trainers.corpus.spec import CorpusTask
from trainers.fields import Frozen, invalid
from trainers.own_code import OwnModel, OwnTask

MODULAR_OPS = ("add", "sub", "mul", "div", "x2+y2", "x2+xy+y2", "x3+xy")


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
    # How init, multipliers and per-layer learning rates scale with d_model (trainers/mup.py):
    # "sp", torch's usual parametrization, or "mup" (Yang et al. 2022), equal to sp at base_width.
    parametrization: Literal["sp", "mup"] = "sp"
    base_width: PositiveInt = 128  # mup only: the d_model at which mup is sp (the default d_model)

    @model_validator(mode="after")
    def _check(self) -> TransformerModel:
        if self.d_model % self.n_head:
            raise invalid("d_model", f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
        return self

    @property
    def mlp_width(self) -> int:
        return self.d_mlp if self.d_mlp is not None else 4 * self.d_model

    @property
    def width_mult(self) -> float | None:
        """mup: d_model / base_width, the factor trainers/mup.py scales by; None under sp."""
        return self.d_model / self.base_width if self.parametrization == "mup" else None


class MLPModel(Frozen):
    """Embed each input token, concatenate, then an MLP (Liu et al. 2022 use this for grokking)."""

    family: Literal["mlp"] = "mlp"
    d_embed: PositiveInt = 32
    d_hidden: PositiveInt = 256
    n_hidden: PositiveInt = 2
    dropout: float = Field(default=0.0, ge=0, lt=1)


class GPTModel(Frozen):
    """A modern decoder for scaling studies (trainers/gpt.py): pre-norm RMSNorm, rotary positions,
    no biases. Sized by one knob, n_layer: d_model = aspect x n_layer, rounded up to a whole number
    of heads of head_dim (nanochat's depth-to-width ladder), so a grid's N is a depth."""

    family: Literal["gpt"] = "gpt"
    n_layer: PositiveInt = 2
    aspect: PositiveInt = 64  # d_model per layer (nanochat's default)
    head_dim: PositiveInt = 64
    d_model: PositiveInt | None = None  # None: aspect x n_layer up to a multiple of head_dim (see `width`)
    mlp: Literal["gelu", "swiglu"] = "gelu"
    mlp_ratio: PositiveFloat | None = None  # None: 4 for gelu, 8/3 up to a multiple of 64 for swiglu
    tie_embeddings: bool = False  # unembed shares tok_emb's matrix: needs n_out == vocab_size
    dropout: float = Field(default=0.0, ge=0, lt=1)
    # As TransformerModel's (trainers/mup.py); the width is `width` (d_model), the base the
    # d_model of the default n_layer 2 x aspect 64.
    parametrization: Literal["sp", "mup"] = "sp"
    base_width: PositiveInt = 128

    @model_validator(mode="after")
    def _check(self) -> GPTModel:
        if self.head_dim % 2:
            # Rotary embeddings rotate pairs of channels (Su et al. 2021).
            raise invalid("head_dim", f"head_dim must be even (rotary embeddings rotate channel pairs), "
                                      f"got {self.head_dim}")
        if self.d_model is not None and self.d_model % self.head_dim:
            raise invalid("d_model",
                          f"d_model ({self.d_model}) must be a multiple of head_dim ({self.head_dim})")
        if self.mlp_ratio is not None and round(self.mlp_ratio * self.width) < 1:
            raise invalid("mlp_ratio",
                          f"mlp_ratio {self.mlp_ratio} x d_model {self.width} leaves no hidden unit")
        return self

    @property
    def width(self) -> int:
        """d_model: the explicit one, else aspect x n_layer rounded up to a multiple of head_dim."""
        if self.d_model is not None:
            return self.d_model
        return -(-self.aspect * self.n_layer // self.head_dim) * self.head_dim

    @property
    def width_mult(self) -> float | None:
        """mup: width / base_width, the factor trainers/mup.py scales by; None under sp."""
        return self.width / self.base_width if self.parametrization == "mup" else None

    @property
    def n_head(self) -> int:
        return self.width // self.head_dim

    @property
    def mlp_width(self) -> int:
        """The MLP's hidden width. gelu: 4 d_model (GPT-2). swiglu: 8/3 d_model, which keeps its
        three matrices at the parameters of gelu's two (Shazeer 2020), rounded up to a multiple of
        64 for GPU tiles (LLaMA rounds to 256). An explicit mlp_ratio gives round(ratio x d_model)."""
        if self.mlp_ratio is not None:
            return round(self.mlp_ratio * self.width)
        if self.mlp == "gelu":
            return 4 * self.width
        return -(-8 * self.width // (3 * 64)) * 64


Model = Annotated[
    Annotated[TransformerModel, Tag("transformer")] | Annotated[GPTModel, Tag("gpt")]
    | Annotated[MLPModel, Tag("mlp")] | Annotated[OwnModel, Tag("own")],
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
            raise invalid("warmup_steps", f"warmup_steps ({self.warmup_steps}) must be <= steps ({self.steps})")
        if self.batch_tokens is not None and self.batch_size is not None:
            raise invalid("batch_tokens", "give the batch as batch_size (examples) or batch_tokens, not both")
        if self.schedule == "wsd":
            n_decay = self.decay_steps
            if self.warmup_steps + n_decay > self.steps:
                raise invalid(
                    "warmup_steps", f"schedule 'wsd': warmup_steps ({self.warmup_steps}) + decay steps ({n_decay} = "
                    f"decay_fraction {self.decay_fraction} x steps {self.steps}) must be <= steps ({self.steps})")
        return self

    def batch_examples(self, seq_len: int) -> int | None:
        """The global batch in examples: batch_size, or batch_tokens / seq_len; None: full batch."""
        if self.batch_tokens is None:
            return self.batch_size
        if self.batch_tokens % seq_len:
            raise ValueError(f"train.batch_tokens ({self.batch_tokens}) must be a multiple of the task's "
                             f"sequence length ({seq_len})")
        return self.batch_tokens // seq_len

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
            raise invalid("model.family", f"task '{self.task.name}' needs model.family 'transformer' or "
                          "'gpt'; 'mlp' reads fixed-length inputs only")
        if self.task.name == "corpus" and self.train.batch_size is None and self.train.batch_tokens is None:
            # A corpus is read from disk a batch at a time; "full batch" would read all of it every step.
            raise invalid("train.batch_size", "task 'corpus' trains on minibatches of windows read from disk; "
                                              "give train.batch_size (e.g. 32)")
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
    "train": {"precision": "auto", "compile": "auto", "batch_tokens": None, "micro_batch": None,
              "grad_clip": None, "shard": False},
    "model": {"parametrization": "sp", "base_width": 128},
}
