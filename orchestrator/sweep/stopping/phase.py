"""The phase rule, for phase diagrams (sweeps/grokking_modular.yaml): stop a run whose full
budget would end in "memorization", once that is clear.

Under AdamW the weights shrink by exp(-sum of lr_t x weight decay) from decay alone (decoupled
decay, Loshchilov and Hutter 2019), and the late generalization of grokking is that shrinkage
at work: grokking time scales as 1 / (lr x weight decay) (Lyu et al. 2024, "Dichotomy of early
and late phase implicit biases", Thm. 3.3; Liu et al. 2023, "Omnigrok"). So runs are compared
on their decay clock (clock.py) within a group (same N, same searched values other than lr and
weight decay). Two orderings make one run evidence for another: fewer training examples need
more decay (Power et al. 2022, Fig. 1), and so does a slower decay rate lr x wd (phase diagrams
go memorization -> grokking -> comprehension as weight decay rises, Liu et al. 2022, "Towards
understanding grokking", Fig. 6). Hence:
  evidence  a run with at least as much data and at least as fast a decay rate that has gone a
            decay clock L without generalizing, while still fitting its training set (median
            training loss over the last half of its steps <= FIT_LOSS: over-strong decay, which
            balances the gradient at a high training loss and fails for another reason, teaches
            nothing);
  rule      (DECAY_CLOCK) a run that has memorized, has not generalized for a decade of steps
            since (so it is not comprehension, see analysis/grokking.py), and whose whole budget
            of decay is under L / `safety`, is stopped;
  veto      unless a run with no more data and no faster decay generalized within this run's
            budget of decay.
Also, per run (STALLED): after EQUILIBRIUM_EFOLDS e-folds of decay nothing of the init is left
and full-batch training has long settled where gradient and decay balance; a run there that has
not generalized, and whose training and validation accuracy each rose by less than 0.01 over
the second half of its steps so far, is stuck: "memorization" if it memorized, else "confusion",
the labels its full budget would give it. Found at equilibrium, it would have gone its whole
budget without generalizing: that budget is the L it teaches the rule above.

A cell's fastest-decaying runs are the first to generalize or settle, so with a sampler whose
draws ignore results the driver runs them first (orchestrator/sweep/cell.py).
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

from orchestrator.store import names
from orchestrator.store.names import StopKind
from orchestrator.sweep.stopping.base import RunInfo, StoppingRule
from orchestrator.sweep.stopping.clock import clock_step, decay_clock, decay_rate
from orchestrator.sweep.stopping.evidence_index import EvidenceIndex
from orchestrator.sweep.stopping.rule import StopRule, StopRules

# After this many e-folds of decay nothing of the init is left, and a run whose accuracies have
# stopped rising is stuck where it is. Not 5 (weights under 1% of their init): in the naive phase
# diagram of bench_sweep_compute.py on seed 1, a run (D = 0.4, weight decay 1) grokked at 35
# e-folds after its validation accuracy crept from 0.03 to 0.05; at 5 e-folds it had risen by
# 0.001 over the second half (flat), at 20 by 0.023 or more at every evaluation (not flat).
EQUILIBRIUM_EFOLDS = 20.0
# Training cross-entropy a run must keep (median over the last half of its steps) for its decay
# clock to count as evidence. In the naive phase diagram of bench_sweep_compute.py, runs whose
# decay the clock describes settle at 1e-7 to 1e-4; those with decay too strong to fit the
# training set (weight decay 3 and up there) at 1e-2 to 0.5.
FIT_LOSS = 1e-3


@dataclass(frozen=True)
class Evidence:
    """One run's lesson for the phase rule: its decay clock at an event, and where it stands."""

    run: str  # which run, named in the reasons it gives
    d_value: float
    rate: float  # lr x weight decay: how fast its decay clock runs
    clock: float  # generalized: the clock when it did; unresolved: the most it went without


