"""FLOPs of one training example for the built-in models, in closed form.

The rule is Kaplan et al. (2020, Table 1): a forward pass costs 2N per position plus the
attention term, and the backward pass twice the forward (a gradient for each matmul's input and
one for its weight). A multiply-add counts 2 FLOPs.

The N convention here, `n_matmul`: the weights of every matrix multiply the model does, that is
each nn.Linear's weight, the unembedding (readout) included. Kaplan's N leaves the unembedding
out; Porian et al. (2024) trace part of the Kaplan-Chinchilla gap to that, and it is real work
(2 d_model n_out per unembedded position). Not counted: embedding and position lookups (gathers,
no arithmetic), biases, LayerNorm, ReLU, softmax, dropout and residual adds (elementwise, O(d)
per position against O(d^2) for the matmuls; torch's FlopCounterMode ignores them too). So
`n_matmul` differs from models.count_params: it adds the unembedding to the non-embedding count
and drops the biases and LayerNorm gains.

Attention: we count the full T x T score matrix, QK^T and the weighted sum of V, each
2 T^2 d_model per layer, although the mask is causal. That is what the math path of
F.scaled_dot_product_attention computes and what FlopCounterMode's sdpa rules count ("we aren't
accounting for causal attention here"). Per token it is 4 n_layer n_ctx d_model, twice Kaplan's
2 n_layer n_ctx d_attn, which is the causal average (each query sees n_ctx / 2 keys on average).
n_head does not change the count (d_attn = d_model here).

last_only (target "last"): models.Block runs the last block's qkv on every position (k and v
are needed there), then one query, and proj, the MLP and the unembedding on one position only.

The gpt (trainers/gpt.py) counts the same way: qkv, proj and the MLP's matrices (two for gelu,
three for swiglu) per block, d_attn = n_head x head_dim = d_model. Rotary embeddings, RMSNorm and
the SwiGLU product are elementwise and not counted. With last_only it runs every block on all
positions, then the final norm and the readout on the last position only, so only the
unembedding shrinks (to one position). A tied readout is still a matmul of d_model x n_out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from trainers.models import GPTModel, MLPModel, TransformerModel, build_model

BACKWARD_FACTOR = 2  # Kaplan et al. (2020): backward = 2 x forward (input and weight gradients)


@dataclass(frozen=True)
class FlopCount:
    """FLOPs of one example: forward, backward, and the forward's breakdown."""

    forward: float  # one example's forward pass
    backward: float  # its backward pass
    tokens: int  # positions per example (seq_len)
    n_matmul: int  # N: matmul weights, unembedding included (module docstring)
    matmul: float  # forward FLOPs of the weight matmuls, unembedding excluded
    attention: float  # forward FLOPs of QK^T and the weighted sum of V
    unembed: float  # forward FLOPs of the unembedding / readout

    @property
    def total(self) -> float:
        return self.forward + self.backward

    @property
    def per_token(self) -> float:
        """Training FLOPs per position: about 6N + 12 n_layer n_ctx d_model for a sequence model."""
        return self.total / self.tokens

    def as_dict(self) -> dict[str, float]:
        return {
            "forward": self.forward,
            "backward": self.backward,
            "total": self.total,
            "per_token": self.per_token,
            "tokens": self.tokens,
            "n_matmul": self.n_matmul,
            "matmul": self.matmul,
            "attention": self.attention,
            "unembed": self.unembed,
        }


def _count(n_matmul: int, matmul: float, attention: float, unembed: float, tokens: int) -> FlopCount:
    forward = matmul + attention + unembed
    return FlopCount(
        forward=forward,
        backward=BACKWARD_FACTOR * forward,
        tokens=tokens,
        n_matmul=n_matmul,
        matmul=matmul,
        attention=attention,
        unembed=unembed,
    )


