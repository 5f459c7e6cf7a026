"""Per-cell pruning rules (orchestrator/pruning.py): the decay clock, each rule's verdicts, and the
worker's side applying a rule to its own evaluations."""

from __future__ import annotations

import math

import pytest

from orchestrator.pruning import Pruner, RunState, StopRule, clock_step, decay_clock, stop_reason
from trainers.spec import TrainConfig


def stopped(rule, state, step) -> bool:
    return stop_reason(rule, state, step) is not None


def test_decay_clock_is_lr_times_weight_decay_summed_over_the_warmup_ramp():
    cfg = TrainConfig(steps=1000, lr=2e-3, weight_decay=0.5, warmup_steps=0)
    assert decay_clock(cfg, 1000) == pytest.approx(2e-3 * 0.5 * 1000)
    warm = TrainConfig(steps=1000, lr=2e-3, weight_decay=0.5, warmup_steps=10)
    # Warmup steps run at (s + 1) / 10 of the rate: 5.5 full steps' worth over the first 10.
    assert decay_clock(warm, 10) == pytest.approx(2e-3 * 0.5 * 5.5)
    assert decay_clock(warm, 1000) == pytest.approx(2e-3 * 0.5 * (5.5 + 990))
    assert decay_clock(TrainConfig(weight_decay=0.0), 10_000) == 0.0


def record(step, train_acc, val_acc):
    return {"step": step, "train_acc": train_acc, "val_acc": val_acc}


def test_objective_rule_stops_only_runs_short_of_the_event_at_the_bound():
    rule = StopRule(reason="r", min_step=600, event="val")
    state = RunState(train_threshold=0.99, val_threshold=0.95)
    for step in (100, 300, 500):
        state.see(record(step, 1.0, 0.5))
        assert not stopped(rule, state, step)
    state.see(record(600, 1.0, 0.5))
    assert stopped(rule, state, 600)
    done = RunState(0.99, 0.95)
    done.see(record(500, 1.0, 0.96))
    done.see(record(600, 1.0, 0.90))  # generalized once: its objective is 500, better than 600
    assert not stopped(rule, done, 600)
    assert not stopped(None, state, 10_000)


def test_phase_rule_waits_a_decade_after_memorization_and_spares_generalizers():
    rule = StopRule(reason="r", memorized_for=10)
    state = RunState(0.99, 0.95)
    state.see(record(100, 0.5, 0.1))
    assert not stopped(rule, state, 100)  # not memorized: could be confusion, never pruned
    state.see(record(200, 1.0, 0.1))
    assert state.memorized_at == 200
    for step in (300, 1000, 1900):
        state.see(record(step, 1.0, 0.3))
        assert not stopped(rule, state, step)  # still inside the comprehension window
    state.see(record(2000, 1.0, 0.3))
    assert stopped(rule, state, 2000)
    grok = RunState(0.99, 0.95)
    grok.see(record(200, 1.0, 0.1))
    grok.see(record(1500, 1.0, 0.97))
    assert not stopped(rule, grok, 5000)


def test_objective_pruner_bounds_by_the_best_and_by_seeds():
    pruner = Pruner("objective", metric="generalization_step", n_seeds=1)
    cfg = TrainConfig(steps=5000)
    assert pruner.rule("c", (), 0.5, cfg) is None  # nothing known yet
    assert pruner.trial_done("c", 900.0)
    assert not pruner.trial_done("c", 1200.0)  # not a new best
    assert not pruner.trial_done("c", math.nan)
    rule = pruner.rule("c", (), 0.5, cfg)
    assert rule.min_step == 900 and rule.event == "val"
    assert pruner.rule("other", (), 0.5, cfg) is None  # per cell
    # Mean over 3 seeds: one seed past 3 x best cannot bring the mean below the best.
    three = Pruner("objective", metric="memorization_step", n_seeds=3)
    three.trial_done("c", 100.0)
    rule = three.rule("c", (), 0.5, cfg)
    assert rule.min_step == 300 and rule.event == "train"


