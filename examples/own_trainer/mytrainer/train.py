"""Modular addition, (a + b) mod p, learned by a small MLP in plain PyTorch: a training loop of
its own, run by grokscale through the trainer protocol (`trainer: mytrainer.train:run`).

grokscale calls `run(config, report, checkpoint_dir)` once per run: `config` holds the grid's N
entry (here a shape, {width: ...}), D (the fraction of all p^2 pairs trained on), the seed, the
budget and the study's own task/model/train sections; `report(metrics)` answers True when the
run should stop; the checkpoint in `checkpoint_dir` lets a run whose worker died resume.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from trainers.protocol import RunConfig, count_params_by_group

CHECKPOINT = "mytrainer.pt"


class AdditionMLP(nn.Module):
    """Embed a and b, concatenate, one hidden layer, read out p logits."""

    def __init__(self, p: int, d_embed: int, width: int):
        super().__init__()
        self.tok_emb = nn.Embedding(p, d_embed)
        self.hidden = nn.Linear(2 * d_embed, width)
        self.unembed = nn.Linear(width, p)  # named as grokscale's convention counts it: embedding

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:  # (B, 2) -> (B, p)
        h = self.tok_emb(pairs).flatten(1)  # (B, 2 * d_embed)
        return self.unembed(F.relu(self.hidden(h)))


def make_data(p: int, train_fraction: float, seed: int):
    """All p^2 pairs, split by a seeded permutation: the first train_fraction of them train."""
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    x = torch.stack([a.flatten(), b.flatten()], 1)  # (p^2, 2)
    y = (x[:, 0] + x[:, 1]) % p
    order = torch.randperm(p * p, generator=torch.Generator().manual_seed(seed))
    n_train = int(train_fraction * p * p)
    return x[order[:n_train]], y[order[:n_train]], x[order[n_train:]], y[order[n_train:]]


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    logits = model(x)
    return F.cross_entropy(logits, y).item(), (logits.argmax(-1) == y).float().mean().item()


def save_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer, step: int) -> None:
    """Whole or not at all: written beside, then renamed over the old one (a worker killed
    mid-write leaves the previous checkpoint)."""
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step}, tmp)
    tmp.replace(path)


def run(config: RunConfig, report, checkpoint_dir: str) -> dict:
    p = int(config.task.get("p", 23))
    width = int(config.n["width"]) if isinstance(config.n, dict) else int(config.n)
    torch.manual_seed(config.seed)
    x_tr, y_tr, x_va, y_va = make_data(p, config.d, config.seed)
    model = AdditionMLP(p, int(config.model.get("d_embed", 16)), width)
    opt = torch.optim.AdamW(
        model.parameters(),
        lr=float(config.train.get("lr", 3e-3)),
        weight_decay=float(config.train.get("weight_decay", 1.0)),
    )
    step, path = 0, Path(checkpoint_dir) / CHECKPOINT
    if path.exists():  # a retry of this run: carry on where its last checkpoint left it
        state = torch.load(path, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
    pause = float(config.train.get("sleep_per_step", 0.0))  # only to make a demo run last
    while step < config.steps:
        loss = F.cross_entropy(model(x_tr), y_tr)  # full batch
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        time.sleep(pause)
        if step % config.eval_every == 0 or step == config.steps:
            train_loss, train_acc = evaluate(model, x_tr, y_tr)
            val_loss, val_acc = evaluate(model, x_va, y_va)
            stop = report(
                {
                    "step": step,
                    "train_loss": train_loss,
                    "train_acc": train_acc,
                    "val_loss": val_loss,
                    "val_acc": val_acc,
                }
            )
            # Saved after its evaluation is reported, so a retry never resumes past an unreported one.
            save_checkpoint(path, model, opt, step)
            if stop:
                break
    val_loss, val_acc = evaluate(model, x_va, y_va)
    return {
        "val_loss": val_loss,
        "val_acc": val_acc,
        "n_train": len(y_tr),
        "n_params": count_params_by_group(model),
    }
