"""What both training loops share: the set-up of a run, the per-evaluation bookkeeping, the
metric reduction, the accounting and the result.

`train()` (one run) and `train_packed()` (K runs as one batched model) call these same pieces,
so a new event, threshold or stop rule is written once and the two loops stay bitwise equal.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch

from trainers.flops import FlopCount, flops_for_task
from trainers.models import build_model, init_weights
from trainers.spec import TrainConfig, TrainSpec
from trainers.tasks import STREAM_BATCHES, TaskData, generator, make_task

# How a run ended. The orchestrator's RunStatus enum has the same values; trainers/ does not
# import it (trainers/ depends on nothing above it).
Status = Literal["completed", "diverged", "stopped"]
COMPLETED: Status = "completed"  # its step budget, or success-stop
DIVERGED: Status = "diverged"  # a training loss or an evaluation was not finite
STOPPED: Status = "stopped"  # the report hook (the orchestrator's stopping rule) ended it

# Called after every evaluation with the record just appended to the history; returning True
# stops the run (the orchestrator's pruner). The one hook the trainer has.
Report = Callable[[dict], "bool | None"]


# The stop reasons, written in one place: the result's `reason` text.
REASON_BUDGET = "step budget reached"


def reason_loss_not_finite(loss: float, step: int) -> str:
    return f"training loss was {loss} at step {step}"


def reason_eval_not_finite(step: int) -> str:
    return f"evaluation was not finite at step {step}"


def reason_success_stop(val_threshold: float, evals: int) -> str:
    return f"success-stop: val accuracy >= {val_threshold} for {evals} evaluations"


def reason_report(step: int) -> str:
    return f"stopped by the report hook at step {step}"


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
    # FLOPs of one training example and of one token (trainers/flops.py), for the analysis.
    flops: dict[str, float] = field(default_factory=dict)
    # Why a checkpoint that was there was not used (truncated, garbage, another spec's); None
    # when there was none or it was resumed.
    checkpoint_note: str | None = None
    # Measured speed at each evaluation (THROUGHPUT_KEYS, aligned with history["step"]): kept
    # apart from `history`, which holds what a rerun repeats bit for bit.
    throughput: dict[str, list[float]] = field(default_factory=dict)
    # How the run executed: device, precision, compilation, workers, peak FLOP/s and where that
    # figure came from, the determinism settings (trainers/device.py: Runtime).
    runtime: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def build_run(spec: TrainSpec, device: torch.device) -> tuple[TaskData, torch.nn.Module]:
    """The run's data and initialized model, from its seed: the one set-up both loops use."""
    data = make_task(spec.task, spec.seed)
    torch.manual_seed(spec.seed)  # init and dropout draw from the global generator
    model = build_model(spec.model, data.vocab_size, data.n_out, data.seq_len)
    init_weights(model, spec.train.init_scale)
    return data, model.to(device)


def batch_generator(seed: int) -> torch.Generator:
    """The generator of the run's minibatch order (trainers/tasks: generator derives every seed)."""
    return generator(seed, STREAM_BATCHES)


def reduce_metrics(
    data: TaskData,
    n: int,
    loss_sum: float,
    correct_tokens: float,
    exact: float,
    n_tokens: float,
    logprob_sum: float,
) -> dict[str, float]:
    """Loss in nats per labelled token and accuracy from an evaluation's float64 sums over `n`
    examples; for sequence tasks also the continuous metrics of Schaeffer et al. (2023):
    per-token accuracy and the mean log-likelihood of a whole answer (nats)."""
    out = {
        "loss": loss_sum / n_tokens,
        "acc": (exact / n) if data.accuracy == "exact" else correct_tokens / n_tokens,
    }
    if data.target == "sequence":
        out["token_acc"] = correct_tokens / n_tokens
        out["answer_logprob"] = logprob_sum / n
    return out


@dataclass(frozen=True)
class Accounting:
    """What a run has consumed after `step` steps: examples, tokens, epochs and training FLOPs.
    Every step trains on the same number of examples, so all of it follows from the step."""

    examples_per_step: int
    n_examples: int  # unique training examples (sequences for the LM)
    flops: FlopCount  # of one training example

    @classmethod
    def of(cls, spec: TrainSpec, data: TaskData) -> Accounting:
        n = data.n_examples  # rows of x_train, or a corpus's windows
        batch = spec.train.batch_examples(data.seq_len)
        return cls(n if batch is None or batch >= n else batch, n, flops_for_task(spec.model, data))

    def at(self, step: int) -> dict[str, float]:
        examples = step * self.examples_per_step
        return {
            "examples": examples,
            "tokens": examples * self.flops.tokens,
            "epochs": examples / self.n_examples,
            "flops": examples * self.flops.total,
        }

    def per_unit(self) -> dict[str, float]:
        """FLOPs of one training example and one token, for TrainResult.flops."""
        return {
            "per_example": self.flops.total,
            "per_example_forward": self.flops.forward,
            "per_example_backward": self.flops.backward,
            "per_token": self.flops.per_token,
            "tokens_per_example": self.flops.tokens,
            "n_matmul": self.flops.n_matmul,
        }


