"""Per-cell pruning: stop a run once its answer is known, and never before.

Two rules, chosen by the study's `prune.mode`:

objective  For a step objective (the generalization or memorization step, minimized): a run
           still short of the event at step s will score more than s, so once s reaches the
           cell's best it cannot improve the cell's answer. Exact: it never changes a cell's
           best value. For the search for the fastest regularization (sweeps/grok_fast.yaml).

phase      For phase diagrams (sweeps/grokking_modular.yaml): stop a run whose full budget would
           end in "memorization", once that is clear. Under AdamW the weights shrink by
           exp(-sum of lr_t x weight decay) from decay alone (decoupled decay, Loshchilov and
           Hutter 2019), and the late generalization of grokking is that shrinkage at work:
           grokking time scales as 1 / (lr x weight decay) (Lyu et al. 2024, "Dichotomy of early
           and late phase implicit biases", Thm. 3.3; Liu et al. 2023, "Omnigrok"). So runs are
           compared on their decay clock, sum(lr_t x weight decay), within a group (same N, same
           searched values other than lr and weight decay). Two orderings make one run evidence
           for another: fewer training examples need more decay (Power et al. 2022, Fig. 1), and
           so does a slower decay rate lr x wd (phase diagrams go memorization -> grokking ->
           comprehension as weight decay rises, Liu et al. 2022, "Towards understanding
           grokking", Fig. 6). Hence:
             evidence  a run with at least as much data and at least as fast a decay rate that
                       has gone a decay clock L without generalizing, while still fitting its
                       training set (median training loss over the last half of its steps
                       <= FIT_LOSS: over-strong decay, which balances the gradient at a high
                       training loss and fails for another reason, teaches nothing);
             rule      a run that has memorized, has not generalized for a decade of steps since
                       (so it is not comprehension, see analysis/grokking.py), and whose whole
                       budget of decay is under L / `safety`, is stopped;
             veto      unless a run with no more data and no faster decay generalized within
                       this run's budget of decay.
           Also, per run: after 20 e-folds of decay (sum lr_t x weight decay >= 20) nothing of
           the init is left and full-batch training has long settled where gradient and decay
           balance; a run there that has not generalized, and whose training and validation
           accuracy each rose by less than 0.01 over the second half of its steps so far, is
           stuck: "memorization" if it memorized, else "confusion", the labels its
           full budget would give it. Found at equilibrium, it would have gone its whole budget
           without generalizing: that budget is the L it teaches the rule above.

A cell's fastest-decaying runs are the first to generalize or settle, so with a sampler whose
draws ignore results the driver runs them first (orchestrator/sweep/driver.py).

The driver decides (this module's pure functions) and posts each run a `StopRule`; the worker
applies it to its own evaluations as they come (`stop_reason`), so a rule acts within one
evaluation of being known, without a round trip per step.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field, replace
from typing import Any

from trainers.spec import TrainConfig
from trainers.train import lr_factor

# Searched fields that only move the decay clock: runs differing in these alone compare.
CLOCK_PARAMS = frozenset({"train.weight_decay", "train.lr", "train.warmup_steps"})
# After this many e-folds of decay nothing of the init is left, and a run whose accuracies have
# stopped rising is stuck where it is. Not 5 (weights under 1% of their init): in the naive phase
# diagram of bench_sweep_compute.py on seed 1, a run (D = 0.4, weight decay 1) grokked at 35
# e-folds after its validation accuracy crept from 0.03 to 0.05; at 5 e-folds it had risen by
# 0.001 over the second half (flat), at 20 by 0.023 or more at every evaluation (not flat).
EQUILIBRIUM_EFOLDS = 20.0
STALL_TOLERANCE = 0.01  # accuracy, absolute
STEP_OBJECTIVES = {"generalization_step": "val", "memorization_step": "train"}
STALLED = "pruned: stalled"  # the stall rule's reasons start so
# Training cross-entropy a run must keep (median over the last half of its steps) for its decay
# clock to count as evidence. In the naive phase diagram of bench_sweep_compute.py, runs whose
# decay the clock describes settle at 1e-7 to 1e-4; those with decay too strong to fit the
# training set (weight decay 3 and up there) at 1e-2 to 0.5.
FIT_LOSS = 1e-3


def clock_step(train: TrainConfig, efolds: float) -> int | None:
    """The first step at which decay_clock reaches `efolds` (None: not within the budget)."""
    if train.lr * train.weight_decay <= 0 or decay_clock(train, train.steps) < efolds:
        return None
    lo, hi = 0, train.steps  # decay_clock grows with the step: bisect
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if decay_clock(train, mid) < efolds else (lo, mid)
    return lo


def decay_clock(train: TrainConfig, steps: int) -> float:
    """sum over the first `steps` steps of lr_t x weight decay: the log of the factor by which
    AdamW's decoupled weight decay alone shrinks the weights by then."""
    w = train.warmup_steps
    warm = min(steps, w)
    ramp = sum(lr_factor(s, w) for s in range(warm)) if w else 0.0
    return train.lr * train.weight_decay * (ramp + max(0, steps - warm))


