"""grid.refine (orchestrator/sweep/refine.py): the bisection loop against planted thresholds, the
stop rules, and the cells placed inside a bracket (orchestrator/study/grid.py), checked by
brute force over every shape between."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from orchestrator.analysis.emergence import emergence_threshold
from orchestrator.study import Study
from orchestrator.study.grid import build_cells, cell_between_d, cell_between_n
from orchestrator.study.schema import Refine
from orchestrator.sweep.refine import Split, plan, refine
from trainers.models import shape_counts
from trainers.spec import TrainSpec
from trainers.tasks import make_task


@dataclass(frozen=True)
class Point:
    """A planted cell: a model size N at a data size D."""

    n: int
    d: int

    @property
    def key(self) -> str:
        return f"N={self.n}_D={self.d}"


def planted(stars: dict[int, float], seeds: int = 1, noise: float = 0.0):
    """A metric that steps from chance 0.5 to 1.0 at N = stars[D], and `measure` fitting it."""

    def metric(p: Point, seed: int) -> float:
        jitter = noise * np.random.default_rng([p.n, seed]).standard_normal()  # the same on every call
        return (1.0 if p.n >= stars[p.d] else 0.5) + jitter

    def measure(cells: list[Point]):
        out = []
        for d in sorted({c.d for c in cells}):
            on = [c for c in cells if c.d == d]
            x = np.array([c.n for c in on for _ in range(seeds)], float)
            y = np.array([metric(c, s) for c in on for s in range(seeds)])
            out.append((float(d), emergence_threshold(x, y, chance=0.5, n_boot=40)))
        return out

    return measure


def realize(split: Split, cells: list[Point]) -> Point | None:
    """The nearest whole N to the midpoint; None between two neighbouring counts."""
    n = round(split.midpoint)
    return None if not split.low < n < split.high else Point(n, int(split.line))


def run_planted(stars, config: Refine, grid=(100, 1000, 10_000, 100_000), **kw):
    trained: list[str] = []

    def run(cells, added):  # a driver trains only what it has not trained yet
        trained.extend(c.key for c in cells if c.key not in trained)

    cells, result = refine(
        [Point(n, d) for d in sorted(stars) for n in grid],
        config,
        run=run,
        measure=planted(stars, **kw),
        realize=realize,
        key=lambda c: c.key,
    )
    return cells, result, trained


def test_bisection_brackets_the_planted_threshold_to_the_width():
    """A clean step at N* = 10^3.5 on a grid one decade apart: each round halves the bracket in
    log N, so 1 decade -> 0.5 -> 0.25 -> 0.125 -> 0.0625 takes exactly 4 added cells."""
    star = 10**3.5
    cells, result, trained = run_planted({100: star}, Refine(axis="n", max_cells=6, width_decades=0.1))
    assert [a.round for a in result.added] == [1, 2, 3, 4]
    line = result.lines[0]
    assert line.stop.startswith("resolved") and line.censored
    assert line.low <= star <= line.high and math.log10(line.high / line.low) < 0.1
    bracket = (1000, 10_000)
    for a in result.added:  # each new scale splits the bracket the one before left
        n = int(a.key.split("_")[0].removeprefix("N="))
        assert (a.low, a.high) == bracket and a.low < n < a.high
        assert abs(math.log10(n) - (math.log10(a.low) + math.log10(a.high)) / 2) < 1e-3
        bracket = (n, a.high) if n < star else (a.low, n)
    assert sorted(trained) == sorted(c.key for c in cells)  # every cell trained once


def test_the_cell_budget_stops_it_and_lines_share_it_widest_first():
    """Two lines, budget 3: round 1 splits both (equal widths), round 2 only the wider interval."""
    config = Refine(axis="n", max_cells=3, width_decades=0.1)
    _, result, _ = run_planted({100: 10**3.5, 200: 10**1.6}, config, grid=(10, 100, 1000, 10_000))
    assert len(result.added) == 3 and [a.round for a in result.added] == [1, 1, 2]
    assert all("budget" in line.stop for line in result.lines)


def test_rerun_rederives_the_same_cells_from_the_same_results():
    """Resume: the added cells follow from the results alone, so a second run adds the same."""
    config = Refine(axis="n", max_cells=5, width_decades=0.05)
    first = run_planted({100: 4321.0, 200: 77.0}, config, grid=(10, 100, 1000, 10_000))
    second = run_planted({100: 4321.0, 200: 77.0}, config, grid=(10, 100, 1000, 10_000))
    assert [c.key for c in first[0]] == [c.key for c in second[0]] and first[1] == second[1]


def test_no_threshold_and_noise_limited_lines_add_nothing():
    """A metric that never leaves chance has no threshold to refine; and where the scales around
    the threshold are already closer than the width, more scales cannot narrow an interval that
    the spread between seeds makes wide."""
    config = Refine(axis="n", max_cells=6, width_decades=0.1)
    _, result, _ = run_planted({100: 1e9}, config)
    assert result.added == () and result.lines[0].stop.startswith("no threshold: never leaves chance")

    near = (100, 1000, 2818, 3162, 3548, 10_000, 100_000)  # 0.05 decades apart around N* = 10^3.52
    _, noisy, _ = run_planted({100: 10**3.52}, config, grid=near, seeds=3, noise=0.25)
    assert math.log10(3548 / 3162) < 0.1 < noisy.lines[0].interval_decades
    assert noisy.added == () and "more seeds" in noisy.lines[0].stop


def test_a_bracket_with_nothing_between_is_blocked():
    """N 100 and 101 have no whole count between: the line stops, saying so."""
    config = Refine(axis="n", max_cells=6, width_decades=0.001)
    _, result, _ = run_planted({100: 100.5}, config, grid=(10, 100, 101, 1000))
    assert result.added == () and result.lines[0].stop.startswith("no cell lies between 100 and 101")


def test_plan_orders_and_reasons():
    fit = emergence_threshold(np.array([10, 100, 1000.0]), np.array([0.5, 0.5, 1.0]), chance=0.5, n_boot=20)
    splits, done = plan([(1.0, fit)], 0.1)
    assert splits == [Split(1.0, 100.0, 1000.0, pytest.approx(1.0))] and done == {}
    splits, done = plan([(1.0, fit)], 0.1, blocked={(1.0, 100.0, 1000.0)})
    assert splits == [] and "no cell lies between" in done[1.0]
    splits, done = plan([(1.0, fit)], 2.0)
    assert splits == [] and done[1.0].startswith("resolved")


# -- cells inside a bracket, on a real study -----------------------------------------------------------
PARITY = {
    "name": "p",
    "task": {"name": "sparse_parity", "n_bits": 8, "k": 3, "n_train": 400, "n_val": 400},
    "model": {"family": "mlp", "d_embed": 2, "n_hidden": 1},
    "train": {"steps": 20, "eval_every": 10},
}


def parity_study(n: list, d: list, refine_axis: str = "n", model: dict | None = None) -> Study:
    return Study.model_validate(
        {
            **PARITY,
            "model": model or PARITY["model"],
            "grid": {"n": n, "d": d, "refine": {"axis": refine_axis}},
        }
    )


def counts(study: Study, shape: dict) -> int:
    spec = TrainSpec.model_validate(study.trial_data(shape, 400, {}, 0))
    data = make_task(spec.task, 0)
    return shape_counts(spec.model, data.vocab_size, data.n_out, data.seq_len).total


def test_a_shape_between_is_the_width_nearest_the_geometric_midpoint():
    study = parity_study([{"d_hidden": 1}, {"d_hidden": 16}, {"d_hidden": 64}], [400])
    low, high, top = build_cells(study)
    cell = cell_between_n(study, low, high, [low, high, top])
    goal = math.sqrt(low.n_params.total * high.n_params.total)
    brute = min(range(2, 16), key=lambda w: abs(math.log(counts(study, {"d_hidden": w}) / goal)))
    assert (
        cell.shape == {"d_hidden": brute} and low.n_params.total < cell.n_params.total < high.n_params.total
    )
    assert cell.n_index == 3 and cell.d_index == low.d_index and cell.d_value == 400
    # Two widths one apart leave no shape between.
    one = parity_study([{"d_hidden": 1}, {"d_hidden": 2}, {"d_hidden": 4}], [400])
    a, b, c = build_cells(one)
    assert cell_between_n(one, a, b, [a, b, c]) is None


def test_shapes_that_differ_in_two_fields_follow_the_geometric_path():
    study = parity_study(
        [{"d_hidden": 4, "n_hidden": 1}, {"d_hidden": 64, "n_hidden": 3}, {"d_hidden": 128, "n_hidden": 3}],
        [400],
    )
    low, high, top = build_cells(study)
    cell = cell_between_n(study, low, high, [low, high, top])
    assert set(cell.shape) == {"d_hidden", "n_hidden"}
    assert 4 < cell.shape["d_hidden"] < 64 and 1 <= cell.shape["n_hidden"] <= 3
    assert low.n_params.total < cell.n_params.total < high.n_params.total


def test_between_two_targets_is_a_target_resolved_like_the_grid():
    study = parity_study([200, 2000, 20000], [400])
    low, high, top = build_cells(study)
    cell = cell_between_n(study, low, high, [low, high, top])
    assert cell.target_n == round(math.sqrt(low.n_params.total * high.n_params.total))
    assert low.n_params.total < cell.n_params.total < high.n_params.total


def test_a_data_size_between_is_the_geometric_midpoint_as_a_count():
    study = parity_study([{"d_hidden": 8}], [100, 400, 1600], refine_axis="d")
    low, high, top = build_cells(study)
    cell = cell_between_d(study, low, high, [low, high, top])
    assert cell.d_value == 200 and cell.n_train == 200 and cell.shape == low.shape and cell.d_index == 3
    near = parity_study([{"d_hidden": 8}], [100, 101, 400], refine_axis="d")
    a, b, c = build_cells(near)
    assert cell_between_d(near, a, b, [a, b, c]) is None
