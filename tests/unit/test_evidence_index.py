"""EvidenceIndex answers the phase rule's two questions exactly as scanning every piece of
evidence does (the rule before the index): random groups with repeated data fractions, rates
and clocks (ties), and runs asking about themselves, which are never their own evidence."""

from __future__ import annotations

import random

from orchestrator.sweep.stopping.evidence_index import EvidenceIndex
from orchestrator.sweep.stopping.phase import Evidence


def scan_easier(unresolved, run, d, rate):
    easier = [e for e in unresolved if e.run != run and e.d_value >= d and e.rate >= rate]
    return max(easier, key=lambda e: e.clock, default=None)


def scan_harder(generalized, run, d, rate, clock):
    return any(e.run != run and e.d_value <= d and e.rate <= rate and e.clock <= clock for e in generalized)


def test_the_index_answers_as_the_scan_does():
    rng = random.Random(0)
    for _ in range(300):
        n = rng.randint(0, 40)
        ds, rates, clocks = (
            [0.3, 0.5, 0.7],
            [rng.choice([0.01, 0.02, 0.05]) for _ in range(5)],
            [1.0, 2.0, 3.0, 5.0],
        )
        unresolved = [
            Evidence(f"u{i}", rng.choice(ds), rng.choice(rates), rng.choice(clocks)) for i in range(n)
        ]
        generalized = [
            Evidence(f"g{i}", rng.choice(ds), rng.choice(rates), rng.choice(clocks))
            for i in range(rng.randint(0, 20))
        ]
        index = EvidenceIndex(unresolved, generalized)
        asking = [e.run for e in unresolved[:5] + generalized[:5]] + ["new"]
        for run in asking:
            for d in (0.2, *ds, 0.8):
                for rate in (0.005, *rates, 0.1):
                    assert index.longest_easier(run, d, rate) is scan_easier(unresolved, run, d, rate)
                    for clock in (0.5, *clocks, 9.0):
                        assert index.harder_within(run, d, rate, clock) == scan_harder(
                            generalized, run, d, rate, clock
                        )


def test_an_empty_group_has_no_evidence():
    index = EvidenceIndex([], [])
    assert index.longest_easier("r", 0.5, 0.01) is None and not index.harder_within("r", 0.5, 0.01, 1.0)
