"""Per-cell pruning rules (orchestrator/sweep/pruning.py): the decay clock, each rule's verdicts, and the
worker's side applying a rule to its own evaluations."""

from __future__ import annotations

import math

import pytest

from orchestrator.sweep.pruning import STALLED, Pruner, RunState, StopRule, clock_step, decay_clock, stop_reason
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


def cfg(wd, steps=10_000):
    return TrainConfig(steps=steps, lr=1e-3, weight_decay=wd, warmup_steps=0)


def fitting(step, val_acc=0.1, train_loss=1e-5):
    return {"step": step, "train_acc": 1.0, "val_acc": val_acc, "train_loss": train_loss}


def bounded(rule) -> bool:
    return rule is not None and rule.memorized_for is not None


def train_for(pruner, run, group, d, train, steps, **kwargs):
    changed = False
    for step in steps:
        changed = pruner.see(run, group, d, train, fitting(step, **kwargs)) or changed
    return changed


def test_phase_groups_compare_runs_that_differ_only_in_their_decay_clock():
    group = Pruner.group(0, {"train.weight_decay": 1.0})
    assert group == Pruner.group(0, {"train.weight_decay": 0.01, "train.lr": 1e-2})  # the clock's fields only
    assert group != Pruner.group(0, {"train.weight_decay": 1.0, "train.init_scale": 0.5})
    assert group != Pruner.group(1, {"train.weight_decay": 1.0})


def test_phase_pruner_prunes_runs_whose_whole_decay_budget_is_far_below_what_an_easier_run_went_without():
    pruner = Pruner("phase", safety=2.0, memorized_for=10)
    group = Pruner.group(0, {})
    assert pruner.rule("D=0.5", group, 0.5, cfg(0.05)) is None  # nothing known yet
    # A run at wd 1 in the cell D = 0.5, fitting its training set, not generalized by step 2000:
    # it went a decay clock of 1e-3 x 1 x 2000 = 2 without generalizing.
    assert train_for(pruner, "E", group, 0.5, cfg(1.0), range(100, 2100, 100))
    assert pruner.unresolved_clock(group, "E") == pytest.approx(2.0)
    low = pruner.rule("D=0.5", group, 0.5, cfg(0.05))  # whole budget 0.5 < 2 / 2
    assert low is not None and low.memorized_for == 10 and "E, with as much data and decay" in low.reason
    assert pruner.rule("D=0.5", group, 0.5, cfg(0.1)) is None  # budget 1.0: not under half of 2
    # Less data needs at least as much decay: E bounds the D = 0.3 cell...
    assert pruner.rule("D=0.3", group, 0.3, cfg(0.05)) is not None
    # ...but not a cell with more data, nor another group, nor its own run.
    assert pruner.rule("D=0.7", group, 0.7, cfg(0.05)) is None
    assert pruner.rule("D=0.5", Pruner.group(0, {"train.init_scale": 0.5}), 0.5, cfg(0.05)) is None
    own = cfg(1.0, steps=900)  # a budget of 0.9, under 2 / 2, but the evidence is its own
    assert not bounded(pruner.rule("D=0.5", group, 0.5, own, run="E"))
    assert bounded(pruner.rule("D=0.5", group, 0.5, own, run="E2"))  # another seed of it: comparable
    # A run that decays faster than E is not bounded by it: more decay may do what E's did not.
    faster = TrainConfig(steps=90, lr=1e-2, weight_decay=1.0, warmup_steps=0)  # budget 0.9, rate 10x E's
    assert not bounded(pruner.rule("D=0.5", group, 0.5, faster))
    assert bounded(pruner.rule("D=0.5", group, 0.5, cfg(0.09)))  # the same budget at a slower rate
    # An evaluation seen again (the history replayed when the run ends) changes nothing.
    assert not pruner.see("E", group, 0.5, cfg(1.0), fitting(2000))


def test_phase_evidence_needs_a_run_that_fits_its_training_set():
    # Decay so strong it balances the gradient at a high training loss fails for another reason:
    # such a run says nothing about how much decay a fitting run needs.
    pruner = Pruner("phase")
    group = Pruner.group(0, {})
    assert not train_for(pruner, "strong", group, 0.5, cfg(5.0), range(100, 2100, 100), train_loss=0.3)
    assert pruner.unresolved_clock(group, "strong") is None
    assert pruner.rule("D=0.5", group, 0.5, cfg(0.01)) is None
    # One that fitted and stopped fitting takes its evidence back.
    assert train_for(pruner, "slipping", group, 0.5, cfg(1.0), range(100, 1100, 100))
    assert pruner.unresolved_clock(group, "slipping") == pytest.approx(1.0)
    assert train_for(pruner, "slipping", group, 0.5, cfg(1.0), range(1100, 3100, 100), train_loss=0.3)
    assert pruner.unresolved_clock(group, "slipping") is None


