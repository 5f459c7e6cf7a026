"""Trial packing: K runs of one architecture trained together, in one process, as one model.

What is packed. Runs that share the task, the model and the loop's schedule (steps, eval_every,
batch sizes, checkpoint_every, threads, device) but differ in what a cell's search tunes: the
seed (so each run's data split, initialization and batch order), lr, warmup_steps, betas, eps,
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
numbers either way. Measured on CPU with torch 2.13 (tests/test_packed.py): the grokking
transformer without LayerNorm and the MLP on modular arithmetic come out bitwise equal; vmap
decomposes LayerNorm, so models with it start ~1e-8 apart, a gap that grows as any rounding
difference does where training is chaotic. A run that diverges, success-stops or is stopped by
its report hook leaves the pack at the step `train()` would have stopped it (its slices are
dropped, so it stops updating and costs nothing more); the others go on unchanged. Dropout is
not packed: `train()` draws its masks from the global generator, which vmap cannot reproduce
per run. Sequence tasks pack too, but vmap has no batching rule for CPU flash attention and
loops over the K runs there.

Where it pays. Packing saves per-op overhead, not arithmetic. On CPU (benchmarks/bench_packing.py)
it used ~1.6x less CPU per trial-step than separate runs at p=23 (159 examples, ~1.6 ms a step
alone) and ~0.9x, a small loss, at p=59 (1,044 examples, ~4 ms a step), where one run's step is
already arithmetic and a pack's larger activations fall out of cache. On a GPU, where a small
model's step is kernel launches, it should pay far more; that is not measured yet.

Checkpoints are per run and in `train()`'s format, so a packed run resumes packed or alone and
an unpacked one resumes packed. Runs resumed at different steps are packed in groups by step.
wall_time_s of a run is the time from the call until that run finished; eval_time_s the part of
it the pack spent evaluating.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap

from trainers.models import build_model, count_params, init_weights
from trainers.spec import TrainSpec
from trainers.tasks import IGNORE, TaskData, make_task
from trainers.train import CHECKPOINT_NAME, Events, Report, Status, TrainResult, _save, lr_factor

# Fields of TrainConfig each run may set for itself; every other field must be equal.
PER_RUN = frozenset({"lr", "betas", "eps", "weight_decay", "warmup_steps", "init_scale", "grokfast",
                     "grokfast_alpha", "grokfast_lamb", "train_threshold", "val_threshold",
                     "success_stop_evals"})
# Evaluation logits are float64 (as in train.evaluate); runs are evaluated a few at a time so
# that K of them never hold more than about this much at once.
EVAL_BYTES = 256 * 2**20
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
    shared = lambda s: s.train.model_dump(exclude=PER_RUN)  # noqa: E731
    for i, s in enumerate(specs[1:], start=1):
        for name in ("task", "model", "device"):
            if getattr(s, name) != getattr(first, name):
                problems.append(f"specs[{i}].{name} differs from specs[0].{name}")
        theirs, ours = shared(s), shared(first)
        for key in sorted(k for k in ours if theirs[k] != ours[k]):
            problems.append(f"specs[{i}].train.{key} is {theirs[key]!r}, specs[0] has {ours[key]!r}")
    if first.model.dropout > 0:
        problems.append(f"model.dropout is {first.model.dropout}: train() draws dropout masks from "
                        "the global generator, which vmap cannot reproduce per run")
    return "; ".join(problems) or None


@dataclass
class _Run:
    """One run's own state: what train() keeps in locals, plus its share of the pack's time."""

    spec: TrainSpec
    report: Report | None
    ckpt: Path | None
    data: TaskData
    model: torch.nn.Module
    torch_rng: torch.Tensor  # the global generator after init, as train() checkpoints it
    batch_gen: torch.Generator
    # Per parameter, when resumed: AdamW's moments and the Grokfast filter (None: zeros).
    exp_avg: list[torch.Tensor | None] | None = None
    exp_avg_sq: list[torch.Tensor | None] | None = None
    ema: list[torch.Tensor] | None = None
    perm: torch.Tensor | None = None
    cursor: int = 0
    step: int = 0
    history: dict[str, list[float]] = field(default_factory=dict)
    events: Events = field(default_factory=Events)
    above: int = 0
    resumed_from: int = 0
    finished: tuple[Status, str] | None = None
    eval_time: float = 0.0
    wall_time: float = 0.0


def _start(spec: TrainSpec, report: Report | None, checkpoint_dir, device: torch.device) -> _Run:
    """Data, model and generators exactly as train() makes them; the checkpoint, if any."""
    data = make_task(spec.task, spec.seed)
    torch.manual_seed(spec.seed)
    model = build_model(spec.model, data.vocab_size, data.n_out, data.seq_len)
    init_weights(model, spec.train.init_scale)
    model.to(device)
    run = _Run(spec, report, None, data, model, torch.get_rng_state(),
               torch.Generator().manual_seed(spec.seed * 1_000_003 + 7),
               perm=torch.arange(len(data.x_train)), cursor=len(data.x_train))
    if checkpoint_dir is None:
        return run
    run.ckpt = Path(checkpoint_dir) / CHECKPOINT_NAME
    run.ckpt.parent.mkdir(parents=True, exist_ok=True)
    if not run.ckpt.exists():
        return run
    state = torch.load(run.ckpt, weights_only=False)
    if state["digest"] != spec.digest():
        return run
    model.load_state_dict(state["model"])
    moments = [state["optimizer"]["state"].get(i, {}) for i in range(len(list(model.parameters())))]
    run.exp_avg, run.exp_avg_sq = ([m.get(key) for m in moments] for key in ("exp_avg", "exp_avg_sq"))
    run.torch_rng = state["torch_rng"]
    run.batch_gen.set_state(state["batch_rng"])
    run.ema = state["ema"]
    run.step, run.perm, run.cursor = state["step"], state["perm"], state["cursor"]
    run.history, run.events, run.above = state["history"], Events(**state["events"]), state["above"]
    run.resumed_from, run.finished = run.step, state.get("finished")
    return run


def _checkpoint(run: _Run, step: int, params: list[torch.Tensor], exp_avg: list[torch.Tensor],
                exp_avg_sq: list[torch.Tensor], ema: list[torch.Tensor] | None, perm: torch.Tensor,
                cursor: int, finished: tuple[Status, str] | None = None) -> None:
    """Write this run's state in train()'s checkpoint format, so either loop can resume it."""
    cfg = run.spec.train
    with torch.no_grad():
        for p, value in zip(run.model.parameters(), params):
            p.copy_(value)
    # A real AdamW writes the optimizer's state dict, so its layout is torch's own.
    optimizer = torch.optim.AdamW(run.model.parameters(), lr=cfg.lr * lr_factor(step - 1, cfg.warmup_steps),
                                  betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    for p, m, v in zip(run.model.parameters(), exp_avg, exp_avg_sq):
        optimizer.state[p] = {"step": torch.tensor(float(step)), "exp_avg": m.clone(), "exp_avg_sq": v.clone()}
    _save(run.ckpt, {"digest": run.spec.digest(), "step": step, "model": run.model.state_dict(),
                     "optimizer": optimizer.state_dict(), "torch_rng": run.torch_rng,
                     "batch_rng": run.batch_gen.get_state(),
                     "ema": [e.clone() for e in ema] if run.spec.train.grokfast else None,
                     "perm": perm.cpu(), "cursor": cursor, "history": run.history,
                     "events": asdict(run.events), "above": run.above, "finished": finished})


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

    def select(self, keep: list[int]) -> "_Pack":
        idx = torch.tensor(keep, device=self.x_train.device)
        pick = lambda ts: [t[idx] for t in ts]  # noqa: E731
        leaves = [t.detach()[idx].requires_grad_() for t in self.params]
        return _Pack(leaves, pick(self.exp_avg), pick(self.exp_avg_sq), pick(self.ema),
                     *pick([self.x_train, self.y_train, self.x_val, self.y_val]), self.perm[keep])


def _columns(rows: list[list[float]], like: torch.Tensor) -> torch.Tensor:
    """Per-run scalars, one row per quantity, as float32 on the pack's device in one copy:
    (Q, K). Scalars and columns round alike: torch casts a Python scalar to the tensor's dtype."""
    return torch.tensor(rows, dtype=like.dtype, device=like.device)


