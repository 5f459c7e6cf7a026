"""Trial packing: K runs of one architecture trained together, in one process, as one model.

What is packed. Runs that share the task, the model and the loop's schedule (steps, eval_every,
batch sizes, checkpoint_every, threads, device) but differ in what a cell's search tunes: the
seed (so each run's data split, initialization and batch order), lr, warmup_steps, the
learning-rate schedule (schedule, min_lr_fraction, decay_fraction), betas, eps,
weight_decay, init_scale, Grokfast on/off with its alpha and lamb, the thresholds and
success_stop_evals. `can_pack(specs)` names whatever else differs.

How. Each run's model is built and initialized exactly as `train()` builds it, from its own
seed; then its parameters are stacked along a new leading axis of size K. One forward and
backward over all K runs is `torch.func.vmap` of `functional_call` on one shared module, so each
layer is one batched matmul instead of K small ones: the per-op cost of Python, the dispatcher
and kernel launches, which dominates small models, is paid once instead of K times. AdamW and
the Grokfast filter are written out on the stacked tensors with per-run hyperparameters as
(K, 1, ...) columns, op for op as torch.optim.AdamW's single-tensor path (its default on CPU)
and in train.py's order (Grokfast filters the gradient, then AdamW steps).

What must be equal, and why. Each run's TrainResult (history, events, status, reason, steps)
equals that of `train(spec)` alone, up to float rounding, so that packing is a way of running
trials and never a different experiment: Optuna, the analysis and a resumed run see the same
numbers either way. Measured on CPU with torch 2.13 (tests/unit/test_packed.py): the grokking
transformer without LayerNorm and the MLP on modular arithmetic come out bitwise equal; vmap
decomposes LayerNorm, so models with it start ~1e-8 apart, a gap that grows as any rounding
difference does where training is chaotic. A run that diverges, success-stops or is stopped by
its report hook leaves the pack at the step `train()` would have stopped it (its slices are
dropped, so it stops updating and costs nothing more); the others go on unchanged. Dropout is
not packed: `train()` draws its masks from the global generator, which vmap cannot reproduce
per run. Sequence tasks pack too, but vmap has no batching rule for CPU flash attention and
loops over the K runs there. Not packed either: the corpus task (its windows stream from disk,
run by run) and models of the user's (vmap may not batch them); can_pack says so, and the
driver then runs them one per task.

Where it pays. Packing saves per-op overhead, not arithmetic. On CPU (benchmarks/bench_packing.py)
it used ~1.6x less CPU per trial-step than separate runs at p=23 (159 examples, ~1.6 ms a step
alone) and ~0.9x, a small loss, at p=59 (1,044 examples, ~4 ms a step), where one run's step is
already arithmetic and a pack's larger activations fall out of cache. On a GPU, where a small
model's step is kernel launches, it should pay far more; that is not measured yet.

What is not here. The set-up (core.build_run), the learning rate (schedules.lr_at), the
per-evaluation bookkeeping (core.RunLog: events, success-stop, divergence, stop reasons,
accounting), the metric reduction and the checkpoint type (checkpoint.py) are train()'s own, so
a feature added there is packed too. This file keeps what is batched: stacking, vmap, AdamW and
Grokfast on stacked tensors, batched evaluation. A packed run resumes packed or alone and the
other way round. Runs resumed at different steps are packed in groups by step.
wall_time_s of a run is the time from the call until that run finished; eval_time_s the part of
it the pack spent evaluating.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap

from trainers import stacked
from trainers.checkpoint import CHECKPOINT_NAME, Checkpoint
from trainers.checkpoint import load as load_checkpoint
from trainers.core import Accounting, Report, RunLog, TrainResult, batch_generator, build_run
from trainers.device import autocast, resolve_precision
from trainers.models import count_params
from trainers.schedules import lr_at
from trainers.spec import TrainSpec
from trainers.tasks import IGNORE, TaskData

# Fields of TrainConfig each run may set for itself; every other field must be equal.
PER_RUN = frozenset(
    {
        "lr",
        "betas",
        "eps",
        "weight_decay",
        "warmup_steps",
        "schedule",
        "min_lr_fraction",
        "decay_fraction",
        "init_scale",
        "grokfast",
        "grokfast_alpha",
        "grokfast_lamb",
        "train_threshold",
        "val_threshold",
        "success_stop_evals",
    }
)
# On CPU, vmap runs the pack a chunk of runs at a time, so that a chunk's activations stay in
# cache: with one thread, at most ~8 MiB of the widest layer's outputs per chunk and at least
# 4 runs was the best or near it from p=23 to p=113 and d_model 32 to 128 (measured, 2-core EPYC;
# a whole pack of 64 was up to 30% slower). On a GPU the whole pack runs at once.
CPU_CHUNK_BYTES = 8 * 2**20
MIN_CPU_CHUNK = 4


def can_pack(specs: Sequence[TrainSpec]) -> str | None:
    """None if `train_packed` can train these specs together, else every reason it cannot."""
    if not specs:
        return "no specs"
    first, problems = specs[0], []
    if first.task.name == "corpus":
        # A corpus streams its windows from disk per run; packing stacks in-memory data (K, N, T).
        return "task 'corpus' reads its batches from disk, run by run; packing stacks in-memory tasks only"
    if ":" in first.model.family:
        # vmap over a module of the user's may not batch (data-dependent control flow, in-place ops).
        return (
            f"model.family {first.model.family!r} is the user's own; packing batches the built-in models only"
        )
    shared = lambda s: s.train.model_dump(exclude=PER_RUN)  # noqa: E731
    for i, s in enumerate(specs[1:], start=1):
        for name in ("task", "model", "device"):
            if getattr(s, name) != getattr(first, name):
                problems.append(f"specs[{i}].{name} differs from specs[0].{name}")
        theirs, ours = shared(s), shared(first)
        for key in sorted(k for k in ours if theirs[k] != ours[k]):
            problems.append(f"specs[{i}].train.{key} is {theirs[key]!r}, specs[0] has {ours[key]!r}")
    if first.model.dropout > 0:
        problems.append(
            f"model.dropout is {first.model.dropout}: train() draws dropout masks from "
            "the global generator, which vmap cannot reproduce per run"
        )
    cfg = first.train
    if cfg.micro_batch is not None or cfg.grad_clip is not None:
        problems.append(
            "train.micro_batch and train.grad_clip are train()'s alone: the pack steps every run "
            "on its whole batch and clips nothing"
        )
    if cfg.precision == "fp16":
        problems.append(
            "train.precision 'fp16' needs a gradient scaler per run; the pack trains in fp32 or bf16"
        )
    if getattr(first.model, "parametrization", "sp") == "mup":
        problems.append(
            "model.parametrization is 'mup': its per-layer learning rates are train()'s AdamW "
            "param groups (trainers/mup.py), which the pack's own AdamW does not apply"
        )
    return "; ".join(problems) or None


@dataclass
class _Run:
    """One run's own state: what train() keeps in locals, plus its share of the pack's time."""

    spec: TrainSpec
    log: RunLog  # history, events and stop rules: the same bookkeeping train() uses
    ckpt: Path | None
    data: TaskData
    model: torch.nn.Module
    torch_rng: torch.Tensor  # the global generator after init, as train() checkpoints it
    batch_gen: torch.Generator
    perm: torch.Tensor
    cursor: int
    # Per parameter, when resumed: AdamW's moments and the Grokfast filter (None: zeros).
    exp_avg: list[torch.Tensor | None] | None = None
    exp_avg_sq: list[torch.Tensor | None] | None = None
    ema: list[torch.Tensor] | None = None
    step: int = 0
    resumed_from: int = 0
    checkpoint_note: str | None = None
    eval_time: float = 0.0
    wall_time: float = 0.0


def _start(spec: TrainSpec, report: Report | None, checkpoint_dir, device: torch.device) -> _Run:
    """Data, model and generators exactly as train() makes them; the checkpoint, if any."""
    data, model = build_run(spec, device)
    run = _Run(
        spec,
        RunLog(spec.train, Accounting.of(spec, data), report),
        None,
        data,
        model,
        torch.get_rng_state(),
        batch_generator(spec.seed),
        perm=torch.arange(len(data.x_train)),
        cursor=len(data.x_train),
    )
    if checkpoint_dir is None:
        return run
    run.ckpt = Path(checkpoint_dir) / CHECKPOINT_NAME
    run.ckpt.parent.mkdir(parents=True, exist_ok=True)
    saved, run.checkpoint_note = load_checkpoint(run.ckpt, spec.digest())
    if saved is None:
        return run
    model.load_state_dict(saved.model)
    moments = [saved.optimizer["state"].get(i, {}) for i in range(len(list(model.parameters())))]
    run.exp_avg, run.exp_avg_sq = ([m.get(key) for m in moments] for key in ("exp_avg", "exp_avg_sq"))
    run.torch_rng = saved.torch_rng
    run.batch_gen.set_state(saved.batch_rng)
    run.ema = saved.ema
    run.step, run.perm, run.cursor = saved.step, saved.perm, saved.cursor
    run.log.restore(saved.log, saved.finished)
    run.resumed_from = run.step
    return run


def _checkpoint(
    run: _Run,
    step: int,
    params: list[torch.Tensor],
    exp_avg: list[torch.Tensor],
    exp_avg_sq: list[torch.Tensor],
    ema: list[torch.Tensor] | None,
    perm: torch.Tensor,
    cursor: int,
    finished: bool = False,
) -> None:
    """Write this run's state in train()'s checkpoint format, so either loop can resume it."""
    cfg = run.spec.train
    with torch.no_grad():
        for p, value in zip(run.model.parameters(), params):
            p.copy_(value)
    # A real AdamW writes the optimizer's state dict, so its layout is torch's own.
    optimizer = torch.optim.AdamW(
        run.model.parameters(),
        lr=lr_at(cfg, step - 1),
        betas=cfg.betas,
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
    )
    for p, m, v in zip(run.model.parameters(), exp_avg, exp_avg_sq):
        optimizer.state[p] = {
            "step": torch.tensor(float(step)),
            "exp_avg": m.clone(),
            "exp_avg_sq": v.clone(),
        }
    Checkpoint(
        run.spec.digest(),
        step,
        run.model.state_dict(),
        optimizer.state_dict(),
        run.torch_rng,
        run.batch_gen.get_state(),
        [e.clone() for e in ema] if cfg.grokfast else None,
        perm.cpu(),
        cursor,
        run.log.state(),
        run.log.outcome if finished else None,
    ).save(run.ckpt)


@dataclass
class _Pack:
    """The stacked state of the runs still training: index k of every tensor is run k."""

    params: list[torch.Tensor]  # (K, *shape) per parameter, in model.parameters() order
    exp_avg: list[torch.Tensor]
    exp_avg_sq: list[torch.Tensor]
    ema: list[torch.Tensor]
    x_train: torch.Tensor  # (K, N, T)
    y_train: torch.Tensor  # (K, N) or (K, N, T)
    x_val: torch.Tensor
    y_val: torch.Tensor
    perm: torch.Tensor  # (K, N)

    @classmethod
    def stack(cls, runs: list[_Run], device: torch.device) -> _Pack:
        """Every run's parameters, optimizer state and data along a new leading axis."""

        def stack(tensors: list[torch.Tensor]) -> torch.Tensor:
            return torch.stack([t.to(device) for t in tensors])

        params = [
            stack(ps).requires_grad_()
            for ps in zip(*([p.detach() for p in r.model.parameters()] for r in runs))
        ]

        def resumed(attr: str) -> list[torch.Tensor]:
            """Each run's saved state for every parameter, zeros where it has none."""
            saved = lambda r, i: getattr(r, attr)[i] if getattr(r, attr) is not None else None  # noqa: E731
            return [
                stack([saved(r, i) if saved(r, i) is not None else torch.zeros_like(p[0]) for r in runs])
                for i, p in enumerate(params)
            ]

        return cls(
            params,
            resumed("exp_avg"),
            resumed("exp_avg_sq"),
            resumed("ema"),
            stack([r.data.x_train for r in runs]),
            stack([r.data.y_train for r in runs]),
            stack([r.data.x_val for r in runs]),
            stack([r.data.y_val for r in runs]),
            torch.stack([r.perm for r in runs]),
        )

    def run_state(self, k: int) -> tuple:
        """Run k's slice of the state a checkpoint keeps: params, moments, filter, order."""
        return (
            [p[k] for p in self.params],
            [m[k] for m in self.exp_avg],
            [v[k] for v in self.exp_avg_sq],
            [e[k] for e in self.ema],
            self.perm[k],
        )

    def select(self, keep: list[int]) -> _Pack:
        idx = torch.tensor(keep, device=self.x_train.device)
        pick = lambda ts: [t[idx] for t in ts]  # noqa: E731
        leaves = [t.detach()[idx].requires_grad_() for t in self.params]
        return _Pack(
            leaves,
            pick(self.exp_avg),
            pick(self.exp_avg_sq),
            pick(self.ema),
            *pick([self.x_train, self.y_train, self.x_val, self.y_val]),
            self.perm[keep],
        )