def test_phase_pruner_prunes_runs_whose_decay_budget_is_far_below_what_generalizers_needed():
    pruner = Pruner("phase", safety=2.0, memorized_for=10)
    group = Pruner.group(0, {"train.weight_decay": 1.0})
    assert group == Pruner.group(0, {"train.weight_decay": 0.01, "train.lr": 1e-2})  # the clock's fields only
    assert group != Pruner.group(0, {"train.weight_decay": 1.0, "train.init_scale": 0.5})
    assert group != Pruner.group(1, {"train.weight_decay": 1.0})

    def cfg(wd):
        return TrainConfig(steps=10_000, lr=1e-3, weight_decay=wd, warmup_steps=0)

    # A run at wd 1 generalized at step 2000 in the cell D = 0.5: it needed 1e-3 x 1 x 2000 = 2.
    assert not pruner.run_done(group, 0.5, cfg(1.0), None)  # a run that did not generalize teaches nothing
    assert pruner.run_done(group, 0.5, cfg(1.0), 2000)
    low = pruner.rule("D=0.5", group, 0.5, cfg(0.05))  # budget 0.5 < 2 / 2
    assert low is not None and low.memorized_for == 10 and "pruned" in low.reason
    assert pruner.rule("D=0.5", group, 0.5, cfg(0.1)) is None  # budget 1.0: not under half of 2
    # Less data needs at least as much decay: the D = 0.5 run bounds the D = 0.3 cell...
    assert pruner.rule("D=0.3", group, 0.3, cfg(0.05)) is not None
    # ...but not a cell with more data, nor another group.
    assert pruner.rule("D=0.7", group, 0.7, cfg(0.05)) is None
    assert pruner.rule("D=0.5", Pruner.group(0, {"train.init_scale": 0.5}), 0.5, cfg(0.05)) is None
    # A faster generalizer lowers the bar: nothing is pruned that one run got there with.
    pruner.run_done(group, 0.7, cfg(0.05), 8000)  # needed 0.4
    assert pruner.rule("D=0.5", group, 0.5, cfg(0.05)) is None


def test_clock_step_is_the_first_step_the_decay_clock_reaches():
    cfg = TrainConfig(steps=10_000, lr=1e-3, weight_decay=2.0, warmup_steps=10)
    step = clock_step(cfg, 5.0)
    assert decay_clock(cfg, step) >= 5.0 > decay_clock(cfg, step - 1)
    assert clock_step(TrainConfig(steps=100, lr=1e-3, weight_decay=1.0), 5.0) is None  # not within the budget
    assert clock_step(TrainConfig(weight_decay=0.0), 5.0) is None


def test_stall_rule_stops_a_run_whose_accuracies_stopped_rising_at_equilibrium():
    pruner = Pruner("phase")
    cfg = TrainConfig(steps=10_000, lr=1e-3, weight_decay=10.0, warmup_steps=0)  # 5 e-folds at step 500
    rule = pruner.rule("c", Pruner.group(0, {}), 0.5, cfg)
    assert rule.stalled_after == 500 and rule.memorized_for is None
    flat = RunState(0.99, 0.95)
    for step in range(100, 1100, 100):
        flat.see(record(step, 0.30 + 0.001 * step / 100, 0.02))
        assert stopped(rule, flat, step) == (step >= 500)
    rising = RunState(0.99, 0.95)
    for step in range(100, 1100, 100):
        rising.see(record(step, 0.30 + 0.05 * step / 100, 0.02))  # still learning: not stuck
        assert not stopped(rule, rising, step)
    assert stop_reason(rule, flat, 1000).endswith(": confusion")
    memorized = RunState(0.99, 0.95)
    for step in range(100, 1100, 100):
        memorized.see(record(step, 1.0, 0.80))  # memorized, validation flat: stuck in memorization
    assert stop_reason(rule, memorized, 1000).endswith(": memorization")
    creeping = RunState(0.99, 0.95)
    for step in range(100, 1100, 100):
        creeping.see(record(step, 1.0, 0.50 + 0.03 * step / 100))  # validation still rising: goes on
        assert not stopped(rule, creeping, step)
    generalized = RunState(0.99, 0.95)
    for step in range(100, 1100, 100):
        generalized.see(record(step, 1.0, 0.96))  # generalized: never pruned
        assert not stopped(rule, generalized, step)
    # Too little decay in the whole budget to reach equilibrium: no confusion rule at all.
    assert pruner.rule("c", Pruner.group(0, {}), 0.5, TrainConfig(steps=10_000, lr=1e-3, weight_decay=0.1)) is None
