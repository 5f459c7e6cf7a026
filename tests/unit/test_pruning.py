"""Per-cell stopping rules (orchestrator/sweep/stopping/): the decay clock, each rule's verdicts,
and the worker's side applying a run's rules to its own evaluations."""

from __future__ import annotations

import math

import pytest

from orchestrator.store.names import StopKind
from orchestrator.sweep.stopping import (
    ObjectiveRule,
    PhaseRule,
    RunInfo,
    RunState,
    StopRule,
    clock_group,
    clock_step,
    decay_clock,
    first_stop,
    stop_reason,
)
from trainers.schedules import lr_at
from trainers.spec import TrainConfig


def stopped(rule, state, step) -> bool:
    return stop_reason(rule, state, step) is not None


def run(key, group, d, train, cell="c", seed=0) -> RunInfo:
    return RunInfo(key, cell, group, d, train, seed)


def test_decay_clock_is_lr_times_weight_decay_summed_over_the_warmup_ramp():
    cfg = TrainConfig(steps=1000, lr=2e-3, weight_decay=0.5, warmup_steps=0)
    assert decay_clock(cfg, 1000) == pytest.approx(2e-3 * 0.5 * 1000)
    warm = TrainConfig(steps=1000, lr=2e-3, weight_decay=0.5, warmup_steps=10)
    # Warmup steps run at (s + 1) / 10 of the rate: 5.5 full steps' worth over the first 10.
    assert decay_clock(warm, 10) == pytest.approx(2e-3 * 0.5 * 5.5)
    assert decay_clock(warm, 1000) == pytest.approx(2e-3 * 0.5 * (5.5 + 990))
    assert decay_clock(TrainConfig(weight_decay=0.0), 10_000) == 0.0


@pytest.mark.parametrize(
    "schedule",
    [
        {"schedule": "constant"},
        {"schedule": "cosine", "min_lr_fraction": 0.1},
        {"schedule": "cosine", "min_lr_fraction": 0.0},
        {"schedule": "wsd", "min_lr_fraction": 0.05, "decay_fraction": 0.3},
    ],
)
def test_decay_clock_is_the_plain_sum_of_lr_times_weight_decay_for_every_schedule(schedule):
    train = TrainConfig(steps=3000, lr=3e-3, weight_decay=0.7, warmup_steps=50, **schedule)
    plain = [0.0]
    for s in range(train.steps):
        plain.append(plain[-1] + lr_at(train, s) * train.weight_decay)
    for steps in (0, 1, 25, 50, 51, 1200, 2099, 2100, 2999, 3000):
        assert decay_clock(train, steps) == pytest.approx(plain[steps], rel=1e-12, abs=1e-15), steps
    # The bisection lands on the first step at which the plain sum reaches the target.
    target = plain[-1] * 0.8
    assert clock_step(train, target) == next(s for s, c in enumerate(plain) if c >= target)


def test_cosine_decays_less_than_constant_by_the_schedules_own_sum():
    constant = TrainConfig(steps=1000, lr=1e-3, weight_decay=1.0, warmup_steps=0)
    cosine = TrainConfig(
        steps=1000, lr=1e-3, weight_decay=1.0, warmup_steps=0, schedule="cosine", min_lr_fraction=0.0
    )
    # Half a cosine from 1 to 0 averages 1/2: about half the decay of the constant run.
    assert decay_clock(cosine, 1000) == pytest.approx(0.5 * decay_clock(constant, 1000), rel=2e-3)


def record(step, train_acc, val_acc):
    return {"step": step, "train_acc": train_acc, "val_acc": val_acc}


def test_objective_rule_stops_only_runs_short_of_the_event_at_the_bound():
    rule = StopRule(StopKind.OBJECTIVE, reason="r", min_step=600, event="val")
    state = RunState(train_threshold=0.99, val_threshold=0.95)
    for step in (100, 300, 500):
        state.see(record(step, 1.0, 0.5))
        assert not stopped(rule, state, step)
    state.see(record(600, 1.0, 0.5))
    assert stopped(rule, state, 600)
    assert first_stop((rule,), state, 600) == (StopKind.OBJECTIVE, "r")
    done = RunState(0.99, 0.95)
    done.see(record(500, 1.0, 0.96))
    done.see(record(600, 1.0, 0.90))  # generalized once: its objective is 500, better than 600
    assert not stopped(rule, done, 600)
    assert first_stop((), state, 10_000) is None


