"""One training run: `train(spec, report=None, checkpoint_dir=None) -> TrainResult`.

The loop is inline and reads top to bottom. Everything random draws from generators seeded by
the spec, and the checkpoint holds every piece of state, so on CPU a run is bitwise repeatable
and a resumed run equals an uninterrupted one. What train_packed() shares with this loop lives
in core.py (set-up, bookkeeping, result), schedules.py (the learning rate) and checkpoint.py.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from trainers.checkpoint import CHECKPOINT_NAME, Checkpoint
from trainers.checkpoint import load as load_checkpoint
from trainers.core import (
    Accounting,
    Events,
    Report,
    RunLog,
    Status,
    TrainResult,
    batch_generator,
    build_run,
    reduce_metrics,
)
from trainers.models import count_params
from trainers.schedules import lr_at, lr_factor
from trainers.spec import TrainSpec
from trainers.tasks import IGNORE, TaskData

# Names other modules import from here, kept so that `from trainers.train import ...` still works.
__all__ = ["CHECKPOINT_NAME", "Events", "Report", "Status", "TrainResult", "evaluate", "evaluate_batches",
           "lr_factor", "train", "weight_norm"]


def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, data: TaskData,
             batch_size: int) -> dict[str, float]:
    """Loss in nats per labelled token, accuracy, and for sequence tasks the continuous
    metrics of Schaeffer et al. (2023): per-token accuracy and the answer's log-likelihood."""
    return evaluate_batches(model, ((x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)),
                            data)


