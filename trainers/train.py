"""One training run: `train(spec, report=None, checkpoint_dir=None) -> TrainResult`.

The loop is inline and reads top to bottom. Everything random draws from generators seeded by
the spec, and the checkpoint holds every piece of state, so on CPU a run is bitwise repeatable
and a resumed run equals an uninterrupted one. What train_packed() shares with this loop lives
in core.py (set-up, bookkeeping, result), schedules.py (the learning rate) and checkpoint.py.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from trainers import machine, parallel
from trainers.checkpoint import CHECKPOINT_NAME, Checkpoint
from trainers.checkpoint import load as load_checkpoint
from trainers.core import (
    Accounting,
    Events,
    Report,
    RunLog,
    Status,
    Throughput,
    TrainResult,
    batch_generator,
    build_run,
    reduce_metrics,
)
from trainers.device import (
    Runtime,
    autocast,
    configure,
    determinism,
    device_name,
    grad_scaler,
    peak_flops,
    resolve_precision,
    should_compile,
)
from trainers.device import optimizer as build_optimizer
from trainers.models import count_params
from trainers.schedules import lr_at, lr_factor
from trainers.spec import TrainSpec
from trainers.tasks import IGNORE, TaskData
from trainers.world import World

# Names other modules import from here, kept so that `from trainers.train import ...` still works.
__all__ = [
    "CHECKPOINT_NAME",
    "Events",
    "Report",
    "Status",
    "TrainResult",
    "evaluate",
    "evaluate_batches",
    "lr_factor",
    "train",
]


def evaluate(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, data: TaskData, batch_size: int
) -> dict[str, float]:
    """Loss in nats per labelled token, accuracy, and for sequence tasks the continuous
    metrics of Schaeffer et al. (2023): per-token accuracy and the answer's log-likelihood."""
    return evaluate_batches(
        model, ((x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size)), data
    )


