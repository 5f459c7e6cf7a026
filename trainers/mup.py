"""μP, the maximal update parametrization (Yang et al. 2022, "Tensor Programs V"), for the built-in
transformer and gpt: `model: {parametrization: mup, base_width: 128}`. The default, "sp", is
torch's usual parametrization, bit for bit what the models always did.

What it guarantees. Under AdamW at a fixed learning rate, the typical size of every activation
(the embedding output, each block's output, the logits) stays the same as the width grows, so a
learning rate tuned at one width holds at another. Under sp the logits grow about in proportion
to the width after a few Adam steps. `coordinates()` measures this, the "coordinate check" with
which Yang et al. verify an implementation; tests/unit/test_mup.py asserts it and
docs/results/mup_coordinate_check.py draws docs/img/mup_coordinate_check.png.

The rules for Adam, with m = width / base_width (width: the model's d_model):

    parameter                         init                      multiplier        AdamW lr   weight decay
    input: tok_emb, pos_emb           sp's std at base          1                 lr         wd
    hidden matrices (attention, MLP)  N(0, 1/fan_in), as sp     1                 lr / m     wd x m
    vectors: biases, norm gains       as sp (0, 1)              1                 lr         wd
    readout: unembed                  zero                      1/m on its output lr         wd
    attention logits q.k              -                         1/d_head x sqrt(d_head at base)

"sp's std at base" is the std sp draws at width == base_width, held there for every width: the
transformer's embeddings N(0, 1/base_width), the gpt's tok_emb N(0, 1) (constant in sp too).
This is the formulation with an output multiplier that Tensor Programs V gives beside its main
table and microsoft/mup implements (MuReadout: output x base/width; MuAdamW: lr / m for the
matrices with two width dimensions). The paper's main table (Table 3) writes the same
parametrization without multipliers, as readout init variance 1/fan_in^2 and Adam lr 1/fan_in;
for Adam, whose step sees the gradient only through ratios, the two agree up to eps. With the
multiplier, input and output weights have the same init and lr, so they may share a matrix.
Choices within it:
- The readout starts at zero, a variant the paper suggests (and what the gpt's untied readout
  already does in sp), so every width starts from the same function, logits 0. Its
  alternative, a constant non-zero std, gives logits at init that shrink as 1/sqrt(m): measured
  here, it bends the transformer's coordinate check (block outputs' slope -0.2 instead of 0).
  A tied gpt's shared matrix cannot start at zero: it is drawn N(0, 1/base_width), its sp std at
  base, constant in width.
- Attention: 1/d_head with the constant sqrt(d_head at base), so that at base it is sp's. The
  transformer keeps n_head and grows d_head = d_model / n_head (as resolve_shape does; d_head at
  base is base_width / n_head); the gpt keeps head_dim and grows its heads, so its scale is sp's
  1/sqrt(head_dim) at every width.
- Weight decay: torch's AdamW decays p by lr x wd per step (decoupled from the gradient, but
  multiplied by the lr). Scaling wd by m where lr is divided by m keeps that per-step shrink
  lr x wd what sp has, at every width and in every group, as MuAdamW does; without it the decay
  of the hidden matrices would fade as 1/m.
- At width == base_width, mup is sp except for the transformer's readout, which starts at zero:
  every other parameter is drawn as in sp (bitwise), the multipliers are 1 and the param groups
  have sp's lr and wd. The gpt, untied or tied, is sp bit for bit, in training too (tested).
- The width is one number: the transformer's d_mlp (and the gpt's mlp_width) is taken to grow
  with d_model, as resolve_shape keeps d_mlp / d_model; an explicit d_mlp fixed while d_model
  grows would give its output matrix lr / m where μP asks for lr.
Depth is not covered (the gpt's n_layer knob grows depth and width together; μP transfers only
across width), nor the query's zero init the paper also suggests, nor the mlp family or a model
of the user's (they stay sp).

The learning rates are AdamW param groups (`param_groups`), each holding its `lr_scale`:
train() sets `group["lr"] = lr x lr_scale` at every step, so the schedule scales all of them.
Trial packing (trainers/packed.py) writes its own AdamW and refuses mup runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from trainers.models import EMBEDDING_MODULES, GPTModel, TransformerModel, build_model, init_weights
from trainers.spec import TrainConfig


def is_hidden(name: str, p: torch.Tensor) -> bool:
    """A matrix whose both dimensions grow with the width: every 2-D parameter but the
    vocabulary-sized ones (tok_emb, pos_emb, unembed: one width dimension each)."""
    return p.dim() == 2 and name.split(".")[0] not in EMBEDDING_MODULES


def param_groups(model: nn.Module, lr: float, weight_decay: float) -> list[dict] | None:
    """AdamW's groups under mup (module docstring): the hidden matrices at lr / m and weight
    decay x m, everything else at lr and wd, each group with its `lr_scale`. None for a model in
    sp (or one without a parametrization): its parameters are one group, as they always were."""
    m = getattr(model, "width_mult", None)
    if m is None:
        return None
    hidden, rest = [], []
    for name, p in model.named_parameters():  # a tied matrix is named once, as tok_emb
        (hidden if is_hidden(name, p) else rest).append(p)
    return [
        {"params": hidden, "lr": lr / m, "lr_scale": 1 / m, "weight_decay": weight_decay * m},
        {"params": rest, "lr": lr, "lr_scale": 1.0, "weight_decay": weight_decay},
    ]


@dataclass(frozen=True)
class Coordinate:
    """The mean |x| of one activation's coordinates (its l1 norm per coordinate), averaged over
    seeds, at one width after `step` AdamW updates (0: at init)."""

    parametrization: str
    width: int
    step: int
    site: str  # "embedding" (what the first block reads), "block.<i>" (its output), "logits"
    size: float


def at_width(model: TransformerModel | GPTModel, width: int) -> TransformerModel | GPTModel:
    """The model at d_model == width; a transformer's explicit d_mlp keeps its ratio to d_model."""
    update: dict = {"d_model": width}
    if isinstance(model, TransformerModel) and model.d_mlp is not None:
        update["d_mlp"] = max(1, round(model.d_mlp * width / model.d_model))
    return model.model_copy(update=update)