def eval_batches(data: TaskData, split: str, batch_size: int, device: torch.device,
                 x: torch.Tensor, y: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One split's evaluation batches: slices of the tensors, or for a corpus its held-out windows
    and a fixed, evenly spread sample of as many training windows (the same at every evaluation)."""
    stream = data.stream
    if stream is None:
        return ((x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size))
    batches = (stream.val_batches(batch_size) if split == "val"
               else stream.train_eval_batches(stream.n_val_windows(), batch_size))
    return ((xb.to(device), yb.to(device)) for xb, yb in batches)


@torch.no_grad()
def evaluate_batches(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                     data: TaskData) -> dict[str, float]:
    """evaluate() over any batches: sums in float64 over all of them, then one reduction."""
    was_training = model.training
    model.eval()
    loss_sum = correct_tokens = exact = logprob_sum = 0.0
    n_tokens = n = 0
    for xb, yb in batches:
        n += len(xb)
        if data.target == "last":
            logits = model(xb, last_only=True).double()  # (B, V)
            logp = F.log_softmax(logits, dim=-1).gather(1, yb[:, None])[:, 0]  # (B,)
            right = logits.argmax(-1) == yb
            loss_sum -= logp.sum().item()
            correct_tokens += right.sum().item()
            exact += right.sum().item()
            n_tokens += len(yb)
            logprob_sum += logp.sum().item()
        else:
            logits = model(xb).double()  # (B, T, V)
            mask = yb != IGNORE
            logp = F.log_softmax(logits, dim=-1).gather(2, yb.clamp(min=0)[..., None])[..., 0] * mask  # (B, T)
            right = (logits.argmax(-1) == yb) & mask
            loss_sum -= logp.sum().item()
            correct_tokens += right.sum().item()
            exact += (right.sum(1) == mask.sum(1)).sum().item()
            n_tokens += mask.sum().item()
            logprob_sum += logp.sum().item()
    model.train(was_training)
    return reduce_metrics(data, n, loss_sum, correct_tokens, exact, n_tokens, logprob_sum)


def weight_norm(model: torch.nn.Module) -> float:
    return math.sqrt(sum(p.detach().double().pow(2).sum().item() for p in model.parameters()))


def train(spec: TrainSpec, report: Report | None = None,
          checkpoint_dir: str | os.PathLike | None = None) -> TrainResult:
    t0 = time.perf_counter()
    cfg = spec.train
    torch.set_num_threads(cfg.threads)
    device = torch.device(spec.device)
    data, model = build_run(spec, device)  # the data and the init, from the seed
    counts = count_params(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                                  weight_decay=cfg.weight_decay)
    batch_gen = batch_generator(spec.seed)
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    x_val, y_val = data.x_val.to(device), data.y_val.to(device)
    stream = data.stream  # a corpus: windows are read from disk a batch at a time
    n = data.n_examples
    full_batch = stream is None and (cfg.batch_size is None or cfg.batch_size >= n)
    last_only = data.target == "last"
    ema = [torch.zeros_like(p) for p in model.parameters()] if cfg.grokfast else None
    log = RunLog(cfg, Accounting.of(spec, data), report)  # history, events, stop rules

    step = 0
    perm, cursor = torch.arange(n), n  # an exhausted epoch: the first batch draws a new one
    ckpt, note = None, None
    if checkpoint_dir is not None:
        ckpt = Path(checkpoint_dir) / CHECKPOINT_NAME
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        saved, note = load_checkpoint(ckpt, spec.digest())  # None, and why, if unusable
        if saved is not None:
            model.load_state_dict(saved.model)
            optimizer.load_state_dict(saved.optimizer)
            torch.set_rng_state(saved.torch_rng)
            batch_gen.set_state(saved.batch_rng)
            ema = saved.ema if ema is not None else None
            step, perm, cursor = saved.step, saved.perm, saved.cursor
            log.restore(saved.log, saved.finished)  # a run that already ended stays ended
    resumed_from, ended_before = step, log.outcome is not None

    def save(finished: tuple[Status, str] | None = None) -> None:
        Checkpoint(spec.digest(), step, model.state_dict(), optimizer.state_dict(), torch.get_rng_state(),
                   batch_gen.get_state(), ema, perm, cursor, log.state(), finished).save(ckpt)

    eval_time = 0.0
    model.train()
    while step < cfg.steps and log.outcome is None:
        lr = lr_at(cfg, step)  # trainers/schedules.py: warmup, then the schedule
        for group in optimizer.param_groups:
            group["lr"] = lr
        if full_batch:
            xb, yb = x_train, y_train
        else:
            if cursor + cfg.batch_size > n:
                perm, cursor = torch.randperm(n, generator=batch_gen), 0
            idx = perm[cursor:cursor + cfg.batch_size]
            cursor += cfg.batch_size
            if stream is None:
                xb, yb = x_train[idx], y_train[idx]
            else:  # one epoch reads each window once: D tokens (trainers/corpus/data.py)
                xb, yb = (t.to(device) for t in stream.windows("train", idx))
        logits = model(xb, last_only=last_only)
        loss = F.cross_entropy(logits.flatten(0, -2), yb.flatten(), ignore_index=IGNORE)
        step += 1
        if log.on_loss(step, loss.item()):  # diverged
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if ema is not None:
            # Grokfast-EMA (Lee et al. 2024): amplify the slow component of the gradient.
            for p, m in zip(model.parameters(), ema):
                if p.grad is not None:
                    m.mul_(cfg.grokfast_alpha).add_(p.grad, alpha=1 - cfg.grokfast_alpha)
                    p.grad.add_(m, alpha=cfg.grokfast_lamb)
        optimizer.step()

        if step % cfg.eval_every == 0 or step == cfg.steps:
            t_eval = time.perf_counter()
            bs = cfg.eval_batch_size
            tr = evaluate_batches(model, eval_batches(data, "train", bs, device, x_train, y_train), data)
            va = evaluate_batches(model, eval_batches(data, "val", bs, device, x_val, y_val), data)
            norm = weight_norm(model)
            eval_time += time.perf_counter() - t_eval
            if log.on_eval(step, tr, va, norm, lr):  # events, success-stop, divergence, report hook
                break
        if ckpt is not None and cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
            save()

    if ckpt is not None and not ended_before:
        # The final state, marked finished: a run asked again after it ended (its driver died
        # before recording it) returns this result instead of training again.
        save(finished=log.finish())
    return log.result(step, counts.as_dict(), data, time.perf_counter() - t0, eval_time, resumed_from, note)