def test_phase_rule_waits_a_decade_after_memorization_and_spares_generalizers():
    rule = StopRule(StopKind.DECAY_CLOCK, reason="r", memorized_for=10)
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
    pruner = ObjectiveRule(metric="generalization_step", n_seeds=1)
    cfg = TrainConfig(steps=5000)
    assert pruner.rules(run("r", (), 0.5, cfg)) == ()  # nothing known yet
    assert pruner.trial_done("c", 900.0)
    assert not pruner.trial_done("c", 1200.0)  # not a new best
    assert not pruner.trial_done("c", math.nan)
    (rule,) = pruner.rules(run("r", (), 0.5, cfg))
    assert rule.kind == StopKind.OBJECTIVE and rule.min_step == 900 and rule.event == "val"
    assert pruner.rules(run("r", (), 0.5, cfg, cell="other")) == ()  # per cell
    # Mean over 3 seeds: one seed past 3 x best cannot bring the mean below the best.
    three = ObjectiveRule(metric="memorization_step", n_seeds=3)
    three.trial_done("c", 100.0)
    (rule,) = three.rules(run("r", (), 0.5, cfg))
    assert rule.min_step == 300 and rule.event == "train"


def test_objective_pruner_learns_a_generalization_step_live_once():
    pruner = ObjectiveRule(metric="generalization_step", n_seeds=1)
    r = run("r", (), 0.5, TrainConfig(steps=5000, val_threshold=0.95))
    assert not pruner.see(r, record(300, 1.0, 0.5))
    assert pruner.see(r, record(400, 1.0, 0.96))  # its trial's value, known now: the cell's best
    assert pruner.best == {"c": 400.0}
    assert not pruner.see(r, record(500, 1.0, 0.99))  # taught once
    resumed = ObjectiveRule(metric="generalization_step", n_seeds=1)
    resumed.restore(r, 400.0, {})
    assert resumed.rules(r) == pruner.rules(r)


def cfg(wd, steps=10_000):
    return TrainConfig(steps=steps, lr=1e-3, weight_decay=wd, warmup_steps=0)


def fitting(step, val_acc=0.1, train_loss=1e-5):
    return {"step": step, "train_acc": 1.0, "val_acc": val_acc, "train_loss": train_loss}


def bounded(rules) -> bool:
    return any(r.kind == StopKind.DECAY_CLOCK for r in rules)


def decay_rule(rules) -> StopRule | None:
    return next((r for r in rules if r.kind == StopKind.DECAY_CLOCK), None)


def train_for(pruner, key, group, d, train, steps, **kwargs):
    changed = False
    for step in steps:
        changed = pruner.see(run(key, group, d, train), fitting(step, **kwargs)) or changed
    return changed


def test_phase_groups_compare_runs_that_differ_only_in_their_decay_clock():
    group = clock_group(0, {"train.weight_decay": 1.0})
    assert group == clock_group(0, {"train.weight_decay": 0.01, "train.lr": 1e-2})  # the clock's fields only
    assert group != clock_group(0, {"train.weight_decay": 1.0, "train.init_scale": 0.5})
    assert group != clock_group(1, {"train.weight_decay": 1.0})


