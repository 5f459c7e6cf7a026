"""Models with exact parameter counts by group, and a resolver from a target N to a shape.

Convention: the "embedding" group holds the vocabulary-sized matrices (token and position
embeddings and the unembedding / readout layer); "non_embedding" is everything else, as in
Kaplan et al. (2020). Hoffmann et al. (2022) count the total. Both are always reported.
A model of the user's (`model.family: package.module:Class`, trainers/own_code.py) is counted the
same way: its nn.Embedding modules and those named tok_emb, pos_emb, unembed are "embedding".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt, model_validator
from torch import nn

from trainers.fields import Frozen, invalid
from trainers.gpt import GPT, GPTModel
from trainers.own_code import OwnModel, own_class

EMBEDDING_MODULES = ("tok_emb", "pos_emb", "unembed")


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


BuiltinModel = TransformerModel | GPTModel | MLPModel


@dataclass(frozen=True)
class ParamCounts:
    embedding: int
    non_embedding: int

    @property
    def total(self) -> int:
        return self.embedding + self.non_embedding

    def as_dict(self) -> dict[str, int]:
        return {"embedding": self.embedding, "non_embedding": self.non_embedding, "total": self.total}


def count_params(model: nn.Module) -> ParamCounts:
    """Parameters by group (module docstring); a parameter shared by two modules counts once."""
    lookups = {name for name, m in model.named_modules() if name and isinstance(m, nn.Embedding)}
    groups = set(EMBEDDING_MODULES) | lookups
    emb = non = 0
    for name, p in model.named_parameters():
        if any(name.startswith(f"{g}.") for g in groups):
            emb += p.numel()
        else:
            non += p.numel()
    return ParamCounts(emb, non)


class Block(nn.Module):
    def __init__(self, cfg: TransformerModel):
        super().__init__()
        d = cfg.d_model
        self.n_head = cfg.n_head
        self.dropout = cfg.dropout
        # mup: logits q.k scaled as 1/d_head, not 1/sqrt(d_head) (trainers/mup.py), with the constant
        # that makes it sp's at base_width: d_head^-1/2 (d_head at base / d_head)^1/2. None: sp's.
        m = cfg.width_mult
        self.attn_scale = None if m is None else (d // cfg.n_head) ** -0.5 * (1 / m) ** 0.5
        norm = (lambda: nn.LayerNorm(d)) if cfg.layer_norm else nn.Identity
        self.ln1, self.ln2 = norm(), norm()
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.fc_in = nn.Linear(d, cfg.mlp_width)
        self.fc_out = nn.Linear(cfg.mlp_width, d)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, h: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        B, T, C = h.shape
        H = self.n_head
        q, k, v = self.qkv(self.ln1(h)).split(C, dim=2)
        k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in (k, v))  # (B, H, T, hs)
        if last_only:
            # Only the final position is read: one query over all keys, then the MLP on one
            # position, which saves (T - 1) / T of the block's MLP work. For one query,
            # elementwise products beat the fused kernel on CPU (2-3x at T = 3).
            h = h[:, -1:]  # (B, 1, C)
            q = q[:, -1].view(B, H, 1, C // H)  # (B, H, 1, hs)
            scale = (C // H) ** -0.5 if self.attn_scale is None else self.attn_scale
            w = ((q * k).sum(-1) * scale).softmax(-1)  # (B, H, T)
            w = F.dropout(w, self.dropout, self.training)
            att = (w[..., None] * v).sum(2).view(B, 1, C)  # (B, 1, C)
        else:
            q = q.view(B, T, H, C // H).transpose(1, 2)  # (B, H, T, hs)
            att = F.scaled_dot_product_attention(
                q,
                k,
                v,
                is_causal=True,
                scale=self.attn_scale,
                dropout_p=self.dropout if self.training else 0.0,
            )
            att = att.transpose(1, 2).reshape(B, T, C)
        h = h + self.drop(self.proj(att))
        return h + self.drop(self.fc_out(F.relu(self.fc_in(self.ln2(h)))))


class Transformer(nn.Module):
    """Decoder-only transformer; `last_only` reads logits at the final position only."""

    Config = TransformerModel

    def __init__(self, cfg: TransformerModel, vocab_size: int, n_out: int, seq_len: int):
        super().__init__()
        # mup (trainers/mup.py): d_model / base_width, which sets the per-layer learning rates, and
        # the readout multiplier base_width / d_model. None under sp.
        self.width_mult = cfg.width_mult
        self.base_width = cfg.base_width
        self.readout_mult = None if cfg.width_mult is None else cfg.base_width / cfg.d_model
        self.tok_emb = nn.Embedding(vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(seq_len, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model) if cfg.layer_norm else nn.Identity()
        self.unembed = nn.Linear(cfg.d_model, n_out, bias=False)

    def forward(self, x: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        T = x.shape[1]
        h = self.drop(self.tok_emb(x) + self.pos_emb.weight[:T])  # (B, T, C)
        for i, block in enumerate(self.blocks):
            h = block(h, last_only=last_only and i == len(self.blocks) - 1)
        if last_only:
            h = h[:, -1]  # (B, C)
        logits = self.unembed(self.ln_f(h))  # (B, n_out) or (B, T, n_out)
        return logits if self.readout_mult is None else logits * self.readout_mult


class MLP(nn.Module):
    """Embed each input token, concatenate, then ReLU layers; reads fixed-length inputs."""

    Config = MLPModel

    def __init__(self, cfg: MLPModel, vocab_size: int, n_out: int, seq_len: int):
        super().__init__()
        self.tok_emb = nn.Embedding(vocab_size, cfg.d_embed)
        layers: list[nn.Module] = []
        width = seq_len * cfg.d_embed
        for _ in range(cfg.n_hidden):
            layers += [nn.Linear(width, cfg.d_hidden), nn.ReLU(), nn.Dropout(cfg.dropout)]
            width = cfg.d_hidden
        self.hidden = nn.Sequential(*layers)
        self.unembed = nn.Linear(width, n_out)

    def forward(self, x: torch.Tensor, last_only: bool = True) -> torch.Tensor:
        h = self.tok_emb(x).flatten(1)  # (B, T * d_embed)
        return self.unembed(self.hidden(h))  # (B, n_out)


def init_weights(model: nn.Module, init_scale: float) -> None:
    """N(0, 1/fan_in) weights, zero biases, then everything times init_scale. The gpt has its own
    scheme (gpt.GPT.init_weights) and a model of the user's its own initialization; init_scale
    multiplies both.

    Liu et al. (2022, "Omnigrok") tie grokking to the initial weight norm: a large init_scale
    delays generalization, a small one removes the delay.

    A mup transformer (trainers/mup.py) draws its embeddings at the std sp gives them at d_model ==
    base_width, 1/sqrt(base_width), constant in width, and zeroes its readout after drawing it (so
    every other parameter is drawn as in sp); the rest as sp.
    """
    builtin = isinstance(model, (Transformer, MLP))
    if isinstance(model, GPT):
        model.init_weights()
    mup = isinstance(model, Transformer) and model.width_mult is not None
    for module in model.modules() if builtin else ():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=1 / math.sqrt(module.in_features))
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            width = model.base_width if mup else module.embedding_dim
            nn.init.normal_(module.weight, std=1 / math.sqrt(width))
    if mup:
        nn.init.zeros_(model.unembed.weight)
    if init_scale != 1.0:
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(init_scale)


# The built-in models by family, in the order errors list them: the one place a built-in model is
# registered. Each keeps the protocol of a model of the user's (trainers/own_code.py): its nested
# Config is its `model:` section, here with its `family` literal; the spec's model union is read
# from here (trainers/spec.py).
MODELS: dict[str, type[nn.Module]] = {
    cls.Config.model_fields["family"].default: cls for cls in (Transformer, MLP, GPT)
}
DEFAULT_MODEL = "transformer"  # a spec's model when its section names no family


def build_model(cfg: BuiltinModel | OwnModel, vocab_size: int, n_out: int, seq_len: int) -> nn.Module:
    if isinstance(cfg, OwnModel):
        return own_class(cfg.family, "model")(cfg.config, vocab_size, n_out, seq_len)
    return MODELS[cfg.family](cfg, vocab_size, n_out, seq_len)


# Below this rough size a model is counted by building it on the CPU (milliseconds); above it, on
# the meta device, without allocating. Meta-device ops run through torch._refs, whose first use
# imports torch._dynamo: a second of every command (`validate`, `run`) that counts a small model.
CPU_COUNT_MAX = 2_000_000


def _rough_size(cfg: BuiltinModel, vocab_size: int, n_out: int, seq_len: int) -> int:
    """About the built-in model's parameters (an overestimate): attention and MLP blocks of its
    width, and its embeddings."""
    fields = cfg.model_dump()
    width = max(
        fields.get("d_model") or 0,
        fields.get("d_hidden") or 0,
        fields.get("d_embed") or 0,
        fields.get("aspect", 0) * fields.get("n_layer", 1),
        fields.get("head_dim", 0),
    )
    mlp = max(fields.get("d_mlp") or 0, 4 * width)
    depth = max(fields.get("n_layer", 1), fields.get("n_hidden", 1))
    return depth * (4 * width**2 + 3 * width * mlp) + (vocab_size + n_out + seq_len) * width


def shape_counts(cfg: BuiltinModel, vocab_size: int, n_out: int, seq_len: int) -> ParamCounts:
    """Counts of the model these settings build: the same on either device (a test checks)."""
    small = _rough_size(cfg, vocab_size, n_out, seq_len) <= CPU_COUNT_MAX
    with torch.random.fork_rng(devices=[]), torch.device("cpu" if small else "meta"):  # no RNG draw leaks
        return count_params(build_model(cfg, vocab_size, n_out, seq_len))


@dataclass(frozen=True)
class ResolvedShape:
    model: BuiltinModel
    n_params: ParamCounts
    target: int
    convention: str
    shape: dict[str, Any]  # the model fields the resolution set (a grid cell's shape)

    @property
    def relative_error(self) -> float:
        return abs(getattr(self.n_params, self.convention) - self.target) / self.target


def resolve_shape(
    base: BuiltinModel,
    target: int,
    vocab_size: int,
    n_out: int,
    seq_len: int,
    convention: str = "total",
    tolerance: float = 0.10,
) -> ResolvedShape:
    """The size (d_model for a transformer of fixed depth and heads, n_layer for a gpt, d_hidden
    for an MLP) whose parameter count under `convention` is closest to `target`; an error if
    none is within `tolerance`. Counts grow monotonically with size, so a binary search suffices.

    A gpt's one knob is its depth: d_model follows it (aspect x n_layer), or stays the base's
    explicit d_model, and then N is a depth at that width. Depths are a coarse ladder (N grows
    about as n_layer^3 when d_model follows), so a target between two rungs may be refused."""
    if isinstance(base, OwnModel):
        raise ValueError(
            f"model.family: a target parameter count is resolved for the built-in families only; "
            f"give {base.family}'s N as a shape of its fields (e.g. {{width: 64}})"
        )
    if base.family == "transformer":
        knob, step = "d_model", base.n_head
        ratio = None if base.d_mlp is None else base.d_mlp / base.d_model

        def fields(size: int) -> dict[str, int]:
            # d_mlp keeps the base's ratio to d_model when the base gives one, else it follows d_model.
            if ratio is None:
                return {"d_model": size}
            return {"d_model": size, "d_mlp": max(1, round(ratio * size))}
    else:
        knob, step = ("n_layer", 1) if base.family == "gpt" else ("d_hidden", 1)

        def fields(size: int) -> dict[str, int]:
            return {knob: size}

    def shape(size: int) -> BuiltinModel:
        return base.model_copy(update=fields(size))

    def count(k: int) -> int:
        return getattr(shape_counts(shape(k * step), vocab_size, n_out, seq_len), convention)

    lo, hi = 1, 1
    while count(hi) < target and hi < 2**20:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count(mid) < target else (lo, mid)
    best = min((lo, hi), key=lambda k: abs(count(k) - target))
    model = shape(best * step)
    resolved = ResolvedShape(
        model, shape_counts(model, vocab_size, n_out, seq_len), target, convention, fields(best * step)
    )
    if resolved.relative_error > tolerance:
        raise ValueError(
            f"no {base.family} {knob} lands within {tolerance:.0%} of N={target} ({convention}); "
            f"closest is {getattr(resolved.n_params, convention)} at {knob} {best * step}"
        )
    return resolved
