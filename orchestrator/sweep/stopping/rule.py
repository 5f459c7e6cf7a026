"""A stop rule: what a worker needs to stop its run, plain data posted through Ray.

A run gets a tuple of rules (possibly empty), each of one kind (`StopKind`); the worker checks
them at every evaluation (`first_stop`), and the kind of the one that fired travels back with
the run's result, so the driver tells rules apart by kind, never by their text.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.store.names import StopKind
from orchestrator.sweep.stopping.run_state import RunState

# The objective rule's events: which event a step objective waits for ("val": generalized).
STEP_OBJECTIVES = {"generalization_step": "val", "memorization_step": "train"}


@dataclass(frozen=True)
class StopRule:
    """One rule for one run; which fields it reads depends on its kind."""

    kind: StopKind
    reason: str
    min_step: int = 0  # never before this step
    # OBJECTIVE: stop once at min_step without this event ("val": generalized, "train": memorized)
    event: str | None = None
    # DECAY_CLOCK: stop once memorized at m, not generalized, and at step >= memorized_for x m
    memorized_for: float | None = None
    # STALLED: from this step on (decay equilibrium), stop a run that has not generalized and
    # whose training and validation accuracy each rose by less than STALL_TOLERANCE over the
    # second half of its steps so far
    stalled_after: int | None = None


StopRules = tuple[StopRule, ...]  # a run's rules, checked in order


def stop_reason(rule: StopRule, state: RunState, step: int) -> str | None:
    """Why the run stops at this evaluation under `rule`, or None to go on."""
    if step < rule.min_step:
        return None
    if rule.kind == StopKind.OBJECTIVE:
        reached = state.generalized_at if rule.event == "val" else state.memorized_at
        return rule.reason if reached is None else None
    if state.generalized_at is not None:  # phase: a run that generalized is never pruned
        return None
    if rule.kind == StopKind.DECAY_CLOCK:
        due = state.memorized_at is not None and step >= rule.memorized_for * max(1, state.memorized_at)
        return rule.reason if due else None
    if rule.kind == StopKind.STALLED and step >= rule.stalled_after and state.stalled(step):
        return rule.reason + (": memorization" if state.memorized_at is not None else ": confusion")
    return None


def first_stop(rules: StopRules, state: RunState, step: int) -> tuple[StopKind, str] | None:
    """The kind and reason of the first of the run's rules that stops it here, or None."""
    for rule in rules:
        why = stop_reason(rule, state, step)
        if why is not None:
            return rule.kind, why
    return None