def eval_batches(
    data: TaskData, split: str, batch_size: int, device: torch.device, x: torch.Tensor, y: torch.Tensor
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One split's evaluation batches: slices of the tensors, or for a corpus its held-out windows
    and a fixed, evenly spread sample of as many training windows (the same at every evaluation)."""
    stream = data.stream
    if stream is None:
        return ((x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size))
    batches = (
        stream.val_batches(batch_size)
        if split == "val"
        else stream.train_eval_batches(stream.n_val_windows(), batch_size)
    )
    return ((xb.to(device), yb.to(device)) for xb, yb in batches)


@torch.no_grad()
def evaluate_batches(
    model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], data: TaskData
) -> dict[str, float]:
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
            logp = (
                F.log_softmax(logits, dim=-1).gather(2, yb.clamp(min=0)[..., None])[..., 0] * mask
            )  # (B, T)
            right = (logits.argmax(-1) == yb) & mask
            loss_sum -= logp.sum().item()
            correct_tokens += right.sum().item()
            exact += (right.sum(1) == mask.sum(1)).sum().item()
            n_tokens += mask.sum().item()
            logprob_sum += logp.sum().item()
    model.train(was_training)
    return reduce_metrics(data, n, loss_sum, correct_tokens, exact, n_tokens, logprob_sum)


def train(
    spec: TrainSpec, report: Report | None = None, checkpoint_dir: str | os.PathLike | None = None
) -> TrainResult:
    """One run, in this process or, when torch.distributed is initialized, as one rank of a
    data-parallel group (trainers/world.py). The result is rank 0's; other ranks' results are
    partial (no history) and meant to be dropped."""
    t0 = time.perf_counter()
    cfg = spec.train
    torch.set_num_threads(cfg.threads)
    world = World.current()
    device = torch.device(spec.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # a group's worker set its own
    configure(device)
    precision = resolve_precision(cfg, device)
    data, model = build_run(spec, device)  # the data and the init, from the seed
    counts = count_params(model)
    scaler = grad_scaler(device, precision)
    batch_gen = batch_generator(spec.seed)
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    x_val, y_val = data.x_val.to(device), data.y_val.to(device)
    stream = data.stream  # a corpus: windows are read from disk a batch at a time
    n = data.n_examples
    batch = cfg.batch_examples(data.seq_len)
    full_batch = stream is None and (batch is None or batch >= n)
    last_only = data.target == "last"
    accounting = Accounting.of(spec, data)
    log = RunLog(cfg, accounting, report if world.is_main else None)  # history, events, stop rules
    if world.size > accounting.examples_per_step:
        raise ValueError(
            f"a batch of {accounting.examples_per_step} examples cannot be shared by {world.size} "
            f"workers; give a larger train.batch_size or batch_tokens, or fewer workers"
        )
    # One process, one pass over the batch: the loss exactly as it has always been computed, so
    # CPU runs keep their bits. Otherwise shares and micro-batches (trainers/world.py).
    plain = world.size == 1 and (cfg.micro_batch is None or cfg.micro_batch >= accounting.examples_per_step)
    flops_per_step = accounting.examples_per_step * accounting.flops.total
    peak, peak_source = peak_flops(device, precision, cfg.threads)
    compiled = should_compile(cfg, device, flops_per_step, peak)
    forward = torch.compile(model) if compiled else model
    layout = parallel.layout(model, forward, world, device, cfg.shard)  # alone, DDP or FSDP2
    # After the layout: sharding replaces the parameters the optimizer and Grokfast's filter hold.
    optimizer = build_optimizer(model, cfg, device)
    ema = [torch.zeros_like(p) for p in model.parameters()] if cfg.grokfast else None
    runtime = Runtime(
        str(device),
        device_name(device),
        precision,
        compiled,
        world.size,
        peak,
        peak_source,
        determinism(device, cfg.threads),
        machine.facts(cfg.threads),
    )
    amp = autocast(device, precision)

    def to_device(t: torch.Tensor) -> torch.Tensor:
        # Windows read from a token file: pinned, so the copy to a GPU overlaps the compute.
        if device.type == "cuda":
            return t.pin_memory().to(device, non_blocking=True)
        return t.to(device)

    step = 0
    perm, cursor = torch.arange(n), n  # an exhausted epoch: the first batch draws a new one
    ckpt, note = None, None
    if checkpoint_dir is not None:
        ckpt = Path(checkpoint_dir) / CHECKPOINT_NAME
        if world.is_main:
            ckpt.parent.mkdir(parents=True, exist_ok=True)
        saved, note = load_checkpoint(ckpt, spec.digest())  # None, and why, if unusable
        if saved is not None:
            layout.load(optimizer, saved.model, saved.optimizer)
            torch.set_rng_state(saved.torch_rng)
            batch_gen.set_state(saved.batch_rng)
            ema = saved.ema if ema is not None else None
            step, perm, cursor = saved.step, saved.perm, saved.cursor
            log.restore(saved.log, saved.finished)  # a run that already ended stays ended
    resumed_from, ended_before = step, log.outcome is not None

    def save(finished: tuple[Status, str] | None = None) -> None:
        model_state, optimizer_state = layout.state(optimizer)  # sharded: gathered by every rank
        if world.is_main:
            Checkpoint(
                spec.digest(),
                step,
                model_state,
                optimizer_state,
                torch.get_rng_state(),
                batch_gen.get_state(),
                ema,
                perm,
                cursor,
                log.state(),
                finished,
            ).save(ckpt)

    def examples(index: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The examples at these indices (all of them for None)."""
        if index is None:
            return x_train, y_train
        if stream is None:
            return x_train[index], y_train[index]
        # One epoch reads each window once: D tokens (trainers/corpus/data.py).
        return tuple(to_device(t) for t in stream.windows("train", index))

    def backward(loss: torch.Tensor) -> None:
        (scaler.scale(loss) if scaler is not None else loss).backward()

    eval_time, timer = 0.0, Throughput(accounting, peak * world.size, step)
    model.train()
    while step < cfg.steps and log.outcome is None:
        lr = lr_at(cfg, step)  # trainers/schedules.py: warmup, then the schedule
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)  # mup's per-layer rates (trainers/mup.py)
        index = None
        if not full_batch:
            if cursor + batch > n:
                perm, cursor = torch.randperm(n, generator=batch_gen), 0
            index = perm[cursor : cursor + batch]
            cursor += batch
        if plain:
            xb, yb = examples(index)
            with amp:
                logits = forward(xb, last_only=last_only)
                loss = F.cross_entropy(logits.flatten(0, -2), yb.flatten(), ignore_index=IGNORE)
            step += 1
            if log.on_loss(step, loss.item()):  # diverged
                break
            optimizer.zero_grad(set_to_none=True)
            backward(loss)
        else:
            # The loss over the global batch: each share's summed token losses over the batch's
            # labelled tokens, times the world size because DDP averages the ranks' gradients.
            rows = torch.arange(n) if index is None else index
            labelled = (
                rows.numel() * data.seq_len
                if stream is not None
                else int((examples(index)[1] != IGNORE).sum())
            )
            share = world.share(rows)
            chunks = share.split(cfg.micro_batch) if cfg.micro_batch else (share,)
            optimizer.zero_grad(set_to_none=True)
            total = 0.0
            for i, chunk in enumerate(chunks):
                xb, yb = examples(chunk)
                with layout.accumulating(last=i == len(chunks) - 1):
                    with amp:
                        logits = layout.trained(xb, last_only=last_only)
                        loss = F.cross_entropy(
                            logits.flatten(0, -2).float(), yb.flatten(), ignore_index=IGNORE, reduction="sum"
                        ) * (world.size / labelled)
                    backward(loss)
                total += loss.item() / world.size
            step += 1
            if log.on_loss(step, world.sum(total)):  # diverged, on every rank alike
                break
        if scaler is not None:
            scaler.unscale_(optimizer)  # clipping and Grokfast see the true gradient
        if ema is not None:
            # Grokfast-EMA (Lee et al. 2024): amplify the slow component of the gradient.
            for p, m in zip(model.parameters(), ema):
                if p.grad is not None:
                    m.mul_(cfg.grokfast_alpha).add_(p.grad, alpha=1 - cfg.grokfast_alpha)
                    p.grad.add_(m, alpha=cfg.grokfast_lamb)
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()

        if step % cfg.eval_every == 0 or step == cfg.steps:
            t_eval = time.perf_counter()
            speed = timer.lap(step, t_eval)
            stop = False
            # Rank 0 alone, on the plain module (DDP's wrapper would wait for the other ranks),
            # unless the model is sharded: then every rank takes part in every forward.
            if world.is_main or layout.eval_on_every_rank:
                bs = cfg.eval_batch_size
                with amp:
                    tr = evaluate_batches(
                        forward, eval_batches(data, "train", bs, device, x_train, y_train), data
                    )
                    va = evaluate_batches(forward, eval_batches(data, "val", bs, device, x_val, y_val), data)
                norm = layout.weight_norm()
                if world.is_main:
                    stop = log.on_eval(step, tr, va, norm, lr, speed)  # events, stops, report hook
            stop = world.agree(stop)
            eval_time += time.perf_counter() - t_eval
            timer.restart(time.perf_counter())
            if stop:
                break
        if ckpt is not None and cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
            save()

    if ckpt is not None and not ended_before:
        # The final state, marked finished: a run asked again after it ended (its driver died
        # before recording it) returns this result instead of training again.
        save(finished=log.finish())
    return log.result(
        step,
        counts.as_dict(),
        data,
        time.perf_counter() - t0,
        eval_time,
        resumed_from,
        note,
        runtime.as_dict(),
    )