def test_phase_pruner_prunes_runs_whose_whole_decay_budget_is_far_below_what_an_easier_run_went_without():
    pruner = PhaseRule(safety=2.0, memorized_for=10)
    group = clock_group(0, {})
    assert pruner.rules(run("x", group, 0.5, cfg(0.05))) == ()  # nothing known yet
    # A run at wd 1 in the cell D = 0.5, fitting its training set, not generalized by step 2000:
    # it went a decay clock of 1e-3 x 1 x 2000 = 2 without generalizing.
    assert train_for(pruner, "E", group, 0.5, cfg(1.0), range(100, 2100, 100))
    assert pruner.unresolved_clock(run("E", group, 0.5, cfg(1.0))) == pytest.approx(2.0)
    low = decay_rule(pruner.rules(run("x", group, 0.5, cfg(0.05))))  # whole budget 0.5 < 2 / 2
    assert low is not None and low.memorized_for == 10 and "E, with as much data and decay" in low.reason
    assert pruner.rules(run("x", group, 0.5, cfg(0.1))) == ()  # budget 1.0: not under half of 2
    # Less data needs at least as much decay: E bounds the D = 0.3 cell...
    assert bounded(pruner.rules(run("x", group, 0.3, cfg(0.05))))
    # ...but not a cell with more data, nor another group, nor its own run.
    assert pruner.rules(run("x", group, 0.7, cfg(0.05))) == ()
    assert pruner.rules(run("x", clock_group(0, {"train.init_scale": 0.5}), 0.5, cfg(0.05))) == ()
    own = cfg(1.0, steps=900)  # a budget of 0.9, under 2 / 2, but the evidence is its own
    assert not bounded(pruner.rules(run("E", group, 0.5, own)))
    assert bounded(pruner.rules(run("E2", group, 0.5, own)))  # another seed of it: comparable
    # A run that decays faster than E is not bounded by it: more decay may do what E's did not.
    faster = TrainConfig(steps=90, lr=1e-2, weight_decay=1.0, warmup_steps=0)  # budget 0.9, rate 10x E's
    assert not bounded(pruner.rules(run("x", group, 0.5, faster)))
    assert bounded(pruner.rules(run("x", group, 0.5, cfg(0.09))))  # the same budget at a slower rate
    # An evaluation seen again (the history replayed when the run ends) changes nothing.
    assert not pruner.see(run("E", group, 0.5, cfg(1.0)), fitting(2000))


def test_phase_evidence_needs_a_run_that_fits_its_training_set():
    # Decay so strong it balances the gradient at a high training loss fails for another reason:
    # such a run says nothing about how much decay a fitting run needs.
    pruner = PhaseRule()
    group = clock_group(0, {})
    assert not train_for(pruner, "strong", group, 0.5, cfg(5.0), range(100, 2100, 100), train_loss=0.3)
    assert pruner.unresolved_clock(run("strong", group, 0.5, cfg(5.0))) is None
    assert pruner.rules(run("x", group, 0.5, cfg(0.01))) == ()
    # One that fitted and stopped fitting takes its evidence back.
    assert train_for(pruner, "slipping", group, 0.5, cfg(1.0), range(100, 1100, 100))
    assert pruner.unresolved_clock(run("slipping", group, 0.5, cfg(1.0))) == pytest.approx(1.0)
    assert train_for(pruner, "slipping", group, 0.5, cfg(1.0), range(1100, 3100, 100), train_loss=0.3)
    assert pruner.unresolved_clock(run("slipping", group, 0.5, cfg(1.0))) is None


def test_phase_evidence_stops_at_generalization_and_a_harder_generalizer_vetoes():
    pruner = PhaseRule()
    group = clock_group(0, {})
    e = run("E", group, 0.5, cfg(1.0))
    train_for(pruner, "E", group, 0.5, cfg(1.0), range(100, 3100, 100))
    assert pruner.see(e, fitting(3100, val_acc=0.97))  # generalized at 3.1
    assert pruner.unresolved_clock(e) == pytest.approx(3.0)  # the most it went without
    assert not pruner.see(e, fitting(3200))  # nothing more to learn from it
    assert bounded(pruner.rules(run("x", group, 0.5, cfg(0.1))))  # budget 1 < 3 / 2
    # A run with less data and slower decay generalized within this run's budget: the orderings
    # the rule leans on did not hold here, so it prunes nothing they would decide.
    pruner.see(run("H", group, 0.3, cfg(0.05)), fitting(9000, val_acc=0.96))  # generalized at 0.45
    assert pruner.rules(run("x", group, 0.5, cfg(0.1))) == ()
    assert bounded(pruner.rules(run("x", group, 0.5, cfg(0.04))))  # H decays faster than this one


