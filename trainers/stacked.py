"""The arithmetic of a pack: K runs' tensors stacked along a leading axis, each op per run.

Every function here reproduces, for each run k, what train() computes for that run alone,
rounding included (checked bitwise on CPU by tests/unit/test_packed.py): AdamW and Grokfast with
per-run hyperparameters as (K, 1, ...) columns, and the evaluation's float64 sums.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from trainers.core import reduce_metrics
from trainers.spec import TrainConfig
from trainers.tasks import IGNORE, TaskData

# Evaluation logits are float64 (as in train.evaluate); runs are evaluated a few at a time so
# that K of them never hold more than about this much at once.
EVAL_BYTES = 256 * 2**20


def columns(rows: list[list[float]], like: torch.Tensor) -> torch.Tensor:
    """Per-run scalars, one row per quantity, as float32 on the pack's device in one copy:
    (Q, K). Scalars and columns round alike: torch casts a Python scalar to the tensor's dtype."""
    return torch.tensor(rows, dtype=like.dtype, device=like.device)


def col(row: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(K,) -> (K, 1, ...), to broadcast against a stacked (K, *shape) tensor."""
    return row.view(-1, *[1] * (like.dim() - 1))


def grokfast_(grads: list[torch.Tensor | None], ema: list[torch.Tensor], cfgs: list[TrainConfig]) -> None:
    """Grokfast-EMA (Lee et al. 2024) in train()'s order. A run without it keeps a zero filter
    (alpha 1, lamb 0), which leaves its gradient exactly as it was."""
    alpha = [c.grokfast_alpha if c.grokfast else 1.0 for c in cfgs]
    lamb = [c.grokfast_lamb if c.grokfast else 0.0 for c in cfgs]
    h = columns([alpha, [1 - a for a in alpha], lamb], ema[0])
    for g, m in zip(grads, ema):
        if g is not None:
            # m.mul_(alpha).add_(g, alpha=1 - alpha); g.add_(m, alpha=lamb), per run.
            m.mul_(col(h[0], m)).addcmul_(g, col(h[1], m))
            g.addcmul_(m, col(h[2], m))


def adamw_(
    params: list[torch.Tensor],
    grads: list[torch.Tensor | None],
    exp_avg: list[torch.Tensor],
    exp_avg_sq: list[torch.Tensor],
    cfgs: list[TrainConfig],
    lrs: list[float],
    step: int,
) -> None:
    """torch.optim.AdamW's single-tensor step (its CPU default), per run. Each op rounds as the
    reference's does (checked bitwise on CPU): a Python scalar becomes a float32 column,
    `add(x, alpha=a)` becomes `addcmul(x, a)` (both fuse the multiply-add), `addcmul(g, g,
    value=c)` becomes `addcmul(g * c, g)` and `addcdiv(m, d, value=-s)` becomes `addcdiv(m * -s, d)`."""
    h = columns(
        [
            [1 - lr * c.weight_decay for lr, c in zip(lrs, cfgs)],  # decoupled weight decay
            [1 - c.betas[0] for c in cfgs],
            [c.betas[1] for c in cfgs],
            [1 - c.betas[1] for c in cfgs],
            [(1 - c.betas[1] ** step) ** 0.5 for c in cfgs],  # sqrt of bias correction 2
            [c.eps for c in cfgs],
            [-lr / (1 - c.betas[0] ** step) for lr, c in zip(lrs, cfgs)],
        ],
        params[0],
    )  # -step size
    for p, g, m, v in zip(params, grads, exp_avg, exp_avg_sq):
        if g is None:  # no gradient: AdamW leaves the parameter, weight decay included, alone
            continue
        decay, one_minus_beta1, beta2, one_minus_beta2, bc2_sqrt, eps, neg_step = (col(r, p) for r in h)
        p.mul_(decay)
        m.lerp_(g, one_minus_beta1)
        v.mul_(beta2).addcmul_(g * one_minus_beta2, g)
        denom = (v.sqrt() / bc2_sqrt).add_(eps)
        p.addcdiv_(m * neg_step, denom)


@torch.no_grad()
def evaluate(
    forward, params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor, data: TaskData, batch_size: int
) -> list[dict[str, float]]:
    """train.evaluate for each run of the pack: the same batches, the same float64 sums."""
    K, n = x.shape[0], x.shape[1]
    per_run = min(batch_size, n) * (y.shape[2] if y.dim() == 3 else 1) * data.n_out * 8 * 3
    group = max(1, EVAL_BYTES // per_run)
    sums = [dict(loss=0.0, correct=0, exact=0, tokens=0, logprob=0.0) for _ in range(K)]
    for j in range(0, K, group):
        runs = range(j, min(j + group, K))
        p = [t[j : j + group] for t in params]
        for i in range(0, n, batch_size):
            xb, yb = x[j : j + group, i : i + batch_size], y[j : j + group, i : i + batch_size]
            logits = forward(p, xb).double()  # (G, B, V) or (G, B, T, V)
            if data.target == "last":
                logp = F.log_softmax(logits, dim=-1).gather(2, yb[..., None])[..., 0]  # (G, B)
                right = logits.argmax(-1) == yb
                mask = torch.ones_like(yb, dtype=torch.bool)
                exact = right.sum(1)
            else:
                mask = yb != IGNORE
                logp = F.log_softmax(logits, dim=-1).gather(3, yb.clamp(min=0)[..., None])[..., 0] * mask
                right = (logits.argmax(-1) == yb) & mask
                exact = (right.sum(2) == mask.sum(2)).sum(1)
            # One sum per run, as train.evaluate takes it: a row-wise sum may round differently.
            logp_sums = torch.stack([logp[k].sum() for k in range(len(runs))]).tolist()
            counts = zip(right.flatten(1).sum(1).tolist(), exact.tolist(), mask.flatten(1).sum(1).tolist())
            for s, lp, (c, e, t) in zip((sums[k] for k in runs), logp_sums, counts):
                s["loss"] -= lp
                s["logprob"] += lp
                s["correct"] += c
                s["exact"] += e
                s["tokens"] += t
    return [
        reduce_metrics(data, n, s["loss"], s["correct"], s["exact"], s["tokens"], s["logprob"]) for s in sums
    ]


def weight_norms(params: list[torch.Tensor]) -> list[float]:
    """parallel.Layout.weight_norm per run: float64 sums of squares, parameter by parameter."""
    K = params[0].shape[0]
    totals = [0.0] * K
    for p in params:
        sq = p.detach().double().pow(2)
        for k, v in enumerate(torch.stack([sq[k].sum() for k in range(K)]).tolist()):
            totals[k] += v
    return [math.sqrt(t) for t in totals]