# What each evaluation measures of the run's speed, since the previous evaluation: tokens trained
# on per second (all workers), seconds per optimizer step, and model FLOPs utilization (the
# model's training FLOPs per second over the peak of the devices it ran on).
THROUGHPUT_KEYS = ("tokens_per_s", "step_time", "mfu")


class Throughput:
    """Times the training steps between evaluations (evaluation time excluded)."""

    def __init__(self, accounting: Accounting, peak_flops: float, step: int) -> None:
        self.tokens_per_step = accounting.examples_per_step * accounting.flops.tokens
        self.flops_per_step = accounting.examples_per_step * accounting.flops.total
        self.peak_flops = peak_flops
        self.since, self.from_step = time.perf_counter(), step

    def restart(self, now: float) -> None:
        """After an evaluation: the next lap starts now."""
        self.since = now

    def lap(self, step: int, now: float) -> dict[str, float]:
        steps, seconds = step - self.from_step, max(now - self.since, 1e-9)
        self.from_step = step
        return {
            "tokens_per_s": steps * self.tokens_per_step / seconds,
            "step_time": seconds / max(steps, 1),
            "mfu": steps * self.flops_per_step / seconds / self.peak_flops,
        }


class RunLog:
    """One run's bookkeeping, in both loops: the history, the grokking events, success-stop,
    divergence and the report hook, and how the run ended (`outcome`, None while it trains)."""

    def __init__(self, cfg: TrainConfig, accounting: Accounting, report: Report | None = None):
        self.cfg, self.accounting, self.report = cfg, accounting, report
        self.history: dict[str, list[float]] = {}
        self.throughput: dict[str, list[float]] = {}
        self.events = Events()
        self.above = 0  # consecutive evals with val accuracy >= val_threshold (success-stop)
        self.outcome: tuple[Status, str] | None = None

    def on_loss(self, step: int, loss: float) -> bool:
        """After the forward pass of step `step` (1-based): True if the run diverged there."""
        if math.isfinite(loss):
            return False
        self.events.diverged_step = step
        self.outcome = (DIVERGED, reason_loss_not_finite(loss, step))
        return True

    def on_eval(
        self,
        step: int,
        train: dict[str, float],
        val: dict[str, float],
        weight_norm: float,
        lr: float,
        speed: dict[str, float] | None = None,
    ) -> bool:
        """Record one evaluation (and the speed measured since the last one) and update the
        events; True if the run ends here."""
        cfg, events = self.cfg, self.events
        record = {
            "step": step,
            **{f"train_{k}": v for k, v in train.items()},
            **{f"val_{k}": v for k, v in val.items()},
            "weight_norm": weight_norm,
            "lr": lr,
            **self.accounting.at(step),
        }
        for k, v in record.items():
            self.history.setdefault(k, []).append(v)
        for k, v in (speed or {}).items():
            self.throughput.setdefault(k, []).append(v)
        if events.memorization_step is None and train["acc"] >= cfg.train_threshold:
            events.memorization_step = step
        if events.generalization_step is None and val["acc"] >= cfg.val_threshold:
            events.generalization_step = step
        self.above = self.above + 1 if val["acc"] >= cfg.val_threshold else 0
        if not all(math.isfinite(v) for v in record.values()):
            events.diverged_step = step
            self.outcome = (DIVERGED, reason_eval_not_finite(step))
        elif cfg.success_stop_evals is not None and self.above >= cfg.success_stop_evals:
            self.outcome = (COMPLETED, reason_success_stop(cfg.val_threshold, self.above))
        elif self.report is not None and self.report({**record, **(speed or {})}):
            self.outcome = (STOPPED, reason_report(step))
        return self.outcome is not None

    def finish(self) -> tuple[Status, str]:
        """How the run ended: its outcome, or the step budget if nothing ended it earlier."""
        if self.outcome is None:
            self.outcome = (COMPLETED, REASON_BUDGET)
        return self.outcome

    def state(self) -> dict:
        """What a checkpoint keeps of the bookkeeping."""
        return {
            "history": self.history,
            "events": asdict(self.events),
            "above": self.above,
            "throughput": self.throughput,
        }

    def restore(self, state: dict, finished: tuple[str, str] | None) -> None:
        self.history, self.events, self.above = state["history"], Events(**state["events"]), state["above"]
        self.throughput = state.get("throughput", {})
        self.outcome = finished  # (status, reason) of a run that had already ended

    def result(
        self,
        steps: int,
        n_params: dict[str, int],
        data: TaskData,
        wall_time_s: float,
        eval_time_s: float,
        resumed_from_step: int,
        checkpoint_note: str | None,
        runtime: dict | None = None,
    ) -> TrainResult:
        status, reason = self.finish()
        return TrainResult(
            status=status,
            reason=reason,
            steps=steps,
            final={k: v[-1] for k, v in self.history.items()},
            history=self.history,
            events=self.events,
            n_params=n_params,
            n_train=data.n_train,
            wall_time_s=wall_time_s,
            eval_time_s=eval_time_s,
            resumed_from_step=resumed_from_step,
            task_info=data.info,
            flops=self.accounting.per_unit(),
            checkpoint_note=checkpoint_note,
            throughput=self.throughput,
            runtime=runtime or {},
        )