def train_packed(
    specs: Sequence[TrainSpec],
    reports: Sequence[Report | None] | None = None,
    checkpoint_dirs: Sequence[str | os.PathLike | None] | None = None,
) -> list[TrainResult]:
    """Train `specs` together as one batched model; one TrainResult per spec, in order, each as
    `train(spec, report, checkpoint_dir)` returns it. A ValueError says why specs cannot pack."""
    t0 = time.perf_counter()
    problem = can_pack(specs)
    if problem is not None:
        raise ValueError(f"cannot pack these specs: {problem}")
    K = len(specs)
    reports = list(reports) if reports is not None else [None] * K
    dirs = list(checkpoint_dirs) if checkpoint_dirs is not None else [None] * K
    if len(reports) != K or len(dirs) != K:
        raise ValueError(
            f"{K} specs need {K} reports and checkpoint_dirs, got {len(reports)} and {len(dirs)}"
        )
    torch.set_num_threads(specs[0].train.threads)
    device = torch.device(specs[0].device)
    runs = [_start(s, r, d, device) for s, r, d in zip(specs, reports, dirs)]
    # Runs resumed from different steps cannot step together: one pack per starting step.
    by_step: dict[int, list[_Run]] = {}
    for run in runs:
        if run.log.outcome is None:
            by_step.setdefault(run.step, []).append(run)
    for group in by_step.values():
        _train_pack(group, t0)

    counts = count_params(runs[0].model).as_dict()
    return [
        run.log.result(
            run.step,
            counts,
            run.data,
            run.wall_time or time.perf_counter() - t0,
            run.eval_time,
            run.resumed_from,
            run.checkpoint_note,
        )
        for run in runs
    ]