def test_a_run_stalled_at_equilibrium_teaches_its_whole_budget():
    pruner = PhaseRule()
    group = clock_group(0, {})
    stuck = cfg(40.0)  # 20 e-folds at step 500
    history = {
        "step": list(range(100, 1100, 100)),
        "train_acc": [1.0] * 10,
        "val_acc": [0.02] * 10,
        "train_loss": [1e-6] * 10,
    }
    s = run("S", group, 0.5, stuck)
    assert pruner.run_done(s, history, StopKind.STALLED)  # known by its kind, not by its reason's text
    assert pruner.unresolved_clock(s) == pytest.approx(decay_clock(stuck, 10_000))  # 400, not 40
    assert decay_rule(pruner.rules(run("x", group, 0.5, cfg(1.0)))).memorized_for == 10  # budget 10 < 400 / 2
    # A run that ended at its budget, or was stopped by another rule, teaches what it went
    # through, and no more.
    for kind in (None, StopKind.DECAY_CLOCK):
        other = PhaseRule()
        other.run_done(s, history, kind)
        assert other.unresolved_clock(s) == pytest.approx(decay_clock(stuck, 1000))


def test_a_resumed_pruner_knows_what_finished_runs_taught():
    group = clock_group(0, {})
    live = PhaseRule()
    e, g = run("E", group, 0.5, cfg(1.0), seed=1), run("G", group, 0.3, cfg(0.05))
    train_for(live, "E", group, 0.5, cfg(1.0), range(100, 2100, 100))
    live.see(g, fitting(9000, val_acc=0.96))
    again = PhaseRule()
    again.restore(e, None, live.lesson(e))  # what the driver keeps in Optuna, and reads back
    assert live.lesson(e) == {"decay_unresolved.seed=1": pytest.approx(2.0)}
    again.restore(g, None, {"generalization_step.seed=0": 9000})
    for d, wd in ((0.5, 0.05), (0.5, 0.01), (0.3, 0.06), (0.5, 0.5)):
        x = run("x", group, d, cfg(wd))
        assert again.rules(x) == live.rules(x)


def test_clock_step_is_the_first_step_the_decay_clock_reaches():
    cfg = TrainConfig(steps=10_000, lr=1e-3, weight_decay=2.0, warmup_steps=10)
    step = clock_step(cfg, 5.0)
    assert decay_clock(cfg, step) >= 5.0 > decay_clock(cfg, step - 1)
    assert clock_step(TrainConfig(steps=100, lr=1e-3, weight_decay=1.0), 5.0) is None  # not within the budget
    assert clock_step(TrainConfig(weight_decay=0.0), 5.0) is None


def test_stall_rule_stops_a_run_whose_accuracies_stopped_rising_at_equilibrium():
    pruner = PhaseRule()
    cfg = TrainConfig(steps=10_000, lr=1e-3, weight_decay=40.0, warmup_steps=0)  # 20 e-folds at step 500
    (rule,) = pruner.rules(run("x", clock_group(0, {}), 0.5, cfg))
    assert rule.kind == StopKind.STALLED and rule.stalled_after == 500
    flat = RunState(0.99, 0.95)
    for step in range(100, 1100, 100):
        flat.see(record(step, 0.30 + 0.001 * step / 100, 0.02))
        assert stopped(rule, flat, step) == (step >= 500)
    rising = RunState(0.99, 0.95)
    for step in range(100, 1100, 100):
        rising.see(record(step, 0.30 + 0.05 * step / 100, 0.02))  # still learning: not stuck
        assert not stopped(rule, rising, step)
    kind, why = first_stop((rule,), flat, 1000)
    assert kind == StopKind.STALLED and why.endswith(": confusion")
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
    # Too little decay in the whole budget to reach equilibrium: no stall rule at all.
    assert (
        pruner.rules(run("x", clock_group(0, {}), 0.5, TrainConfig(steps=10_000, lr=1e-3, weight_decay=0.1)))
        == ()
    )


def test_the_decay_clock_rule_fires_before_the_stall_rule_and_says_which():
    both = (
        StopRule(StopKind.DECAY_CLOCK, reason="decay", memorized_for=2),
        StopRule(StopKind.STALLED, reason="stall", stalled_after=100),
    )
    state = RunState(0.99, 0.95)
    for step in range(100, 1100, 100):
        state.see(record(step, 1.0, 0.02))
    assert first_stop(both, state, 1000) == (StopKind.DECAY_CLOCK, "decay")
    assert first_stop(both[1:], state, 1000) == (StopKind.STALLED, "stall: memorization")
