"""What a worker has seen of its own run: the evaluations its stop rules are applied to."""

from __future__ import annotations

import math
from collections import deque
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
    _halves: _Halves = field(default_factory=lambda: _Halves(), repr=False, compare=False)
    _asked: int = field(default=-1, repr=False, compare=False)

    def see(self, record: dict) -> None:
        step = int(record["step"])
        if self.memorized_at is None and record.get("train_acc", -1.0) >= self.train_threshold:
            self.memorized_at = step
        if self.generalized_at is None and record.get("val_acc", -1.0) >= self.val_threshold:
            self.generalized_at = step
        self.curve.append(
            (step, float(record.get("train_acc", math.nan)), float(record.get("val_acc", math.nan)))
        )

    def stalled(self, step: int) -> bool:
        """Training and validation accuracy each gained less than STALL_TOLERANCE from the first
        half of the run's steps so far to the second. The worker asks at every evaluation with a
        growing step, so the halfway point only moves on: points pass from the second half to the
        first once, and each half keeps its maxima (the second in a monotonic deque), O(1)
        amortized an evaluation instead of a rescan of the curve."""
        if step < self._asked:
            self._halves = _Halves()  # asked about an earlier step: start over
        self._asked = step
        h = self._halves
        while h.mid < len(self.curve) and self.curve[h.mid][0] <= step / 2:
            for i in (0, 1):
                x = self.curve[h.mid][i + 1]
                if math.isfinite(x):
                    h.early[i] = max(h.early[i], x)
            h.mid += 1
        while h.fed < len(self.curve):
            for i in (0, 1):
                x = self.curve[h.fed][i + 1]
                if math.isfinite(x):
                    while h.late[i] and h.late[i][-1][1] <= x:
                        h.late[i].pop()
                    h.late[i].append((h.fed, x))
            h.fed += 1
        for i in (0, 1):
            while h.late[i] and h.late[i][0][0] < h.mid:
                h.late[i].popleft()
            if h.early[i] == -math.inf or not h.late[i] or h.late[i][0][1] >= h.early[i] + STALL_TOLERANCE:
                return False
        return True


@dataclass
class _Halves:
    """RunState.stalled's running split of the curve at half the step asked."""

    mid: int = 0  # curve[:mid] is the first half
    fed: int = 0  # curve[:fed] has been seen by the second half's deques
    early: list[float] = field(default_factory=lambda: [-math.inf, -math.inf])  # (train, val) maxima
    late: tuple[deque, deque] = field(default_factory=lambda: (deque(), deque()))  # (index, value), falling