def coordinates(
    model: TransformerModel | GPTModel,
    widths: Sequence[int],
    steps: int = 4,
    lr: float = 1e-2,
    seeds: Sequence[int] = (0, 1),
    vocab_size: int = 32,
    seq_len: int = 16,
    batch_size: int = 8,
    threads: int = 1,
) -> list[Coordinate]:
    """The coordinate check: each width trained `steps` AdamW steps (betas and eps as
    TrainConfig's, no weight decay, a constant lr) on one fixed batch of random next-token data,
    recording every site's mean |x| on that batch before each step and after the last. Like
    train(), it sets torch's intra-op threads (`threads`), so the numbers do not depend on the host."""
    torch.set_num_threads(threads)
    sums: dict[tuple[int, int, str], float] = {}
    for seed in seeds:
        data = torch.Generator().manual_seed(seed)
        x = torch.randint(vocab_size, (batch_size, seq_len), generator=data)  # (B, T)
        y = torch.randint(vocab_size, (batch_size, seq_len), generator=data)  # (B, T)
        for width in widths:
            torch.manual_seed(seed)
            net = build_model(at_width(model, width), vocab_size, vocab_size, seq_len)
            init_weights(net, 1.0)
            for (step, site), size in _train_and_record(net, x, y, steps, lr).items():
                sums[width, step, site] = sums.get((width, step, site), 0.0) + size
    return [
        Coordinate(model.parametrization, w, t, site, total / len(seeds))
        for (w, t, site), total in sums.items()
    ]


def _train_and_record(
    net: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float
) -> dict[tuple[int, str], float]:
    """Mean |x| of each site, by (step, site), over `steps` AdamW steps on (x, y)."""
    groups = param_groups(net, lr, 0.0)
    opt = torch.optim.AdamW(
        net.parameters() if groups is None else groups,
        lr=lr,
        betas=TrainConfig().betas,
        eps=TrainConfig().eps,
        weight_decay=0.0,
    )
    seen: dict[str, torch.Tensor] = {}

    def record(site: str):
        return lambda _module, _inputs, out: seen.__setitem__(site, out)

    sites = [("embedding", net.drop)] + [(f"block.{i}", block) for i, block in enumerate(net.blocks)]
    hooks = [module.register_forward_hook(record(site)) for site, module in sites]
    sizes = {}
    for step in range(steps + 1):
        seen["logits"] = logits = net(x)  # (B, T, V)
        sizes.update({(step, site): out.detach().abs().mean().item() for site, out in seen.items()})
        if step == steps:
            break
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(logits.flatten(0, 1), y.flatten()).backward()
        opt.step()
    for hook in hooks:
        hook.remove()
    return sizes


def slope(widths: Sequence[float], sizes: Sequence[float]) -> float | None:
    """The least-squares slope of log(size) over log(width): 0 when a size is flat in width, 1
    when it is proportional to it. None for fewer than two widths or a size that is not > 0."""
    if len(set(widths)) < 2 or any(not s > 0 or not math.isfinite(s) for s in sizes):
        return None
    xs, ys = [math.log(w) for w in widths], [math.log(s) for s in sizes]
    x0, y0 = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - x0) * (y - y0) for x, y in zip(xs, ys)) / sum((x - x0) ** 2 for x in xs)


def slopes(coords: Sequence[Coordinate]) -> dict[tuple[str, str, int], float | None]:
    """slope() of each (parametrization, site, step) across its widths."""
    by: dict[tuple[str, str, int], list[Coordinate]] = {}
    for c in coords:
        by.setdefault((c.parametrization, c.site, c.step), []).append(c)
    return {key: slope([c.width for c in cs], [c.size for c in cs]) for key, cs in by.items()}