def test_phase_evidence_stops_at_generalization_and_a_harder_generalizer_vetoes():
    pruner = Pruner("phase")
    group = Pruner.group(0, {})
    train_for(pruner, "E", group, 0.5, cfg(1.0), range(100, 3100, 100))
    assert pruner.see("E", group, 0.5, cfg(1.0), fitting(3100, val_acc=0.97))  # generalized at 3.1
    assert pruner.unresolved_clock(group, "E") == pytest.approx(3.0)  # the most it went without
    assert not pruner.see("E", group, 0.5, cfg(1.0), fitting(3200))  # nothing more to learn from it
    assert pruner.rule("D=0.5", group, 0.5, cfg(0.1)) is not None  # budget 1 < 3 / 2
    # A run with less data and slower decay generalized within this run's budget: the orderings
    # the rule leans on did not hold here, so it prunes nothing they would decide.
    pruner.see("H", group, 0.3, cfg(0.05), fitting(9000, val_acc=0.96))  # generalized at 0.45
    assert pruner.rule("D=0.5", group, 0.5, cfg(0.1)) is None
    assert pruner.rule("D=0.5", group, 0.5, cfg(0.04)) is not None  # H decays faster than this one


def test_a_run_stalled_at_equilibrium_teaches_its_whole_budget():
    pruner = Pruner("phase")
    group = Pruner.group(0, {})
    stuck = cfg(40.0)  # 20 e-folds at step 500
    history = {"step": list(range(100, 1100, 100)), "train_acc": [1.0] * 10, "val_acc": [0.02] * 10,
               "train_loss": [1e-6] * 10}
    assert pruner.run_done("S", group, 0.5, stuck, history, reason=f"{STALLED}, ... (stopped at step 1000)")
    assert pruner.unresolved_clock(group, "S") == pytest.approx(decay_clock(stuck, 10_000))  # 400, not 40
    assert pruner.rule("D=0.5", group, 0.5, cfg(1.0)).memorized_for == 10  # budget 10 < 400 / 2
    # A run that ended at its budget teaches what it went through, and no more.
    other = Pruner("phase")
    other.run_done("S", group, 0.5, stuck, history, reason="step budget reached")
    assert other.unresolved_clock(group, "S") == pytest.approx(decay_clock(stuck, 1000))


def test_a_resumed_pruner_knows_what_finished_runs_taught():
    group = Pruner.group(0, {})
    live = Pruner("phase")
    train_for(live, "E", group, 0.5, cfg(1.0), range(100, 2100, 100))
    live.see("G", group, 0.3, cfg(0.05), fitting(9000, val_acc=0.96))
    again = Pruner("phase")
    again.restore("E", group, 0.5, cfg(1.0), None, live.unresolved_clock(group, "E"))
    again.restore("G", group, 0.3, cfg(0.05), 9000, None)
    for d, wd in ((0.5, 0.05), (0.5, 0.01), (0.3, 0.06), (0.5, 0.5)):
        assert again.rule("c", group, d, cfg(wd)) == live.rule("c", group, d, cfg(wd))


def test_clock_step_is_the_first_step_the_decay_clock_reaches():
    cfg = TrainConfig(steps=10_000, lr=1e-3, weight_decay=2.0, warmup_steps=10)
    step = clock_step(cfg, 5.0)
    assert decay_clock(cfg, step) >= 5.0 > decay_clock(cfg, step - 1)
    assert clock_step(TrainConfig(steps=100, lr=1e-3, weight_decay=1.0), 5.0) is None  # not within the budget
    assert clock_step(TrainConfig(weight_decay=0.0), 5.0) is None


def test_stall_rule_stops_a_run_whose_accuracies_stopped_rising_at_equilibrium():
    pruner = Pruner("phase")
    cfg = TrainConfig(steps=10_000, lr=1e-3, weight_decay=40.0, warmup_steps=0)  # 20 e-folds at step 500
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
