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

import sys
from pathlib import Path

# tests/ itself on the path, so `support` imports from every folder below it (pytest's default
# import mode puts only each test file's own folder there).
TESTS = str(Path(__file__).resolve().parent)
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)
