"""The test suite's layout and its shared helpers.

- unit/    pure code in one process: analysis, models, tasks, the trainer, schedules, FLOPs,
           corpora, stopping rules, configs (seconds each, a few `slow` trainings)
- study/   real `grokscale run` studies on a local Ray, Optuna and MLflow (orchestrator, report,
           reproduce, Postgres, Slurm, holds, UI links, the live table on a terminal, security)
- faults/  real faults on real components: SIGKILLed workers, nodes, drivers and tracking
           servers, damaged journals, the soak (`make soak`)

The helpers they share live in tests/support/ (`from support.cli import grokscale`): plain
functions, so a test module imports what it uses and a reader can follow it there.
"""

import shutil
import sys
import tempfile
from pathlib import Path

import pytest

# tests/ itself on the path, so `support` imports from every folder below it (pytest's default
# import mode puts only each test file's own folder there).
TESTS = str(Path(__file__).resolve().parent)
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)


@pytest.fixture(scope="session", autouse=True)
def private_ray_tmpdir():
    """Each session's Ray is its own, apart from any other on this machine (the suite runs as two
    pytest-xdist workers): Ray's temp folder (RAY_TMPDIR, inherited by every driver the tests
    start) is a private one, so a local `ray.init()` starts a new Ray instead of joining the
    cluster the last `ray start` here recorded in /tmp/ray/ray_current_cluster (a two-node test
    on the other worker, or another suite beside this one)."""
    path = tempfile.mkdtemp(prefix="gsr", dir="/tmp")  # short: Ray's socket paths are capped at 107 bytes
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_TMPDIR", path)
        yield path
    shutil.rmtree(path, ignore_errors=True)


def pytest_collection_modifyitems(items):
    """The tests marked `slow` (a minute or so each) first, the rest in their order after them: the
    two xdist workers then end on short tests, and neither waits on the other's last long one."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