@dataclass(frozen=True)
class StopRule:
    """What a worker needs to stop its run: plain data, posted through Ray."""

    reason: str = ""
    min_step: int = 0  # never before this step
    # objective: stop once at min_step without this event ("val": generalized, "train": memorized)
    event: str | None = None
    # phase, memorization: stop once memorized at m, not generalized, and at step >= memorized_for x m
    memorized_for: float | None = None
    # phase, stalled: from this step on (decay equilibrium), stop a run that has not generalized
    # and whose training and validation accuracy each rose by less than STALL_TOLERANCE over the
    # second half of its steps so far
    stalled_after: int | None = None
    stalled_reason: str = ""


@dataclass
class RunState:
    """What a worker has seen in its own run's evaluations."""

    train_threshold: float
    val_threshold: float
    memorized_at: int | None = None
    generalized_at: int | None = None
    curve: list[tuple[int, float, float]] = field(default_factory=list)  # (step, train acc, val acc)

    def see(self, record: dict) -> None:
        step = int(record["step"])
        if self.memorized_at is None and record.get("train_acc", -1.0) >= self.train_threshold:
            self.memorized_at = step
        if self.generalized_at is None and record.get("val_acc", -1.0) >= self.val_threshold:
            self.generalized_at = step
        self.curve.append((step, float(record.get("train_acc", math.nan)), float(record.get("val_acc", math.nan))))

    def stalled(self, step: int) -> bool:
        """Training and validation accuracy each gained less than STALL_TOLERANCE from the first
        half of the run's steps so far to the second."""
        for i in (1, 2):
            early = [p[i] for p in self.curve if p[0] <= step / 2 and math.isfinite(p[i])]
            late = [p[i] for p in self.curve if p[0] > step / 2 and math.isfinite(p[i])]
            if not (early and late) or max(late) >= max(early) + STALL_TOLERANCE:
                return False
        return True


def stop_reason(rule: StopRule | None, state: RunState, step: int) -> str | None:
    """Why the run stops at this evaluation under its rule, or None to go on."""
    if rule is None or step < rule.min_step:
        return None
    if rule.event is not None:
        reached = state.generalized_at if rule.event == "val" else state.memorized_at
        return rule.reason if reached is None else None
    if state.generalized_at is not None:  # phase: a run that generalized is never pruned
        return None
    if (rule.memorized_for is not None and state.memorized_at is not None
            and step >= rule.memorized_for * max(1, state.memorized_at)):
        return rule.reason
    if rule.stalled_after is not None and step >= rule.stalled_after and state.stalled(step):
        return rule.stalled_reason + (": memorization" if state.memorized_at is not None else ": confusion")
    return None


@dataclass(frozen=True)
class Evidence:
    """One run's lesson for the phase rule: its decay clock at an event, and where it stands."""

    run: str  # which run, named in the reasons it gives
    d_value: float
    rate: float  # lr x weight decay: how fast its decay clock runs
    clock: float  # generalized: the clock when it did; unresolved: the most it went without


def decay_rate(train: TrainConfig) -> float:
    return train.lr * train.weight_decay


