"""A group's phase-rule evidence, indexed for the two questions `PhaseRule.rules` asks of every
run in flight: the unresolved run with the longest decay clock among those with at least as
much data and at least as fast a decay, and whether a run with no more data and no faster decay
generalized within a given clock.

Asked by scanning the evidence, every run in flight cost O(evidence) each time its group learned
something, which is every turn in a study with runs in flight: O(runs in flight x runs done) a
turn. Indexed, per data fraction the evidence sorted by decay rate with the best two
of every suffix (longest clock) and prefix (shortest clock): built once a turn in O(E log E),
each run's question O(data fractions x log E). Two, not one: a run is never evidence for
itself, and its own entry may be the best.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol


class Entry(Protocol):
    run: str
    d_value: float
    rate: float
    clock: float


@dataclass(frozen=True)
class _Ranked:
    """Evidence sorted by rate, with the best two of each suffix or prefix under `better`."""

    rates: list[float]
    best: list[tuple[tuple[int, Entry], ...]]  # per position: up to two (order, entry), best first


def _best_two(acc: tuple, item: tuple, better: Callable[[tuple, tuple], bool]) -> tuple:
    if not acc or better(item, acc[0]):
        return (item, *acc[:1])
    if len(acc) == 1 or better(item, acc[1]):
        return (acc[0], item)
    return acc


def _ranked(items: list[tuple[int, Entry]], better: Callable[[tuple, tuple], bool], suffix: bool) -> _Ranked:
    items.sort(key=lambda oe: oe[1].rate)
    rates = [e.rate for _, e in items]
    best: list[tuple] = [()] * len(items)
    acc: tuple = ()
    order = range(len(items) - 1, -1, -1) if suffix else range(len(items))
    for i in order:
        acc = _best_two(acc, items[i], better)
        best[i] = acc
    return _Ranked(rates, best)


def _longer(a: tuple[int, Entry], b: tuple[int, Entry]) -> bool:
    """The longer clock; on a tie the earlier entry (the scan's `max` kept the first)."""
    return (a[1].clock, -a[0]) > (b[1].clock, -b[0])


def _shorter(a: tuple[int, Entry], b: tuple[int, Entry]) -> bool:
    return (a[1].clock, a[0]) < (b[1].clock, b[0])


class EvidenceIndex:
    def __init__(self, unresolved: Iterable[Entry], generalized: Iterable[Entry]) -> None:
        """`unresolved`, `generalized`: in their dicts' order (a tie goes to the earlier one)."""
        self.unresolved = self._by_d(unresolved, _longer, suffix=True)
        self.generalized = self._by_d(generalized, _shorter, suffix=False)

    @staticmethod
    def _by_d(entries: Iterable[Entry], better, suffix: bool) -> dict[float, _Ranked]:
        groups: dict[float, list[tuple[int, Entry]]] = {}
        for i, e in enumerate(entries):
            groups.setdefault(e.d_value, []).append((i, e))
        return {d: _ranked(items, better, suffix) for d, items in groups.items()}

    def longest_easier(self, run: str, d_value: float, rate: float) -> Entry | None:
        """Of the unresolved entries of other runs with d >= d_value and rate >= `rate`, the one
        with the longest clock (the earliest of equals); None if there is none."""
        top = None
        for d, ranked in self.unresolved.items():
            if d < d_value:
                continue
            i = bisect_left(ranked.rates, rate)
            if i == len(ranked.rates):
                continue
            found = next((oe for oe in ranked.best[i] if oe[1].run != run), None)
            if found is not None and (top is None or _longer(found, top)):
                top = found
        return None if top is None else top[1]

    def harder_within(self, run: str, d_value: float, rate: float, clock: float) -> bool:
        """Whether another run with d <= d_value and rate <= `rate` generalized by `clock`."""
        for d, ranked in self.generalized.items():
            if d > d_value:
                continue
            j = bisect_right(ranked.rates, rate)
            if j == 0:
                continue
            found = next((oe for oe in ranked.best[j - 1] if oe[1].run != run), None)
            if found is not None and found[1].clock <= clock:
                return True
        return False