def _transformer(cfg: TransformerModel, n_out: int, seq_len: int, last_only: bool) -> FlopCount:
    d, m, T, L = cfg.d_model, cfg.mlp_width, seq_len, cfg.n_layer
    qkv, proj, mlp = 3 * d * d, d * d, 2 * d * m  # weights per block: qkv, proj, fc_in + fc_out
    full_block_matmul = 2 * T * (qkv + proj + mlp)
    full_block_attention = 2 * (2 * T * T * d)  # QK^T (T x d by d x T) and weights @ V
    if last_only:
        # The last block: qkv on all T positions, one query over T keys, the rest on one position.
        last_matmul = 2 * (T * qkv + proj + mlp)
        last_attention = 2 * (2 * T * d)
        unembedded = 1
    else:
        last_matmul, last_attention, unembedded = full_block_matmul, full_block_attention, T
    matmul = (L - 1) * full_block_matmul + last_matmul
    attention = (L - 1) * full_block_attention + last_attention
    unembed = 2 * d * n_out * unembedded
    n_matmul = L * (qkv + proj + mlp) + d * n_out
    return _count(n_matmul, matmul, attention, unembed, T)


def _gpt(cfg: GPTModel, n_out: int, seq_len: int, last_only: bool) -> FlopCount:
    d, T, L = cfg.width, seq_len, cfg.n_layer
    mlp = (3 if cfg.mlp == "swiglu" else 2) * d * cfg.mlp_width  # up (+ gate) + down
    block = 3 * d * d + d * d + mlp  # weights per block: qkv, proj, MLP
    attention = L * 2 * (2 * T * T * d)  # QK^T and weights @ V over the full T x T matrix
    unembed = 2 * d * n_out * (1 if last_only else T)  # every block runs on all T (module docstring)
    return _count(L * block + d * n_out, L * 2 * T * block, attention, unembed, T)


def _mlp(cfg: MLPModel, n_out: int, seq_len: int) -> FlopCount:
    # models.MLP: the seq_len embeddings concatenated, n_hidden ReLU layers, one readout.
    hidden = seq_len * cfg.d_embed * cfg.d_hidden + (cfg.n_hidden - 1) * cfg.d_hidden**2
    readout = cfg.d_hidden * n_out
    return _count(hidden + readout, 2 * hidden, 0, 2 * readout, seq_len)


def _own(model_cfg, vocab_size: int, n_out: int, seq_len: int) -> FlopCount:
    """A model of the user's, by Kaplan et al.'s rule alone: 2N FLOPs per position forward, N its
    parameters outside nn.Embedding lookups (its readout included, as n_matmul here), at every
    position; attention scores (no parameters) are not counted."""
    with torch.device("meta"):
        model = build_model(model_cfg, vocab_size, n_out, seq_len)
    lookups = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    n = sum(p.numel() for p in model.parameters() if id(p) not in lookups)
    return _count(n, 2 * seq_len * n, 0, 0, seq_len)


def flops_per_example(
    model_cfg: TransformerModel | GPTModel | MLPModel,
    vocab_size: int,
    n_out: int,
    seq_len: int,
    last_only: bool,
) -> FlopCount:
    """FLOPs to train on one example of `seq_len` positions (arguments as models.build_model).

    `vocab_size` changes nothing (lookups cost no FLOPs); it is taken so that the call reads as
    build_model's. `last_only` is the trainer's `data.target == "last"`; the MLP always reads
    out once, so it ignores it.
    """
    if vocab_size < 1 or n_out < 1 or seq_len < 1:
        raise ValueError(f"vocab_size, n_out and seq_len must be >= 1, got {vocab_size}, {n_out}, {seq_len}")
    if model_cfg.family == "transformer":
        return _transformer(model_cfg, n_out, seq_len, last_only)
    if model_cfg.family == "gpt":
        return _gpt(model_cfg, n_out, seq_len, last_only)
    if model_cfg.family == "mlp":
        return _mlp(model_cfg, n_out, seq_len)
    if ":" in model_cfg.family:  # a model of the user's (trainers/own_code.py: OwnModel)
        return _own(model_cfg, vocab_size, n_out, seq_len)
    raise ValueError(f"no FLOP formula for model family {model_cfg.family!r}")


def flops_for_task(model_cfg: TransformerModel | GPTModel | MLPModel, data) -> FlopCount:
    """flops_per_example for a tasks.TaskData, with last_only read from its target."""
    return flops_per_example(
        model_cfg, data.vocab_size, data.n_out, data.seq_len, last_only=data.target == "last"
    )