@dataclass
class Pruner:
    """The driver's side: what each cell has learned, and the rule each run gets from it."""

    mode: str  # "objective" | "phase"
    metric: str = "generalization_step"  # objective: the step objective
    safety: float = 2.0  # phase
    memorized_for: float = 10.0  # phase
    n_seeds: int = 1
    best: dict[str, float] = field(default_factory=dict)  # objective: cell key -> best value
    # phase, per group (Pruner.group): run -> the decay clock it went without generalizing, while fitting
    unresolved: dict[tuple, dict[str, Evidence]] = field(default_factory=dict)
    # phase, per group: run -> the decay clock at which it generalized
    generalized: dict[tuple, dict[str, Evidence]] = field(default_factory=dict)
    losses: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # phase: run -> (step, train loss)

    @staticmethod
    def group(n_index: int, params: dict[str, Any]) -> tuple:
        return (n_index, tuple(sorted((k, repr(v)) for k, v in params.items() if k not in CLOCK_PARAMS)))

    def trial_done(self, cell_key: str, value: float | None) -> bool:
        """A trial of the cell ended with objective `value` (mean over seeds); True when it is
        the cell's new best, so that its runs in flight get a tighter rule."""
        if self.mode != "objective" or value is None or not math.isfinite(value):
            return False
        if value < self.best.get(cell_key, math.inf):
            self.best[cell_key] = value
            return True
        return False

    def see(self, run: str, group: tuple, d_value: float, train: TrainConfig, record: dict) -> bool:
        """One evaluation of a run, as the driver receives it (phase mode; an evaluation seen
        before is skipped); True when what the run teaches its group changed."""
        if self.mode != "phase" or run in self.generalized.get(group, {}):
            return False
        step = int(record["step"])
        seen = self.losses.setdefault(run, [])
        if seen and step <= seen[-1][0]:
            return False
        clock = decay_clock(train, step)
        if record.get("val_acc", -1.0) >= train.val_threshold:
            self.generalized.setdefault(group, {})[run] = Evidence(run, d_value, decay_rate(train), clock)
            self.losses.pop(run, None)
            return True
        seen.append((step, float(record.get("train_loss", math.nan))))
        recent = [loss for s, loss in seen if s > step / 2]
        unresolved = self.unresolved.setdefault(group, {})
        if all(math.isfinite(x) for x in recent) and statistics.median(recent) <= FIT_LOSS:
            unresolved[run] = Evidence(run, d_value, decay_rate(train), clock)
            return True
        return unresolved.pop(run, None) is not None

    def run_done(self, run: str, group: tuple, d_value: float, train: TrainConfig, history: dict[str, list],
                 reason: str = "") -> bool:
        """A run ended: its whole history (what the live stream missed included), and whether
        the stall rule stopped it. True when what it teaches its group changed."""
        changed = False
        for i in range(len(history.get("step") or [])):
            record = {k: v[i] for k, v in history.items() if i < len(v)}  # "step" among them
            changed = self.see(run, group, d_value, train, record) or changed
        self.losses.pop(run, None)
        mine = self.unresolved.get(group, {}).get(run)
        if mine is not None and reason.startswith(STALLED):
            # Found at equilibrium, not generalizing: it would have gone its whole budget so.
            self.unresolved[group][run] = replace(mine, clock=max(mine.clock, decay_clock(train, train.steps)))
            changed = True
        return changed

    def restore(self, run: str, group: tuple, d_value: float, train: TrainConfig,
                generalization_step: int | None, unresolved_clock: float | None) -> None:
        """What a finished run taught, read back from Optuna when a study resumes."""
        if self.mode != "phase":
            return
        if generalization_step is not None:
            self.generalized.setdefault(group, {})[run] = Evidence(
                run, d_value, decay_rate(train), decay_clock(train, int(generalization_step)))
        if unresolved_clock is not None:
            self.unresolved.setdefault(group, {})[run] = Evidence(run, d_value, decay_rate(train), unresolved_clock)

    def unresolved_clock(self, group: tuple, run: str) -> float | None:
        mine = self.unresolved.get(group, {}).get(run)
        return None if mine is None else mine.clock

    def rule(self, cell_key: str, group: tuple, d_value: float, train: TrainConfig, run: str = "") -> StopRule | None:
        if self.mode == "objective":
            best = self.best.get(cell_key)
            if best is None:
                return None
            # One seed past n x best cannot bring the mean over n seeds below best.
            bound = int(math.ceil(best * self.n_seeds))
            return StopRule(reason=f"pruned: no {self.metric} by step {bound}, so it cannot beat the cell's "
                                   f"best ({best:g})", min_step=bound, event=STEP_OBJECTIVES[self.metric])
        if self.mode == "phase":
            rule = StopRule()
            have, rate = decay_clock(train, train.steps), decay_rate(train)
            easier = [e for e in self.unresolved.get(group, {}).values()
                      if e.run != run and e.d_value >= d_value and e.rate >= rate]
            harder = [e for e in self.generalized.get(group, {}).values()
                      if e.run != run and e.d_value <= d_value and e.rate <= rate and e.clock <= have]
            top = max(easier, key=lambda e: e.clock, default=None)
            if top is not None and have * self.safety < top.clock and not harder:
                rule = replace(rule, memorized_for=self.memorized_for, reason=(
                    f"pruned: memorized and not generalized {self.memorized_for:g}x later; its whole budget of "
                    f"weight decay (sum lr x wd = {have:.3g}) is under 1/{self.safety:g} of the {top.clock:.3g} "
                    f"that {top.run}, with as much data and decay, went without generalizing"))
            stalled = clock_step(train, EQUILIBRIUM_EFOLDS)
            if stalled is not None:
                rule = replace(rule, stalled_after=stalled, stalled_reason=(
                    f"{STALLED}, train and val accuracy flat over the last half of its steps, past "
                    f"{EQUILIBRIUM_EFOLDS:g} e-folds of weight decay (step {stalled})"))
            return rule if rule != StopRule() else None
        return None
