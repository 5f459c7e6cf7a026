"""The objective rule: for a step objective (the generalization or memorization step,
minimized), a run still short of the event at step s will score more than s, so once s reaches
the cell's best it cannot improve the cell's answer. Exact: it never changes a cell's best
value. For the search for the fastest regularization (sweeps/grok_fast.yaml).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from orchestrator.store.names import StopKind
from orchestrator.sweep.stopping.base import RunInfo, StoppingRule
from orchestrator.sweep.stopping.rule import STEP_OBJECTIVES, StopRule, StopRules


class ObjectiveRule(StoppingRule):
    def __init__(self, metric: str = "generalization_step", n_seeds: int = 1) -> None:
        self.metric = metric
        self.n_seeds = n_seeds
        self.best: dict[str, float] = {}  # cell key -> best value
        self.taught: set[str] = set()  # runs in flight whose generalization was already taught

    def trial_done(self, cell_key: str, value: float | None) -> bool:
        """True when `value` is the cell's new best, so its runs in flight get a tighter rule."""
        if value is None or not math.isfinite(value):
            return False
        if value < self.best.get(cell_key, math.inf):
            self.best[cell_key] = value
            return True
        return False

    def see(self, run: RunInfo, record: dict) -> bool:
        """With one seed, a run's generalization step is its trial's value the moment it is
        seen: taught now rather than when the run ends (a packed run ends with its whole pack)."""
        if self.n_seeds != 1 or self.metric != "generalization_step" or run.key in self.taught:
            return False
        if record.get("val_acc", -1.0) < run.train.val_threshold:
            return False
        self.taught.add(run.key)
        return self.trial_done(run.cell_key, float(record["step"]))

    def run_done(self, run: RunInfo, history: dict[str, list], stop_kind: StopKind | None) -> bool:
        self.taught.discard(run.key)
        return False

    def scope(self, run: RunInfo) -> str:
        return run.cell_key  # a cell's best bounds only its own runs

    def rules(self, run: RunInfo) -> StopRules:
        best = self.best.get(run.cell_key)
        if best is None:
            return ()
        # One seed past n x best cannot bring the mean over n seeds below best.
        bound = math.ceil(best * self.n_seeds)
        return (
            StopRule(
                StopKind.OBJECTIVE,
                f"pruned: no {self.metric} by step {bound}, so it cannot beat the cell's best ({best:g})",
                min_step=bound,
                event=STEP_OBJECTIVES[self.metric],
            ),
        )

    def restore(self, run: RunInfo, value: float | None, attrs: Mapping[str, Any]) -> None:
        self.trial_done(run.cell_key, value)
