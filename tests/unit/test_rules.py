"""Hyperparameters as rules of scale (orchestrator/study/rules.py): refused at load with the path
of what is wrong, and resolved per run into the numbers the trainer sees, worked by hand here."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestrator.study import StudyError, load_study
from orchestrator.study.grid import build_cells, spec_for

# The byte-level LM of test_study_length.py: 1 layer, d_model 16, 16 positions, 8 windows a step;
# 46,080 training FLOPs per token, 737,280 per example (worked out there).
FLOPS_PER_EXAMPLE = 737_280
LM = {
    "name": "lm",
    "task": {"name": "charlm", "level": "byte", "seq_len": 16, "n_val_tokens": 2000},
    "model": {"family": "transformer", "n_layer": 1, "n_head": 4, "layer_norm": True},
    "train": {"eval_every": 10, "warmup_steps": 2, "batch_size": 8},
    "grid": {"n": [{"d_model": 16}], "d": [1601, 3201]},
    "objectives": [{"metric": "min_val_loss", "direction": "minimize"}],
}


def power(value: float, **exponents: tuple[float, float]) -> dict:
    """A rule: power(3e-3, n=(1e4, -0.5)) is 3e-3 x (n / 1e4)^-0.5."""
    return {
        "rule": "power",
        "value": value,
        "at": {k: a for k, (a, _) in exponents.items()},
        "exponent": {k: e for k, (_, e) in exponents.items()},
    }


def load(tmp_path: Path, **sections):
    data = {**LM, **sections, "train": {**LM["train"], **sections.get("train", {})}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_study(path)


def refused(tmp_path: Path, **sections) -> list[str]:
    with pytest.raises(StudyError) as info:
        load(tmp_path, **sections)
    return info.value.problems


def test_a_rule_as_written_in_yaml(tmp_path):
    # YAML 1.1 reads 3e-3 (no dot) as a string; the rule's numbers are read as numbers all the same.
    text = yaml.safe_dump({k: v for k, v in LM.items() if k != "train"})
    text += "train: {batch_size: 8, lr: {rule: power, value: 3e-3, at: {n: 1e6}, exponent: {n: -0.5}}}\n"
    (tmp_path / "study.yaml").write_text(text)
    rule = load_study(tmp_path / "study.yaml").train["lr"]
    assert (rule.value, rule.at, rule.exponent, rule.variables) == (3e-3, {"n": 1e6}, {"n": -0.5}, ("n",))
    assert rule({"n": 4e6}) == pytest.approx(1.5e-3)


@pytest.mark.parametrize(
    ("lr", "expected"),
    [
        (
            {"rule": "power", "value": 1e-3, "at": {"m": 1e6}, "exponent": {"m": 1}},
            "train.lr.at.m: unknown variable 'm'; a rule depends on n, d, flops, batch_tokens",
        ),
        (
            {"rule": "power", "value": 1e-3, "exponent": {"n": -0.5}},
            "train.lr.at.n: required, but missing: the value of n at which the rule equals `value` "
            "(e.g. at: {n: 1.0e+6})",
        ),
        (
            {"rule": "power", "value": 1e-3, "at": {"n": 1e6, "d": 1e6}, "exponent": {"n": -0.5}},
            "train.lr.at.d: d has an anchor but no exponent: give exponent.d, or remove at.d",
        ),
        (
            {"rule": "power", "value": 0, "at": {"n": 1e6}, "exponent": {"n": -0.5}},
            "train.lr.value: Input should be greater than 0, got 0",
        ),
        (
            {"rule": "power", "value": 1e-3, "at": {"n": -1}, "exponent": {"n": -0.5}},
            "train.lr.at.n: an anchor must be > 0 (the rule divides by it), got -1.0",
        ),
        (
            {"rule": "power", "value": float("nan"), "at": {"n": 1e6}, "exponent": {"n": -0.5}},
            "train.lr.value: must be a finite number (NaN and infinity are not allowed), got nan",
        ),
        (
            {"rule": "power", "value": 1e-3, "at": {"n": 1e6}, "exponent": {"n": float("inf")}},
            "train.lr.exponent.n: must be a finite number (NaN and infinity are not allowed), got inf",
        ),
        ({"rule": "linear", "value": 1e-3}, "train.lr.rule: Input should be 'power', got 'linear'"),
    ],
)
def test_a_malformed_rule_is_refused_naming_its_field(tmp_path, lr, expected):
    assert refused(tmp_path, train={"lr": lr}) == [expected]


def test_rules_the_grid_cannot_resolve_are_refused_at_load(tmp_path):
    lines = refused(
        tmp_path,
        train={
            "batch_size": power(8, flops=(1e9, 0.5), batch_tokens=(128, 1)),
            "schedule": power(1, n=(1e4, 1)),
            "tokens": power(1e4, n=(1e4, 1)),
            "steps": power(100, flops=(1e9, 0.5)),
        },
        search={
            "space": {
                "train.weight_decay.value": {"type": "float", "low": 0.1, "high": 1.0},
                "train.steps.at.flops": {"type": "float", "low": 1, "high": 2},
            }
        },
    )
    assert (
        "train.batch_size.exponent.flops: the run's FLOPs follow from its batch, so batch_size cannot "
        "depend on them (in an IsoFLOP grid, grid.flops, it may: there flops is the cell's budget); "
        "batch_size may depend on n, d"
    ) in lines
    assert (
        "train.batch_size.exponent.batch_tokens: the run's tokens per step follow from batch_size, so "
        "batch_size cannot depend on them; batch_size may depend on n, d"
    ) in lines
    assert any(
        line.startswith("train.steps.exponent.flops: the run's FLOPs follow from its length")
        for line in lines
    )
    assert "train.schedule: a rule gives a number; schedule is not a numeric training field" in lines
    assert any(line.startswith("train.tokens: the study's length in tokens is a number") for line in lines)
    assert any(
        line.startswith("search.space.train.weight_decay.value: train.weight_decay is not a rule of scale")
        for line in lines
    )
    assert (
        "search.space.train.steps.at.flops: a search may set a rule's value or one of its exponents "
        "(value, exponent.flops)"
    ) in lines


def test_scope_study_refuses_what_judges_a_run_by_its_own_cell(tmp_path):
    lines = refused(tmp_path, search={"scope": "study"}, prune={"mode": "phase"})
    assert lines == [
        "prune.mode: 'phase' stops runs against their own cell's trials; with search.scope: "
        "study a trial is judged over every cell at once: set prune.mode: off"
    ]


def test_rules_resolve_per_cell(tmp_path):
    """n, d and the run's FLOPs: two cells of one model at D = 1,601 and 3,201 tokens (100 and 200
    windows of 16, one pass: 13 and 25 steps of 8 windows)."""
    s = load(
        tmp_path,
        train={
            "lr": power(1e-3, d=(1600, 0.5)),
            "weight_decay": power(0.1, flops=(1e8, 0.5), n=(1e4, -1)),
            "warmup_steps": power(4, batch_tokens=(256, -1), d=(1600, 1)),
        },
    )
    small, large = build_cells(s)
    assert (small.n_train, large.n_train, small.steps, large.steps) == (1601, 3201, 13, 25)
    n = small.n("total")
    for cell, d, steps in ((small, 1601, 13), (large, 3201, 25)):
        train = spec_for(s, cell, {}, 0).train
        assert train.lr == pytest.approx(1e-3 * (d / 1600) ** 0.5)
        flops = steps * 8 * FLOPS_PER_EXAMPLE  # the run's training FLOPs
        assert train.weight_decay == pytest.approx(0.1 * (flops / 1e8) ** 0.5 / (n / 1e4))
        # 8 windows of 16 tokens: 128 tokens a step; 4 x 2 x d / 1600, rounded to whole steps
        assert train.warmup_steps == round(8 * d / 1600) and isinstance(train.warmup_steps, int)
    assert [spec_for(s, c, {}, 0).train.warmup_steps for c in (small, large)] == [8, 16]
    # A searched constant (search.scope: study searches it once for every cell) scales the same way.
    lr = spec_for(s, large, {"train.lr.value": 4e-3}, 0).train.lr
    assert lr == pytest.approx(4e-3 * (3201 / 1600) ** 0.5)
    assert spec_for(s, large, {"train.lr.exponent.d": 0}, 0).train.lr == pytest.approx(1e-3)


def test_isoflop_rules_of_the_budget_set_the_batch_before_the_steps(tmp_path):
    """DeepSeek's form, batch and rate as power laws of compute, and OLMo's warmup of N tokens:
    at C = 1e9 a batch of 8 windows (128 tokens), at 4e9 of 16 (256 tokens)."""
    s = load(
        tmp_path,
        train={
            "batch_size": power(8, flops=(1e9, 0.5)),
            "lr": power(1e-2, flops=(1e9, -0.25)),
            "warmup_steps": power(1e4 / 128, n=(1e4, 1), batch_tokens=(128, -1)),
        },
        grid={"n": [{"d_model": 16}], "flops": [1.0e9, 4.0e9]},
    )
    c1, c4 = build_cells(s)
    n = c1.n("total")
    assert (c1.examples_per_step, c4.examples_per_step) == (8, 16)
    # ceil(C / (batch x 737,280)): 1e9 / 5,898,240 = 169.5 -> 170; 4e9 / 11,796,480 = 339.1 -> 340
    assert (c1.steps, c4.steps) == (170, 340)
    t1, t4 = spec_for(s, c1, {}, 0).train, spec_for(s, c4, {}, 0).train
    assert (t1.batch_size, t4.batch_size, t1.steps, t4.steps) == (8, 16, 170, 340)
    assert (t1.lr, t4.lr) == (pytest.approx(1e-2), pytest.approx(1e-2 / 2**0.5))
    assert (t1.warmup_steps, t4.warmup_steps) == (round(n / 128), round(n / 256))  # N tokens of warmup
    assert isinstance(t4.warmup_steps, int)


def test_batch_tokens_round_to_whole_sequences(tmp_path):
    s = load(
        tmp_path,
        train={"batch_size": None, "batch_tokens": power(100, flops=(1e9, 1))},
        grid={"n": [{"d_model": 16}], "flops": [1.0e9, 4.0e9]},
    )
    c1, c4 = build_cells(s)
    # 100 tokens -> 6 windows of 16 (96); 400 -> 25 windows (400)
    assert (spec_for(s, c1, {}, 0).train.batch_tokens, spec_for(s, c4, {}, 0).train.batch_tokens) == (96, 400)
    assert (c1.examples_per_step, c4.examples_per_step) == (6, 25)


def test_a_resolved_value_the_trainer_refuses_names_the_cell(tmp_path):
    s = load(tmp_path, train={"warmup_steps": power(13, d=(1601, 1))})
    with pytest.raises(StudyError) as info:
        build_cells(s)
    assert info.value.problems == [
        "grid.n[0] x grid.d[1]: train.warmup_steps: warmup_steps (26) must be <= steps (25)"
    ]