class RecentLosses:
    """A run's training losses over the last half of its steps (s > step / 2), for the fit
    guard: O(log n) an evaluation instead of a rescan of its whole history."""

    def __init__(self) -> None:
        self.window: deque[tuple[int, float]] = deque()  # (step, loss), oldest first
        self.finite: list[float] = []  # the window's finite losses, sorted
        self.not_finite = 0
        self.last_step: int | None = None

    def add(self, step: int, loss: float) -> None:
        self.last_step = step
        self.window.append((step, loss))
        self._put(loss, +1)
        while self.window and self.window[0][0] <= step / 2:
            self._put(self.window.popleft()[1], -1)

    def _put(self, loss: float, sign: int) -> None:
        if not math.isfinite(loss):
            self.not_finite += sign
        elif sign > 0:
            insort(self.finite, loss)
        else:
            del self.finite[bisect_left(self.finite, loss)]

    def fits(self) -> bool:
        """Every loss in the window finite, and their median <= FIT_LOSS."""
        n = len(self.finite)
        if self.not_finite or not n:
            return False
        median = self.finite[n // 2] if n % 2 else (self.finite[n // 2 - 1] + self.finite[n // 2]) / 2
        return median <= FIT_LOSS


@lru_cache(maxsize=4096)
def _budget(train) -> tuple[float, float, int | None]:
    """(whole-budget decay clock, decay rate, equilibrium step) of a run's config: rules() asks
    for every run it is posted to."""
    return decay_clock(train, train.steps), decay_rate(train), clock_step(train, EQUILIBRIUM_EFOLDS)


class PhaseRule(StoppingRule):
    def __init__(self, safety: float = 2.0, memorized_for: float = 10.0) -> None:
        self.safety = safety
        self.memorized_for = memorized_for
        # per group: run -> the decay clock it went without generalizing, while fitting
        self.unresolved: dict[tuple, dict[str, Evidence]] = {}
        # per group: run -> the decay clock at which it generalized
        self.generalized: dict[tuple, dict[str, Evidence]] = {}
        # run in flight -> its training losses over the last half of its steps (the fit guard)
        self.losses: dict[str, RecentLosses] = {}
        self.indexes: dict[tuple, EvidenceIndex] = {}  # per group, until its evidence changes

    def _evidence(self, run: RunInfo, clock: float) -> Evidence:
        return Evidence(run.key, run.d_value, decay_rate(run.train), clock)

    def see(self, run: RunInfo, record: dict) -> bool:
        """An evaluation seen before (the history replayed when the run ends) is skipped."""
        if run.key in self.generalized.get(run.group, {}):
            return False
        step = int(record["step"])
        seen = self.losses.setdefault(run.key, RecentLosses())
        if seen.last_step is not None and step <= seen.last_step:
            return False
        clock = decay_clock(run.train, step)
        if record.get("val_acc", -1.0) >= run.train.val_threshold:
            self.generalized.setdefault(run.group, {})[run.key] = self._evidence(run, clock)
            self.losses.pop(run.key, None)
            return self._changed(run.group)
        seen.add(step, float(record.get("train_loss", math.nan)))
        unresolved = self.unresolved.setdefault(run.group, {})
        if seen.fits():
            unresolved[run.key] = self._evidence(run, clock)
            return self._changed(run.group)
        return unresolved.pop(run.key, None) is not None and self._changed(run.group)

    def _changed(self, group: tuple) -> bool:
        """The group's evidence changed: its index is stale. True, for `see`'s answer."""
        self.indexes.pop(group, None)
        return True

    def run_done(self, run: RunInfo, history: dict[str, list], stop_kind: StopKind | None) -> bool:
        changed = False
        for i in range(len(history.get("step") or [])):
            record = {k: v[i] for k, v in history.items() if i < len(v)}  # "step" among them
            changed = self.see(run, record) or changed
        self.losses.pop(run.key, None)
        mine = self.unresolved.get(run.group, {}).get(run.key)
        if mine is not None and stop_kind == StopKind.STALLED:
            # Found at equilibrium, not generalizing: it would have gone its whole budget so.
            budget = decay_clock(run.train, run.train.steps)
            self.unresolved[run.group][run.key] = replace(mine, clock=max(mine.clock, budget))
            changed = self._changed(run.group)
        return changed

    def unresolved_clock(self, run: RunInfo) -> float | None:
        mine = self.unresolved.get(run.group, {}).get(run.key)
        return None if mine is None else mine.clock

    def lesson(self, run: RunInfo) -> dict[str, Any]:
        return {names.trial_decay_unresolved(run.seed): self.unresolved_clock(run)}

    def restore(self, run: RunInfo, value: float | None, attrs: Mapping[str, Any]) -> None:
        generalization_step = attrs.get(names.trial_generalization_step(run.seed))
        unresolved_clock = attrs.get(names.trial_decay_unresolved(run.seed))
        if generalization_step is not None:
            clock = decay_clock(run.train, int(generalization_step))
            self.generalized.setdefault(run.group, {})[run.key] = self._evidence(run, clock)
            self._changed(run.group)
        if unresolved_clock is not None:
            self.unresolved.setdefault(run.group, {})[run.key] = self._evidence(run, unresolved_clock)
            self._changed(run.group)

    def scope(self, run: RunInfo) -> Hashable:
        return run.group  # evidence compares runs of one group only

    def _index(self, group: tuple) -> EvidenceIndex:
        """The group's evidence indexed (evidence_index.py), built anew once it changed: once a
        turn, however many runs in flight ask."""
        index = self.indexes.get(group)
        if index is None:
            index = self.indexes[group] = EvidenceIndex(
                self.unresolved.get(group, {}).values(), self.generalized.get(group, {}).values()
            )
        return index

    def rules(self, run: RunInfo) -> StopRules:
        out = []
        have, rate, stalled = _budget(run.train)
        index = self._index(run.group)
        top = index.longest_easier(run.key, run.d_value, rate)
        if (
            top is not None
            and have * self.safety < top.clock
            and not index.harder_within(run.key, run.d_value, rate, have)
        ):
            out.append(
                StopRule(
                    StopKind.DECAY_CLOCK,
                    memorized_for=self.memorized_for,
                    reason=(
                        f"pruned: memorized and not generalized {self.memorized_for:g}x later; its whole "
                        f"budget of weight decay (sum lr x wd = {have:.3g}) is under 1/{self.safety:g} of "
                        f"the {top.clock:.3g} that {top.run}, with as much data and decay, went without "
                        "generalizing"
                    ),
                )
            )
        if stalled is not None:
            out.append(
                StopRule(
                    StopKind.STALLED,
                    stalled_after=stalled,
                    reason=(
                        f"pruned: stalled, train and val accuracy flat over the last half of its steps, past "
                        f"{EQUILIBRIUM_EFOLDS:g} e-folds of weight decay (step {stalled})"
                    ),
                )
            )
        return tuple(out)
