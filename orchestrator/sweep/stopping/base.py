"""The interface every stopping rule gives the driver, the way Optuna's `BasePruner` does for its
pruners: what a live evaluation teaches, what a finished run and a finished trial teach, the
rules a run gets from what is known, and what to keep in Optuna so a resumed driver knows it too.

The driver calls these and nothing else (orchestrator/sweep/driver.py); each rule keeps its own
state per cell. Two rules implement it: objective.py and phase.py.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator.store.names import StopKind
from orchestrator.sweep.stopping.rule import StopRules
from trainers.spec import TrainConfig


@dataclass(frozen=True)
class RunInfo:
    """What a stopping rule knows of one run."""

    key: str  # cell/trial=N/seed=S, named in the reasons the rules give
    cell_key: str
    group: tuple  # runs whose decay clocks compare (clock.clock_group)
    d_value: float
    train: TrainConfig
    seed: int = 0


class StoppingRule(ABC):
    """The driver's side of a stopping rule: what each cell has learned, and each run's rules.
    Every `True` returned means: what is known changed, post the runs in flight new rules."""

    def see(self, run: RunInfo, record: dict) -> bool:
        """One evaluation of a run in flight, as the driver receives it."""
        return False

    def run_done(self, run: RunInfo, history: dict[str, list], stop_kind: StopKind | None) -> bool:
        """A run ended: its whole history (what the live stream missed included), and the kind
        of the rule that stopped it, if one did."""
        return False

    def trial_done(self, cell_key: str, value: float | None) -> bool:
        """A trial of the cell ended with its first objective's `value` (mean over seeds)."""
        return False

    def scope(self, run: RunInfo) -> Hashable:
        """The runs whose rules what a run taught can change: those of the same scope (None:
        every run). The driver re-works only their rules (O(changed runs), not O(runs in flight))."""
        return None

    @abstractmethod
    def rules(self, run: RunInfo) -> StopRules:
        """The rules the run gets from what its cell knows now (empty: none)."""

    def lesson(self, run: RunInfo) -> dict[str, Any]:
        """Optuna trial attributes that keep what a finished run taught, for `restore`."""
        return {}

    # A no-op by default, not abstract: only rules that learn from finished runs restore.
    def restore(self, run: RunInfo, value: float | None, attrs: Mapping[str, Any]) -> None:  # noqa: B027
        """What a finished run taught, read back from its trial when a study resumes: the
        trial's value (None unless complete with one objective) and its user attributes."""
