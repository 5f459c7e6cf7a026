"""Stopping rules: stop a run once its answer is known, and never before. One interface
(base.py), one file per rule (objective.py, phase.py), chosen by the study's `prune.mode`, or the
study's own rule by import path (orchestrator/study/plugins.py).

The driver decides (these rules) and posts each run its `StopRule`s; the worker applies them to
its own evaluations as they come (rule.first_stop), so a rule acts within one evaluation of
being known, without a round trip per step.
"""

from __future__ import annotations

from orchestrator.study import Study
from orchestrator.study.plugins import make_own_stopping
from orchestrator.sweep.stopping.base import RunInfo, StoppingRule
from orchestrator.sweep.stopping.clock import (
    clock_group,
    clock_step,
    decay_clock,
    decay_rate,
)
from orchestrator.sweep.stopping.objective import ObjectiveRule
from orchestrator.sweep.stopping.phase import PhaseRule
from orchestrator.sweep.stopping.rule import (
    StopRule,
    StopRules,
    first_stop,
    stop_reason,
)
from orchestrator.sweep.stopping.run_state import RunState
from trainers.import_path import is_import_path

__all__ = [
    "ObjectiveRule",
    "PhaseRule",
    "RunInfo",
    "RunState",
    "StopRule",
    "StopRules",
    "StoppingRule",
    "clock_group",
    "clock_step",
    "decay_clock",
    "decay_rate",
    "first_stop",
    "make_stopping",
    "stop_reason",
]


def make_stopping(study: Study) -> StoppingRule | None:
    """The study's stopping rule, fresh (the driver restores what finished trials taught)."""
    mode = study.prune.mode
    if is_import_path(mode):  # the study's own rule (orchestrator/study/plugins.py), checked at load
        return make_own_stopping(mode, study)
    if mode == "objective":
        return ObjectiveRule(metric=study.objectives[0].metric, n_seeds=len(study.grid.seeds))
    if mode == "phase":
        return PhaseRule(safety=study.prune.safety, memorized_for=study.prune.memorized_for)
    return None
