"""A published claim and grokscale's verdict on it: what was measured, and whether it agrees.

A claim's check is a pure function of a study page's results dict (the report's results.json,
plus `page_runs`: one record per training run, see docs/results/study_page.py). It answers
"yes", "no" or "cannot tell", each with the measured numbers in words; "cannot tell" says why
the data cannot decide (too few runs, a grid that does not bracket the effect, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Agrees = Literal["yes", "no", "cannot tell"]


@dataclass(frozen=True)
class Verdict:
    measured: str  # what grokscale measured, in words with its numbers
    agrees: Agrees
    reason: str  # why it agrees, disagrees (with the likely cause), or cannot tell

    def cell(self) -> str:
        """The table's "agrees?" cell."""
        return f"**{self.agrees}**: {self.reason}"


@dataclass(frozen=True)
class Claim:
    paper: str  # who claims it, e.g. "Power et al. 2022"
    statement: str  # the claim, in the paper's sense
    check: Callable[[dict], Verdict]


def count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
