"""What a worker has seen of its own run: the evaluations its stop rules are applied to."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

STALL_TOLERANCE = 0.01  # accuracy, absolute: a rise below it over half a run is flat


@dataclass
class RunState:
    """A run's own evaluations, as its worker sees them."""

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
