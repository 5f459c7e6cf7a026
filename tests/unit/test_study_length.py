"""A study's training length: steps, tokens, epochs or an IsoFLOP budget, resolved per cell into
the trainer's steps (orchestrator/study/length.py, grid.py). Every number is worked by hand."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestrator.cli import main
from orchestrator.study import StudyError, load_study
from orchestrator.study.grid import build_cells, spec_for
from trainers.core import Accounting
from trainers.tasks import make_task

# A byte-level LM small enough to resolve in milliseconds: 1 layer, d_model 16 (d_mlp 64),
# 16 positions, 256 byte values. Training FLOPs per token (trainers/flops.py), forward x 3:
#   matmuls 2 (3d^2 + d^2 + 2 d d_mlp) = 2 (768 + 256 + 2048) = 6,144
#   attention 2 (2 T^2 d) / T = 4 T d = 1,024;  unembedding 2 d 256 = 8,192
#   (6,144 + 1,024 + 8,192) x 3 = 46,080 per token, 737,280 per example of 16 tokens.
FLOPS_PER_TOKEN, FLOPS_PER_EXAMPLE = 46_080, 737_280
LM = {
    "name": "lm",
    "task": {"name": "charlm", "level": "byte", "seq_len": 16, "n_val_tokens": 2000},
    "model": {"family": "transformer", "n_layer": 1, "n_head": 4, "layer_norm": True},
    "train": {"eval_every": 10, "warmup_steps": 2, "batch_size": 8},
    "grid": {"n": [{"d_model": 16}], "d": [1601]},
    "objectives": [{"metric": "min_val_loss", "direction": "minimize"}],
}
MODULAR = {
    "name": "mod",
    "task": {"name": "modular", "p": 23},
    "model": {"n_layer": 1, "n_head": 4},
    "train": {"warmup_steps": 2},
    "grid": {"n": [{"d_model": 16}], "d": [200], "d_field": "n_train"},
}


def study(tmp_path: Path, base: dict, **sections):
    """base with `train` keys added and any other section replaced."""
    data = {**base, **sections, "train": {**base["train"], **sections.get("train", {})}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_study(path)


def refused(tmp_path: Path, base: dict, **sections) -> list[str]:
    with pytest.raises(StudyError) as info:
        build_cells(study(tmp_path, base, **sections))
    return info.value.problems


def test_tokens_and_epochs_resolve_into_steps_per_cell(tmp_path):
    # 1,601 tokens make (1,601 - 1) // 16 = 100 windows; 8 per step, 16 tokens each.
    s = study(tmp_path, LM, train={"tokens": 10_000}, grid={"n": [{"d_model": 16}], "d": [1601, 3201]})
    small, large = build_cells(s)
    assert (small.n_examples, small.examples_per_step, small.tokens_per_example) == (100, 8, 16)
    assert small.steps == 79 and large.steps == 79  # ceil(10,000 / (8 x 16)) = ceil(78.1): same tokens
    assert spec_for(s, small, {}, 0).train.steps == 79
    s = study(tmp_path, LM, train={"epochs": 2.5}, grid={"n": [{"d_model": 16}], "d": [1601, 3201]})
    small, large = build_cells(s)
    assert (small.steps, large.steps) == (32, 63)  # ceil(2.5 x 100 / 8) = 32, ceil(2.5 x 200 / 8) = 63
    assert "tokens" not in spec_for(s, small, {}, 0).train.model_dump()  # the trainer never sees the word


def test_a_searched_batch_size_changes_the_steps(tmp_path):
    s = study(tmp_path, LM, train={"epochs": 2.5})
    cell = build_cells(s)[0]
    assert spec_for(s, cell, {"train.batch_size": 6}, 0).train.steps == 42  # ceil(250 / 6)
    assert spec_for(s, cell, {"train.batch_size": 500}, 0).train.steps == 3  # full batch: ceil(2.5)


def test_epochs_count_a_non_lm_task_and_full_batch(tmp_path):
    s = study(tmp_path, MODULAR, train={"epochs": 3, "batch_size": 64})
    assert build_cells(s)[0].steps == 10  # ceil(3 x 200 / 64)
    s = study(tmp_path, MODULAR, train={"epochs": 3})
    assert build_cells(s)[0].steps == 3  # full batch: one pass a step


def test_a_language_model_trains_one_pass_by_default_and_other_tasks_their_steps(tmp_path):
    s = study(tmp_path, LM)
    cell = build_cells(s)[0]
    assert s.length.kind == "epochs" and s.length.value == 1
    assert cell.steps == 13 and cell.epochs == pytest.approx(104 / 100)  # ceil(100 / 8), at least one pass
    assert build_cells(study(tmp_path, MODULAR))[0].steps == 10_000  # TrainConfig's default
    assert build_cells(study(tmp_path, MODULAR, train={"steps": 50}))[0].steps == 50


def test_isoflop_cells_take_d_and_steps_from_the_budget(tmp_path):
    s = study(tmp_path, LM, grid={"n": [{"d_model": 16}], "flops": [1.0e9, 4.0e9]})
    c1, c4 = build_cells(s)
    assert c1.flops_per_example == FLOPS_PER_EXAMPLE
    # T = 1e9 / 46,080 = 21,701.4 tokens, seen once: D = 21,701; steps = ceil(1e9 / (8 x 737,280)) = 170.
    assert (c1.d_value, c1.n_train, c1.steps, c1.flops_budget) == (21_701, 21_701, 170, 1.0e9)
    assert (c4.d_value, c4.steps) == (86_806, 679)  # 4e9 / 46,080 = 86,805.6; ceil(678.17)
    assert c1.key == "N[d_model=16]_C=1e+09" and c1.d_index == 0 and c4.d_index == 1
    for cell in (c1, c4):
        spec = spec_for(s, cell, {}, 0)
        assert spec.task.n_train_tokens == cell.d_value
        achieved = Accounting.of(spec, make_task(spec.task, 0)).at(spec.train.steps)["flops"]
        assert cell.flops_budget <= achieved < cell.flops_budget + 8 * FLOPS_PER_EXAMPLE  # within one step
        assert achieved == cell.train_flops


def test_isoflop_epochs_repeat_the_data(tmp_path):
    s = study(tmp_path, LM, train={"epochs": 2}, grid={"n": [{"d_model": 16}], "flops": [1.0e9]})
    cell = build_cells(s)[0]
    assert (cell.d_value, cell.steps) == (10_851, 170)  # D = 21,701.4 / 2; the same tokens trained
    assert cell.epochs == pytest.approx(170 * 8 / ((10_851 - 1) // 16))


def test_length_errors(tmp_path):
    assert refused(tmp_path, LM, train={"steps": 50, "epochs": 1}) == [
        "train: give one training length (steps, tokens or epochs), got steps and epochs"
    ]
    flops = {"n": [{"d_model": 16}], "flops": [1.0e9]}
    lines = refused(tmp_path, LM, train={"steps": 50, "tokens": 100}, grid=flops)
    assert [line.split(":")[0] for line in lines] == ["train.steps", "train.tokens"]
    assert "IsoFLOP grid (grid.flops) sets each run's length" in lines[0]
    lines = refused(tmp_path, MODULAR, grid={"n": [{"d_model": 16}], "flops": [1.0e9]})
    assert (
        lines[0].startswith("grid.flops: an IsoFLOP grid needs a language-modelling task")
        and "charlm" in lines[0]
    )
    assert refused(tmp_path, LM, grid={"n": [{"d_model": 16}], "d": [1601], "flops": [1.0e9]}) == [
        "grid.flops: give grid.d (data sizes) or grid.flops (compute budgets, an IsoFLOP study), not both"
    ]
    assert refused(tmp_path, LM, grid={"n": [{"d_model": 16}]})[0].startswith("grid.d: required, but missing")
    assert refused(tmp_path, LM, train={"tokens": 10.5})[0].startswith(
        "train.tokens: Input should be a valid integer"
    )
    assert refused(tmp_path, LM, train={"epochs": 0})[0].startswith(
        "train.epochs: Input should be greater than 0"
    )


def test_a_searched_task_field_cannot_move_a_counted_length(tmp_path):
    search = {"space": {"task.seq_len": {"type": "int", "low": 8, "high": 32}}}
    assert refused(tmp_path, LM, search=search)[0].startswith(
        "search.space.task.seq_len: the run's length comes from train.epochs"
    )
    assert build_cells(study(tmp_path, LM, train={"steps": 20}, search=search))[0].steps == 20


def test_warmup_must_fit_every_cells_resolved_length(tmp_path):
    lines = refused(
        tmp_path, LM, train={"warmup_steps": 200}, grid={"n": [{"d_model": 16}], "flops": [1.0e9, 4.0e9]}
    )
    assert lines == [
        "grid.n[0] x grid.flops[0]: train.warmup_steps: warmup_steps (200) must be <= steps (170)"
    ]


def test_isoflop_window_on_tokens_per_parameter(tmp_path):
    """grid.tokens_per_param keeps the cells whose tokens per parameter (C / FLOPs per token / N)
    lie in the window: each budget gets its own range of sizes, as Hoffmann et al. (2022) chose them."""
    sizes = [{"d_model": 16}, {"d_model": 32}, {"d_model": 48}, {"d_model": 64}]
    grid = {"n": sizes, "flops": [1.0e9, 4.0e9]}
    every = build_cells(study(tmp_path, LM, grid=grid))
    ratio = {c.key: c.flops_budget / (c.flops_per_example / 16) / c.n("total") for c in every}
    small = next(c for c in every if c.key == "N[d_model=16]_C=1e+09")
    assert ratio[small.key] == pytest.approx(1.0e9 / FLOPS_PER_TOKEN / small.n_params.total)  # 21,701 tokens
    lo, hi = sorted(ratio.values())[1], sorted(ratio.values())[-2]  # drops the two extremes
    kept = build_cells(study(tmp_path, LM, grid={**grid, "tokens_per_param": {"min": lo, "max": hi}}))
    assert {c.key for c in kept} == {k for k, v in ratio.items() if lo <= v <= hi}
    assert len(kept) == len(every) - 2
    assert "N[d_model=16]_C=4e+09" not in {c.key for c in kept}  # the most tokens per parameter
    assert "N[d_model=64]_C=1e+09" not in {c.key for c in kept}  # the fewest
    assert all(
        c.d_index == e.d_index and c.n_index == e.n_index for c in kept for e in every if e.key == c.key
    )


def test_isoflop_window_errors(tmp_path):
    sizes = [{"d_model": 16}, {"d_model": 32}, {"d_model": 48}]
    lines = refused(tmp_path, LM, grid={"n": sizes, "flops": [1.0e9], "tokens_per_param": {"max": 1.0}})
    # d_model 16 trains 1.86 tokens per parameter at 1e9 FLOPs; 32 and 48 fewer.
    assert lines == [
        "grid.tokens_per_param: at grid.flops[0] = 1e+09 the window keeps 2 size(s) (29,536, 53,520); "
        "an IsoFLOP parabola needs 3: widen the window or add sizes whose tokens per parameter fall in it"
    ]
    assert refused(tmp_path, LM, grid={"n": sizes, "d": [1601], "tokens_per_param": {"min": 1}}) == [
        "grid.tokens_per_param: a window on tokens per parameter picks the cells of an IsoFLOP grid "
        "(grid.flops); with grid.d every cell is given"
    ]
    assert refused(
        tmp_path, LM, grid={"n": sizes, "flops": [1.0e9], "tokens_per_param": {"min": 5, "max": 2}}
    ) == ["grid.tokens_per_param: min (5.0) must be < max (2.0)"]
    assert refused(tmp_path, LM, grid={"n": sizes, "flops": [1.0e9], "tokens_per_param": {}}) == [
        "grid.tokens_per_param: give min, max or both (tokens per parameter)"
    ]


def test_validate_says_what_the_window_kept(tmp_path, monkeypatch, capsys):
    sizes = [{"d_model": 16}, {"d_model": 32}, {"d_model": 48}, {"d_model": 64}]
    study(tmp_path, LM, grid={"n": sizes, "flops": [1.0e9, 4.0e9], "tokens_per_param": {"max": 2.0}})
    monkeypatch.chdir(tmp_path)
    assert main(["validate", "study.yaml"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "grid.tokens_per_param [0, 2] keeps 7 of the 8 N x C cells" in out, out
    assert "N[d_model=16]_C=4e+09" not in out  # 7.4 tokens per parameter
