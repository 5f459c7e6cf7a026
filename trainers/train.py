"""One training run: `train(spec, report=None, checkpoint_dir=None) -> TrainResult`.

The loop is inline and reads top to bottom. Everything random draws from generators seeded by
the spec, and the checkpoint holds every piece of state, so on CPU a run is bitwise repeatable
and a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Literal

import torch
import torch.nn.functional as F

from trainers.models import ParamCounts, build_model, count_params, init_weights
from trainers.spec import TrainSpec
from trainers.tasks import IGNORE, TaskData, make_task

Status = Literal["completed", "diverged", "stopped"]
CHECKPOINT_NAME = "checkpoint.pt"

# Called after every evaluation with the record just appended to the history; returning True
# stops the run (the orchestrator's pruner). The one hook the trainer has.
Report = Callable[[dict], "bool | None"]


@dataclass
class Events:
    memorization_step: int | None = None  # first eval with train accuracy >= train_threshold
    generalization_step: int | None = None  # first eval with val accuracy >= val_threshold
    diverged_step: int | None = None  # first step whose training loss was NaN or inf


@dataclass
class TrainResult:
    status: Status
    reason: str
    steps: int
    final: dict[str, float]
    history: dict[str, list[float]]
    events: Events
    n_params: dict[str, int]
    n_train: int
    wall_time_s: float
    eval_time_s: float = 0.0  # of wall_time_s, spent evaluating (the cost of eval_every)
    resumed_from_step: int = 0
    task_info: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def lr_factor(step: int, warmup_steps: int) -> float:
    """Linear warmup to the full learning rate, then constant (Nanda et al. 2023)."""
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, data: TaskData,
             batch_size: int) -> dict[str, float]:
    """Loss in nats per labelled token, accuracy, and for sequence tasks the continuous
    metrics of Schaeffer et al. (2023): per-token accuracy and the answer's log-likelihood."""
    was_training = model.training
    model.eval()
    loss_sum = correct_tokens = exact = logprob_sum = 0.0
    n_tokens = 0
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
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
    n = len(x)
    out = {"loss": loss_sum / n_tokens,
           "acc": (exact / n) if data.accuracy == "exact" else correct_tokens / n_tokens}
    if data.target == "sequence":
        out["token_acc"] = correct_tokens / n_tokens
        out["answer_logprob"] = logprob_sum / n  # mean log-likelihood of a whole answer, nats
    return out


def weight_norm(model: torch.nn.Module) -> float:
    return math.sqrt(sum(p.detach().double().pow(2).sum().item() for p in model.parameters()))


