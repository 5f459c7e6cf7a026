"""A modern decoder-only transformer for scaling studies: `model: {family: gpt, ...}`.

The block of nanoGPT / nanochat / OLMo-style models, written small:
- pre-norm residual blocks with RMSNorm (Zhang & Sennrich 2019), no biases anywhere;
- rotary position embeddings on queries and keys (Su et al. 2021, RoFormer): no learned
  position table, so no `pos_emb` parameter;
- attention through F.scaled_dot_product_attention(is_causal=True), which takes the flash
  kernels on a GPU;
- an MLP of GELU (GPT-2) or SwiGLU (Shazeer 2020), its width from GPTModel.mlp_width;
- a final RMSNorm, then the readout `unembed`, optionally tied to `tok_emb`;
- `parametrization: mup` (trainers/mup.py): the readout's output times base_width / d_model and,
  when tied, the shared matrix drawn at its sp std of d_model == base_width. Heads grow with
  the width at a fixed head_dim, so mup's 1/d_head attention scale is sp's 1/sqrt(head_dim) up
  to a constant, which base_width sets to 1: the attention is sp's.

It keeps the models' protocol (trainers/own_code.py): its settings are `GPT.Config` (GPTModel);
it is built as `GPT(cfg, vocab_size, n_out, seq_len)` and called as `model(x, last_only=False)`.
With last_only every block runs on all positions (the last query needs every key) and only the
final norm and the readout run on the last position; trainers/flops.py counts exactly that.

Parameters by the repo's groups (models.count_params): `tok_emb` and `unembed` are "embedding",
one matrix when tied; the rest is "non_embedding". `param_counts` gives the same by formula.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveFloat, PositiveInt, model_validator
from torch import nn

from trainers.fields import Frozen, invalid

ROPE_BASE = 10_000.0  # Su et al. (2021), as in Vaswani et al.'s sinusoids


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
            raise invalid(
                "head_dim",
                f"head_dim must be even (rotary embeddings rotate channel pairs), got {self.head_dim}",
            )
        if self.d_model is not None and self.d_model % self.head_dim:
            raise invalid(
                "d_model", f"d_model ({self.d_model}) must be a multiple of head_dim ({self.head_dim})"
            )
        if self.mlp_ratio is not None and round(self.mlp_ratio * self.width) < 1:
            raise invalid(
                "mlp_ratio", f"mlp_ratio {self.mlp_ratio} x d_model {self.width} leaves no hidden unit"
            )
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


def rotary_tables(seq_len: int, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of t * ROPE_BASE^(-2i / head_dim) for position t and channel pair i, each
    (seq_len, head_dim / 2): the rotation angles of RoFormer (Su et al. 2021, eq. 15)."""
    freq = ROPE_BASE ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # (hd/2,)
    angle = torch.outer(torch.arange(seq_len, dtype=torch.float32), freq)  # (T, hd/2)
    return angle.cos(), angle.sin()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, hd) with channels i and i + hd/2 rotated as a pair by its position's angle
    (the half-split layout of GPT-NeoX and LLaMA; RoFormer interleaves, which is a permutation)."""
    x1, x2 = x.chunk(2, dim=-1)  # (B, H, T, hd/2) each
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: GPTModel):
        super().__init__()
        d = cfg.width
        self.n_head = cfg.n_head
        self.dropout = cfg.dropout
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, C = h.shape
        q, k, v = (
            t.view(B, T, self.n_head, -1).transpose(1, 2) for t in self.qkv(h).split(C, dim=2)
        )  # (B, H, T, hd)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        p_drop = self.dropout if self.training else 0.0
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p_drop)  # (B, H, T, hd)
        return self.proj(att.transpose(1, 2).reshape(B, T, C))  # (B, T, C)


class FeedForward(nn.Module):
    """GELU: down(gelu(up h)). SwiGLU: down(silu(gate h) * up h), Shazeer (2020)."""

    def __init__(self, cfg: GPTModel):
        super().__init__()
        d, m = cfg.width, cfg.mlp_width
        self.up = nn.Linear(d, m, bias=False)
        self.gate = nn.Linear(d, m, bias=False) if cfg.mlp == "swiglu" else None
        self.down = nn.Linear(m, d, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.gate is None:
            return self.down(F.gelu(self.up(h)))
        return self.down(F.silu(self.gate(h)) * self.up(h))


class Block(nn.Module):
    def __init__(self, cfg: GPTModel):
        super().__init__()
        self.norm1, self.norm2 = nn.RMSNorm(cfg.width), nn.RMSNorm(cfg.width)
        self.attn = Attention(cfg)
        self.mlp = FeedForward(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        h = h + self.drop(self.attn(self.norm1(h), cos, sin))
        return h + self.drop(self.mlp(self.norm2(h)))


class GPT(nn.Module):
    """Decoder-only transformer (module docstring); `last_only` reads logits at the final position."""

    Config = GPTModel  # `model: {family: gpt, ...}`, as a model of the user's names its settings

    def __init__(self, cfg: GPTModel, vocab_size: int, n_out: int, seq_len: int):
        super().__init__()
        # mup (trainers/mup.py): width / base_width, which sets the per-layer learning rates, and
        # the readout multiplier base_width / width. None under sp.
        self.width_mult = cfg.width_mult
        self.base_width = cfg.base_width
        self.readout_mult = None if cfg.width_mult is None else cfg.base_width / cfg.width
        if cfg.tie_embeddings and n_out != vocab_size:
            raise ValueError(
                f"model.tie_embeddings: the readout can share the token embedding only when the "
                f"task predicts its own tokens (n_out == vocab_size); this task has vocab_size "
                f"{vocab_size} and n_out {n_out}: set tie_embeddings: false"
            )
        d = cfg.width
        self.n_layer = cfg.n_layer
        self.tok_emb = nn.Embedding(vocab_size, d)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm_f = nn.RMSNorm(d)
        self.unembed = nn.Linear(d, n_out, bias=False)
        if cfg.tie_embeddings:
            self.unembed.weight = self.tok_emb.weight  # (vocab_size, d): one parameter, counted once
        # Not state (persistent=False): recomputed from the shape, so checkpoints hold parameters only.
        cos, sin = rotary_tables(seq_len, cfg.head_dim)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, x: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        T = x.shape[1]
        cos, sin = self.cos[:T], self.sin[:T]  # (T, hd/2)
        h = self.drop(self.tok_emb(x))  # (B, T, C)
        for block in self.blocks:
            h = block(h, cos, sin)
        if last_only:
            h = h[:, -1]  # (B, C)
        logits = self.unembed(self.norm_f(h))  # (B, n_out) or (B, T, n_out)
        return logits if self.readout_mult is None else logits * self.readout_mult

    @torch.no_grad()
    def init_weights(self) -> None:
        """Every matrix N(0, 1/fan_in), as the repo's other models, except:
        - the residual branches' output projections (attn.proj, mlp.down) are scaled by
          1/sqrt(2 n_layer), so the residual stream's variance stays O(1) with depth (GPT-2,
          Radford et al. 2019; nanoGPT);
        - untied: tok_emb N(0, 1), a residual stream of unit RMS like the normalized inputs the
          blocks add to it, and unembed zero, so the first loss is exactly ln n_out (nanochat);
        - tied: the shared matrix keeps the readout's N(0, 1/d_model) (a zero one would never move);
          under mup N(0, 1/base_width), its sp std at base_width, constant in width as an
          embedding's is.
        RMSNorm gains start at 1. models.init_weights then multiplies everything by init_scale."""
        mup = self.width_mult is not None
        for module in self.modules():
            if isinstance(module, nn.Linear):
                fan_in = self.base_width if mup and module is self.unembed else module.in_features
                nn.init.normal_(module.weight, std=1 / math.sqrt(fan_in))
            elif isinstance(module, nn.RMSNorm):
                nn.init.ones_(module.weight)
        for block in self.blocks:
            for out in (block.attn.proj, block.mlp.down):
                out.weight.mul_(1 / math.sqrt(2 * self.n_layer))
        if self.unembed.weight is not self.tok_emb.weight:
            nn.init.normal_(self.tok_emb.weight, std=1.0)
            nn.init.zeros_(self.unembed.weight)


def param_counts(cfg: GPTModel, vocab_size: int, n_out: int) -> dict[str, int]:
    """Parameters by group, by formula (as models.ParamCounts.as_dict): with d = d_model and
    m = mlp_width, embedding = vocab_size d (+ d n_out untied); non_embedding = n_layer (two
    RMSNorm gains 2d, qkv 3d^2, proj d^2, MLP 2dm for gelu or 3dm for swiglu) + the final gain d."""
    d, m = cfg.width, cfg.mlp_width
    mlp = (3 if cfg.mlp == "swiglu" else 2) * d * m
    embedding = vocab_size * d + (0 if cfg.tie_embeddings else d * n_out)
    non_embedding = cfg.n_layer * (2 * d + 4 * d * d + mlp) + d
    return {"embedding": embedding, "non_embedding": non_embedding, "total": embedding + non_embedding}
