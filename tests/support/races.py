"""Fault tests that retry when a fault misses its moment, and fail at once on a real failure."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest


class Race(Exception):
    """A fault missed its moment: the study ran faster or slower than the test's plan (a loaded
    CI machine), so the fault did not hit what the test means to prove. Not a failure of
    grokscale: `retry_races` runs the scenario again from scratch."""


def retry_races(attempts: int = 3):
    """Run the test again, in fresh directories, when it raises Race (at most `attempts` times);
    every real assertion still fails at once."""

    def wrap(test):
        @functools.wraps(test)
        def run(**fixtures):
            for attempt in range(1, attempts + 1):
                try:
                    return test(**fixtures)
                except Race as race:
                    if attempt == attempts:
                        pytest.fail(f"the fault missed its moment {attempts} times; last: {race}")
                    print(f"\nattempt {attempt}: {race}; again from scratch")
                    fixtures = {
                        k: fresh_dir(v, attempt) if isinstance(v, Path) else v for k, v in fixtures.items()
                    }

        return run

    return wrap


def fresh_dir(root: Path, attempt: int) -> Path:
    path = root / f"r{attempt}"  # short: py-spy shows checkpoint paths of ~128 characters whole
    path.mkdir()
    return path