def _col(row: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(K,) -> (K, 1, ...), to broadcast against a stacked (K, *shape) tensor."""
    return row.view(-1, *[1] * (like.dim() - 1))


def _grokfast_(grads: list[torch.Tensor | None], ema: list[torch.Tensor], runs: list[_Run]) -> None:
    """Grokfast-EMA (Lee et al. 2024) in train()'s order. A run without it keeps a zero filter
    (alpha 1, lamb 0), which leaves its gradient exactly as it was."""
    cfgs = [r.spec.train for r in runs]
    alpha = [c.grokfast_alpha if c.grokfast else 1.0 for c in cfgs]
    lamb = [c.grokfast_lamb if c.grokfast else 0.0 for c in cfgs]
    h = _columns([alpha, [1 - a for a in alpha], lamb], ema[0])
    for g, m in zip(grads, ema):
        if g is not None:
            # m.mul_(alpha).add_(g, alpha=1 - alpha); g.add_(m, alpha=lamb), per run.
            m.mul_(_col(h[0], m)).addcmul_(g, _col(h[1], m))
            g.addcmul_(m, _col(h[2], m))


def _adamw_(params: list[torch.Tensor], grads: list[torch.Tensor | None], exp_avg: list[torch.Tensor],
            exp_avg_sq: list[torch.Tensor], runs: list[_Run], lrs: list[float], step: int) -> None:
    """torch.optim.AdamW's single-tensor step (its CPU default), per run. Each op rounds as the
    reference's does (checked bitwise on CPU): a Python scalar becomes a float32 column,
    `add(x, alpha=a)` becomes `addcmul(x, a)` (both fuse the multiply-add), `addcmul(g, g,
    value=c)` becomes `addcmul(g * c, g)` and `addcdiv(m, d, value=-s)` becomes `addcdiv(m * -s, d)`."""
    cfgs = [r.spec.train for r in runs]
    h = _columns([[1 - lr * c.weight_decay for lr, c in zip(lrs, cfgs)],  # decoupled weight decay
                  [1 - c.betas[0] for c in cfgs],
                  [c.betas[1] for c in cfgs],
                  [1 - c.betas[1] for c in cfgs],
                  [(1 - c.betas[1] ** step) ** 0.5 for c in cfgs],  # sqrt of bias correction 2
                  [c.eps for c in cfgs],
                  [-lr / (1 - c.betas[0] ** step) for lr, c in zip(lrs, cfgs)]], params[0])  # -step size
    for p, g, m, v in zip(params, grads, exp_avg, exp_avg_sq):
        if g is None:  # no gradient: AdamW leaves the parameter, weight decay included, alone
            continue
        decay, one_minus_beta1, beta2, one_minus_beta2, bc2_sqrt, eps, neg_step = (_col(r, p) for r in h)
        p.mul_(decay)
        m.lerp_(g, one_minus_beta1)
        v.mul_(beta2).addcmul_(g * one_minus_beta2, g)
        denom = (v.sqrt() / bc2_sqrt).add_(eps)
        p.addcdiv_(m * neg_step, denom)


@torch.no_grad()
def _evaluate(forward, params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor, data: TaskData,
              batch_size: int) -> list[dict[str, float]]:
    """train.evaluate for each run of the pack: the same batches, the same float64 sums."""
    K, n = x.shape[0], x.shape[1]
    per_run = min(batch_size, n) * (y.shape[2] if y.dim() == 3 else 1) * data.n_out * 8 * 3
    group = max(1, EVAL_BYTES // per_run)
    sums = [dict(loss=0.0, correct=0, exact=0, tokens=0, logprob=0.0) for _ in range(K)]
    for j in range(0, K, group):
        runs = range(j, min(j + group, K))
        p = [t[j:j + group] for t in params]
        for i in range(0, n, batch_size):
            xb, yb = x[j:j + group, i:i + batch_size], y[j:j + group, i:i + batch_size]
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
    out = []
    for s in sums:
        r = {"loss": s["loss"] / s["tokens"],
             "acc": s["exact"] / n if data.accuracy == "exact" else s["correct"] / s["tokens"]}
        if data.target == "sequence":
            r["token_acc"] = s["correct"] / s["tokens"]
            r["answer_logprob"] = s["logprob"] / n
        out.append(r)
    return out


def _weight_norms(params: list[torch.Tensor]) -> list[float]:
    """train.weight_norm per run: float64 sums of squares, parameter by parameter."""
    K = params[0].shape[0]
    totals = [0.0] * K
    for p in params:
        sq = p.detach().double().pow(2)
        for k, v in enumerate(torch.stack([sq[k].sum() for k in range(K)]).tolist()):
            totals[k] += v
    return [math.sqrt(t) for t in totals]


def train_packed(specs: Sequence[TrainSpec], reports: Sequence[Report | None] | None = None,
                 checkpoint_dirs: Sequence[str | os.PathLike | None] | None = None) -> list[TrainResult]:
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
        raise ValueError(f"{K} specs need {K} reports and checkpoint_dirs, got {len(reports)} and {len(dirs)}")
    torch.set_num_threads(specs[0].train.threads)
    device = torch.device(specs[0].device)
    runs = [_start(s, r, d, device) for s, r, d in zip(specs, reports, dirs)]
    # Runs resumed from different steps cannot step together: one pack per starting step.
    by_step: dict[int, list[_Run]] = {}
    for run in runs:
        if run.finished is None:
            by_step.setdefault(run.step, []).append(run)
    for group in by_step.values():
        _train_pack(group, t0)

    counts = count_params(runs[0].model).as_dict()
    results = []
    for run in runs:
        status, reason = run.finished
        results.append(TrainResult(
            status=status, reason=reason, steps=run.step, final={k: v[-1] for k, v in run.history.items()},
            history=run.history, events=run.events, n_params=counts, n_train=run.data.n_train,
            wall_time_s=run.wall_time or time.perf_counter() - t0, eval_time_s=run.eval_time,
            resumed_from_step=run.resumed_from, task_info=run.data.info))
    return results


def _train_pack(runs: list[_Run], t0: float) -> None:
    """The loop of train(), over a pack of runs at the same step; fills in each run's outcome."""
    cfg = runs[0].spec.train  # the fields every run shares
    data = runs[0].data
    base = runs[0].model  # its structure is shared; its parameters are never read
    names = [name for name, _ in base.named_parameters()]
    last_only = data.target == "last"
    n = len(data.x_train)
    full_batch = cfg.batch_size is None or cfg.batch_size >= n
    device = torch.device(runs[0].spec.device)

    def stack(tensors: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([t.to(device) for t in tensors])

    params = [stack(ps).requires_grad_() for ps in zip(*([p.detach() for p in r.model.parameters()] for r in runs))]

    def resumed(attr: str) -> list[torch.Tensor]:
        """Each run's saved state for every parameter, zeros where it has none."""
        saved = lambda r, i: getattr(r, attr)[i] if getattr(r, attr) is not None else None  # noqa: E731
        return [stack([saved(r, i) if saved(r, i) is not None else torch.zeros_like(p[0]) for r in runs])
                for i, p in enumerate(params)]

    pack = _Pack(params, resumed("exp_avg"), resumed("exp_avg_sq"), resumed("ema"),
                 stack([r.data.x_train for r in runs]), stack([r.data.y_train for r in runs]),
                 stack([r.data.x_val for r in runs]), stack([r.data.y_val for r in runs]),
                 torch.stack([r.perm for r in runs]))
    step, cursor = runs[0].step, runs[0].cursor

    def logits_of(p: list[torch.Tensor], x: torch.Tensor, last: bool) -> torch.Tensor:
        return functional_call(base, dict(zip(names, p)), (x,), {"last_only": last})

    def loss_of(p: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = logits_of(p, x, last_only)
        return F.cross_entropy(logits.flatten(0, -2), y.flatten(), ignore_index=IGNORE)

    chunk = None
    if device.type == "cpu":
        batch_rows = n if full_batch else cfg.batch_size
        widest = max(getattr(m, "out_features", 0) or getattr(m, "embedding_dim", 0) for m in base.modules())
        chunk = max(MIN_CPU_CHUNK, CPU_CHUNK_BYTES // (batch_rows * data.seq_len * widest * 4))
    batched_loss = vmap(loss_of, chunk_size=chunk)
    batched_logits = vmap(lambda p, x: logits_of(p, x, last_only), chunk_size=chunk)

    def finish(k: int, status: Status, reason: str) -> None:
        run = runs[k]
        run.finished, run.step, run.wall_time = (status, reason), step, time.perf_counter() - t0
        if run.ckpt is not None:
            # The final state, marked finished, exactly as train() leaves it.
            _checkpoint(run, step, [p[k] for p in pack.params], [m[k] for m in pack.exp_avg],
                        [v[k] for v in pack.exp_avg_sq], [e[k] for e in pack.ema], pack.perm[k], cursor,
                        finished=(status, reason))

    def drop_finished(grads: list[torch.Tensor | None] | None = None):
        nonlocal runs, pack
        keep = [k for k, r in enumerate(runs) if r.finished is None]
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
            if cursor + cfg.batch_size > n:
                pack.perm, cursor = torch.stack([torch.randperm(n, generator=r.batch_gen) for r in runs]), 0
            idx = pack.perm[:, cursor:cursor + cfg.batch_size].to(device)  # (K, B)
            cursor += cfg.batch_size
            rows = torch.arange(len(runs), device=device)[:, None]
            xb, yb = pack.x_train[rows, idx], pack.y_train[rows, idx]
        losses = batched_loss(pack.params, xb, yb)  # (K,)
        step += 1
        for k, loss in enumerate(losses.tolist()):
            if not math.isfinite(loss):
                runs[k].events.diverged_step = step
                finish(k, "diverged", f"training loss was {loss} at step {step}")
        if all(r.finished is not None for r in runs):
            break
        # The runs are independent, so the gradient of the sum is each run's own gradient.
        grads = list(torch.autograd.grad(losses.sum(), pack.params, allow_unused=True))
        grads = drop_finished(grads)
        with torch.no_grad():
            # train() sets the lr before it counts the step: the factor of step - 1.
            lrs = [r.spec.train.lr * lr_factor(step - 1, r.spec.train.warmup_steps) for r in runs]
            if any(r.spec.train.grokfast for r in runs):
                _grokfast_(grads, pack.ema, runs)
            _adamw_(pack.params, grads, pack.exp_avg, pack.exp_avg_sq, runs, lrs, step)

        if step % cfg.eval_every == 0 or step == cfg.steps:
            t_eval = time.perf_counter()
            base.eval()
            tr = _evaluate(batched_logits, pack.params, pack.x_train, pack.y_train, data, cfg.eval_batch_size)
            va = _evaluate(batched_logits, pack.params, pack.x_val, pack.y_val, data, cfg.eval_batch_size)
            base.train()
            norms = _weight_norms(pack.params)
            spent = time.perf_counter() - t_eval
            for k, run in enumerate(runs):
                rc = run.spec.train
                run.eval_time += spent
                record = {"step": step, **{f"train_{key}": v for key, v in tr[k].items()},
                          **{f"val_{key}": v for key, v in va[k].items()},
                          "weight_norm": norms[k], "lr": lrs[k]}
                for key, v in record.items():
                    run.history.setdefault(key, []).append(v)
                ev = run.events
                if ev.memorization_step is None and tr[k]["acc"] >= rc.train_threshold:
                    ev.memorization_step = step
                if ev.generalization_step is None and va[k]["acc"] >= rc.val_threshold:
                    ev.generalization_step = step
                run.above = run.above + 1 if va[k]["acc"] >= rc.val_threshold else 0
                if not all(math.isfinite(v) for v in record.values()):
                    ev.diverged_step = step
                    finish(k, "diverged", f"evaluation was not finite at step {step}")
                elif rc.success_stop_evals is not None and run.above >= rc.success_stop_evals:
                    finish(k, "completed", f"success-stop: val accuracy >= {rc.val_threshold} "
                                           f"for {run.above} evaluations")
                elif run.report is not None and run.report(record):
                    finish(k, "stopped", f"stopped by the report hook at step {step}")
            drop_finished()
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
            for k, run in enumerate(runs):
                if run.ckpt is not None:
                    _checkpoint(run, step, [p[k] for p in pack.params], [m[k] for m in pack.exp_avg],
                                [v[k] for v in pack.exp_avg_sq], [e[k] for e in pack.ema], pack.perm[k], cursor)
    for k, run in enumerate(runs):
        if run.finished is None:
            finish(k, "completed", "step budget reached")