def _save(path: Path, state: dict) -> None:
    # Write then rename: a crash mid-write never leaves a half checkpoint behind.
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def train(spec: TrainSpec, report: Report | None = None,
          checkpoint_dir: str | os.PathLike | None = None) -> TrainResult:
    t0 = time.perf_counter()
    cfg = spec.train
    torch.set_num_threads(cfg.threads)
    data = make_task(spec.task, spec.seed)
    device = torch.device(spec.device)

    torch.manual_seed(spec.seed)  # init and dropout draw from the global generator
    model = build_model(spec.model, data.vocab_size, data.n_out, data.seq_len)
    init_weights(model, cfg.init_scale)
    model.to(device)
    counts: ParamCounts = count_params(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                                  weight_decay=cfg.weight_decay)
    batch_gen = torch.Generator().manual_seed(spec.seed * 1_000_003 + 7)
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    x_val, y_val = data.x_val.to(device), data.y_val.to(device)
    n = len(x_train)
    full_batch = cfg.batch_size is None or cfg.batch_size >= n
    last_only = data.target == "last"
    ema = [torch.zeros_like(p) for p in model.parameters()] if cfg.grokfast else None

    step = 0
    perm, cursor = torch.arange(n), n  # an exhausted epoch: the first batch draws a new one
    history: dict[str, list[float]] = {}
    events = Events()
    above = 0  # consecutive evals with val accuracy >= threshold (success-stop)
    resumed_from = 0
    finished: tuple[Status, str] | None = None
    ckpt = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    if ckpt is not None:
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        if ckpt.exists():
            state = torch.load(ckpt, weights_only=False)
            if state["digest"] == spec.digest():
                model.load_state_dict(state["model"])
                optimizer.load_state_dict(state["optimizer"])
                torch.set_rng_state(state["torch_rng"])
                batch_gen.set_state(state["batch_rng"])
                if ema is not None:
                    ema = state["ema"]
                step, perm, cursor = state["step"], state["perm"], state["cursor"]
                history, events, above = state["history"], Events(**state["events"]), state["above"]
                resumed_from = step
                finished = state.get("finished")  # (status, reason) of a run that already ended

    def checkpoint_state(finished: tuple[Status, str] | None = None) -> dict:
        return {"digest": spec.digest(), "step": step, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
                "batch_rng": batch_gen.get_state(), "ema": ema, "perm": perm, "cursor": cursor,
                "history": history, "events": asdict(events), "above": above, "finished": finished}

    status: Status = "completed"
    reason = "step budget reached"
    eval_time = 0.0
    if finished is not None:
        status, reason = finished
    model.train()
    while step < cfg.steps and finished is None:
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * lr_factor(step, cfg.warmup_steps)
        if full_batch:
            xb, yb = x_train, y_train
        else:
            if cursor + cfg.batch_size > n:
                perm, cursor = torch.randperm(n, generator=batch_gen), 0
            idx = perm[cursor:cursor + cfg.batch_size]
            cursor += cfg.batch_size
            xb, yb = x_train[idx], y_train[idx]
        logits = model(xb, last_only=last_only)
        loss = F.cross_entropy(logits.flatten(0, -2), yb.flatten(), ignore_index=IGNORE)
        step += 1
        if not math.isfinite(loss.item()):
            events.diverged_step = step
            status, reason = "diverged", f"training loss was {loss.item()} at step {step}"
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
            tr = evaluate(model, x_train, y_train, data, cfg.eval_batch_size)
            va = evaluate(model, x_val, y_val, data, cfg.eval_batch_size)
            record = {"step": step, **{f"train_{k}": v for k, v in tr.items()},
                      **{f"val_{k}": v for k, v in va.items()},
                      "weight_norm": weight_norm(model), "lr": optimizer.param_groups[0]["lr"]}
            eval_time += time.perf_counter() - t_eval
            for k, v in record.items():
                history.setdefault(k, []).append(v)
            if events.memorization_step is None and tr["acc"] >= cfg.train_threshold:
                events.memorization_step = step
            if events.generalization_step is None and va["acc"] >= cfg.val_threshold:
                events.generalization_step = step
            above = above + 1 if va["acc"] >= cfg.val_threshold else 0
            if not all(math.isfinite(v) for v in record.values()):
                events.diverged_step = step
                status, reason = "diverged", f"evaluation was not finite at step {step}"
                break
            if cfg.success_stop_evals is not None and above >= cfg.success_stop_evals:
                reason = f"success-stop: val accuracy >= {cfg.val_threshold} for {above} evaluations"
                break
            if report is not None and report(record):
                status, reason = "stopped", f"stopped by the report hook at step {step}"
                break
        if ckpt is not None and cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
            _save(ckpt, checkpoint_state())

    if ckpt is not None and finished is None:
        # The final state, marked finished: a run asked again after it ended (its driver died
        # before recording it) returns this result instead of training again.
        _save(ckpt, checkpoint_state(finished=(status, reason)))

    final = {k: v[-1] for k, v in history.items()}
    return TrainResult(status=status, reason=reason, steps=step, final=final, history=history,
                       events=events, n_params=counts.as_dict(), n_train=data.n_train,
                       wall_time_s=time.perf_counter() - t0, eval_time_s=eval_time, resumed_from_step=resumed_from,
                       task_info=data.info)