def _train_pack(runs: list[_Run], t0: float) -> None:
    """The loop of train(), over a pack of runs at the same step; fills in each run's outcome."""
    cfg = runs[0].spec.train  # the fields every run shares
    data = runs[0].data
    base = runs[0].model  # its structure is shared; its parameters are never read
    n = len(data.x_train)
    batch = cfg.batch_examples(data.seq_len)
    full_batch = batch is None or batch >= n
    device = torch.device(runs[0].spec.device)
    amp = autocast(device, resolve_precision(cfg, device))  # fp32: no context at all, as in train()
    pack = _Pack.stack(runs, device)
    step, cursor = runs[0].step, runs[0].cursor
    batched_loss, batched_logits = _batched(base, data, n if full_batch else batch, device)

    def finish(k: int) -> None:
        """Run k has ended (its log says how): freeze its step and time, write its last state."""
        run = runs[k]
        run.log.finish()
        run.step, run.wall_time = step, time.perf_counter() - t0
        if run.ckpt is not None:
            # The final state, marked finished, exactly as train() leaves it.
            _checkpoint(run, step, *pack.run_state(k), cursor, finished=True)

    def drop_finished(grads: list[torch.Tensor | None] | None = None):
        nonlocal runs, pack
        keep = [k for k, r in enumerate(runs) if r.log.outcome is None]
        if len(keep) < len(runs):
            pack = pack.select(keep) if keep else pack
            runs = [runs[k] for k in keep]
            if grads is not None:
                grads = [g[keep] if g is not None else None for g in grads]
        return grads

    base.train()
    while step < cfg.steps and runs:
        if full_batch:
            xb, yb = pack.x_train, pack.y_train
        else:
            if cursor + batch > n:
                pack.perm, cursor = torch.stack([torch.randperm(n, generator=r.batch_gen) for r in runs]), 0
            idx = pack.perm[:, cursor : cursor + batch].to(device)  # (K, B)
            cursor += batch
            rows = torch.arange(len(runs), device=device)[:, None]
            xb, yb = pack.x_train[rows, idx], pack.y_train[rows, idx]
        with amp:
            losses = batched_loss(pack.params, xb, yb)  # (K,)
        step += 1
        for k, loss in enumerate(losses.tolist()):
            if runs[k].log.on_loss(step, loss):  # diverged
                finish(k)
        if all(r.log.outcome is not None for r in runs):
            break
        # The runs are independent, so the gradient of the sum is each run's own gradient.
        grads = list(torch.autograd.grad(losses.sum(), pack.params, allow_unused=True))
        grads = drop_finished(grads)
        with torch.no_grad():
            # train() sets the lr before it counts the step: the factor of step - 1.
            lrs = [lr_at(r.spec.train, step - 1) for r in runs]  # trainers/schedules.py, per run
            if any(r.spec.train.grokfast for r in runs):
                stacked.grokfast_(grads, pack.ema, [r.spec.train for r in runs])
            stacked.adamw_(
                pack.params, grads, pack.exp_avg, pack.exp_avg_sq, [r.spec.train for r in runs], lrs, step
            )

        if step % cfg.eval_every == 0 or step == cfg.steps:
            t_eval = time.perf_counter()
            base.eval()
            with amp:
                tr = stacked.evaluate(
                    batched_logits, pack.params, pack.x_train, pack.y_train, data, cfg.eval_batch_size
                )
                va = stacked.evaluate(
                    batched_logits, pack.params, pack.x_val, pack.y_val, data, cfg.eval_batch_size
                )
            base.train()
            norms = stacked.weight_norms(pack.params)
            spent = time.perf_counter() - t_eval
            for k, run in enumerate(runs):
                run.eval_time += spent
                if run.log.on_eval(step, tr[k], va[k], norms[k], lrs[k]):  # train()'s bookkeeping
                    finish(k)
            drop_finished()
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
            for k, run in enumerate(runs):
                if run.ckpt is not None:
                    _checkpoint(run, step, *pack.run_state(k), cursor)
    for k, run in enumerate(runs):
        if run.log.outcome is None:
            finish(k)  # the step budget


def _batched(base: torch.nn.Module, data: TaskData, batch_rows: int, device: torch.device):
    """The pack's loss (K,) and logits as vmaps of `base` over the stacked parameters."""
    names = [name for name, _ in base.named_parameters()]
    last_only = data.target == "last"

    def logits_of(p: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(base, dict(zip(names, p)), (x,), {"last_only": last_only})

    def loss_of(p: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = logits_of(p, x)
        return F.cross_entropy(logits.flatten(0, -2), y.flatten(), ignore_index=IGNORE)

    chunk = None
    if device.type == "cpu":
        widest = max(getattr(m, "out_features", 0) or getattr(m, "embedding_dim", 0) for m in base.modules())
        chunk = max(MIN_CPU_CHUNK, CPU_CHUNK_BYTES // (batch_rows * data.seq_len * widest * 4))
    return vmap(loss_of, chunk_size=chunk), vmap(logits_of, chunk_size=chunk)
