"""The study's grid: one cell per (N, D), or per (N, C) in an IsoFLOP study, with the model shape
resolved, the actual N and D, and each run's length in steps (orchestrator/study/length.py); and
the cells a refined grid adds between two of them (`cell_between_n`, `cell_between_d`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from pydantic import ValidationError

from orchestrator.study.errors import StudyError, format_errors
from orchestrator.study.length import PROBE_STEPS, examples_per_step, isoflop_d, steps_for
from orchestrator.study.own_trainer import user_spec
from orchestrator.study.rules import BATCH_KEYS, LENGTH_RULE_KEYS, anchored, at_anchor, is_rule, resolve
from orchestrator.study.schema import Study
from orchestrator.study.tasks import task_kinds
from trainers.flops import flops_for_task, flops_per_example
from trainers.models import ParamCounts, resolve_shape, shape_counts
from trainers.protocol import UserSpec, grokscale_train
from trainers.spec import TrainConfig, TrainSpec
from trainers.tasks import TaskData, make_task


@dataclass(frozen=True)
class Cell:
    n_index: int
    d_index: int  # the index in grid.d, or in grid.flops for an IsoFLOP cell
    shape: dict[str, Any]  # model fields this cell sets (a resolved width for a target N)
    d_value: float  # the grid value (a fraction or a count); an IsoFLOP cell's D in tokens
    n_params: ParamCounts
    n_train: int  # D as a count of examples (tokens for the LM)
    target_n: int | None
    # What its length is counted in, from the cell's data and model (searched values aside):
    n_examples: int = 0  # unique training examples (windows of seq_len tokens for the LM)
    examples_per_step: int = 0  # the study's batch_size, or all examples (full batch)
    tokens_per_example: int = 0  # seq_len
    flops_per_example: float = 0.0  # training FLOPs, forward and backward (trainers/flops.py)
    steps: int = 0  # train.steps of its runs, before any searched value changes the batch
    flops_budget: float | None = None  # an IsoFLOP cell's C
    # (vocab_size, n_out, seq_len, last_only): what a searched model shape's FLOPs need.
    io: tuple[int, int, int, bool] = (1, 1, 1, False)

    @property
    def key(self) -> str:
        """Stable across edits of the grid's order: an Optuna study and MLflow tag name."""
        shape = ",".join(f"{k}={v}" for k, v in sorted(self.shape.items()))
        if self.flops_budget is not None:
            return f"N[{shape}]_C={self.flops_budget:g}"
        return f"N[{shape}]_D={self.d_value:g}"

    @property
    def train_flops(self) -> float:
        """Training FLOPs of one run of this cell (its full length; success-stop ends some sooner)."""
        return float(self.steps) * self.examples_per_step * self.flops_per_example

    @property
    def epochs(self) -> float:
        """Passes over the unique training examples one run makes."""
        return self.steps * self.examples_per_step / self.n_examples if self.n_examples else 0.0

    def n(self, convention: str) -> int:
        return getattr(self.n_params, convention)


def _resolve_run(study: Study, cell: Cell, data: dict[str, Any]) -> dict[str, Any]:
    """data with the run's rules of scale resolved (orchestrator/study/rules.py) and train.steps set
    from the study's length, counted with the run's own batch size and model (a searched value may
    change either): a probe spec reads them. In the order each rule's variables become known: the
    batch (n, d, an IsoFLOP budget), then steps (and the run's tokens per step), then the rest (and
    the run's training FLOPs)."""
    length = study.length
    train = data["train"]
    if length.kind == "steps" and not any(map(is_rule, train.values())):
        return data
    scale: dict[str, float] = {"n": cell.n(study.grid.n_convention), "d": cell.n_train}
    if cell.flops_budget is not None:
        scale["flops"] = cell.flops_budget
    train = resolve(train, scale, BATCH_KEYS, multiple={"batch_tokens": cell.tokens_per_example})
    probe = TrainSpec.model_validate({**data, "train": {**at_anchor(train), "steps": PROBE_STEPS}})
    per_step = examples_per_step(probe.train.batch_examples(cell.tokens_per_example), cell.n_examples)
    scale["batch_tokens"] = per_step * cell.tokens_per_example
    flops = flops_per_example(probe.model, *cell.io[:3], last_only=cell.io[3])
    train = resolve(train, scale, LENGTH_RULE_KEYS)
    steps = steps_for(
        length,
        n_examples=cell.n_examples,
        per_step=per_step,
        tokens_per_example=flops.tokens,
        flops_per_example=flops.total,
        flops_budget=cell.flops_budget,
    )
    if steps is not None:
        train = {**train, "steps": steps}
    if cell.flops_budget is None:
        run_steps = train.get("steps", TrainConfig.model_fields["steps"].default)
        scale["flops"] = float(run_steps) * per_step * flops.total
    return {**data, "train": resolve(train, scale)}


def spec_for(study: Study, cell: Cell, params: dict[str, Any], seed: int) -> TrainSpec | UserSpec:
    """One run's spec, its length resolved into steps; a cell given GPUs (resources) trains on
    CUDA, and its spec says so. A study of the user's own trainer gets a UserSpec."""
    if study.trainer is not None:
        entry = cell.target_n if cell.target_n is not None else cell.shape
        on_gpu = study.resources.for_n(cell.n(study.grid.n_convention)).gpus > 0
        return user_spec(study, entry, cell.d_value, params, seed, "cuda" if on_gpu else "cpu")
    data = _resolve_run(study, cell, study.trial_data(cell.shape, cell.d_value, params, seed))
    if study.resources.for_n(cell.n(study.grid.n_convention)).gpus > 0:
        data["device"] = "cuda"
    return TrainSpec.model_validate(data)


def _shape(
    study: Study, entry: Any, d_value: float | None
) -> tuple[TrainSpec, TaskData, dict, int | None, ParamCounts]:
    """The base spec and data of one grid entry at one D, its shape, target N and counts."""
    base = TrainSpec.model_validate(
        anchored(
            study.trial_data(
                entry if isinstance(entry, dict) else {}, d_value, {"train.steps": PROBE_STEPS}, 0
            )
        )
    )
    data = make_task(base.task, 0)
    args = (data.vocab_size, data.n_out, data.seq_len)
    if isinstance(entry, dict):
        return base, data, dict(entry), None, shape_counts(base.model, *args)
    # The fields the resolver set: d_model (and d_mlp when the base gives one), a gpt's n_layer,
    # an MLP's d_hidden (trainers/models.py: resolve_shape).
    r = resolve_shape(base.model, entry, *args, convention=study.grid.n_convention)
    return base, data, dict(r.shape), entry, r.n_params


def _cell(
    study: Study, i: int, j: int, entry: Any, d_value: float | None, budget: float | None
) -> Cell | None:
    """One cell; an IsoFLOP cell (budget C) first resolves its model, then D = C / (FLOPs per
    token x epochs), then builds its data at that D. None: an IsoFLOP cell outside the grid's
    window on tokens per parameter (before its data is built: it may not fit the corpus)."""
    base, data, shape, target, counts = _shape(study, entry, d_value)
    model = base.model.model_copy(update=shape)  # the resolved width of a target N
    if budget is not None:
        per_token = flops_for_task(model, data).per_token
        window = study.grid.tokens_per_param
        if window is not None and not window.holds(
            budget / per_token / getattr(counts, study.grid.n_convention)
        ):
            return None
        d_value = isoflop_d(budget, per_token, study.length.epochs)
        base, data, *_ = _shape(study, shape, d_value)
    io = (data.vocab_size, data.n_out, data.seq_len, data.target == "last")
    flops = flops_per_example(model, *io[:3], last_only=io[3])
    n_examples = data.n_examples  # rows of x_train, or a corpus's windows
    cell = Cell(
        i,
        j,
        shape,
        d_value,
        counts,
        data.n_train,
        target,
        n_examples=n_examples,
        tokens_per_example=data.seq_len,
        flops_per_example=flops.total,
        flops_budget=budget,
        io=io,
    )
    spec = spec_for(study, cell, {}, study.grid.seeds[0])  # the resolved length must fit (warmup <= steps)
    # The batch of the cell's runs, as resolved (a rule of scale may set it per cell).
    per_step = examples_per_step(spec.train.batch_examples(data.seq_len), n_examples)
    return replace(cell, steps=spec.train.steps, examples_per_step=per_step)


def own_trainer_cells(study: Study) -> list[Cell]:
    """The cells of a study of the user's own trainer: each N entry as given (the function builds
    its model and reports the N it got; a target count stands in until then) x each grid.d."""
    steps = grokscale_train(study.train).steps
    cells = []
    for i, entry in enumerate(study.grid.n):
        target = None if isinstance(entry, dict) else int(entry)
        shape = dict(entry) if target is None else {"n": target}
        for j, d in enumerate(study.grid.d or ()):
            n_train = int(d) if d >= 1 and d == int(d) else 0  # D as a count, when it is one
            cells.append(Cell(i, j, shape, d, ParamCounts(0, target or 0), n_train, target, steps=steps))
    return cells


def build_cells(study: Study) -> list[Cell]:
    """Every cell of the grid, N-major; a target N that no width reaches, or a cell whose data or
    resolved length the trainer refuses, is a StudyError."""
    if study.trainer is not None:
        return _distinct(own_trainer_cells(study))
    cells, problems = [], []
    axis = [(f"grid.d[{j}]", d, None) for j, d in enumerate(study.grid.d or ())]
    axis += [(f"grid.flops[{j}]", None, c) for j, c in enumerate(study.grid.flops or ())]
    for i, entry in enumerate(study.grid.n):
        for j, (label, d, budget) in enumerate(axis):
            try:
                cell = _cell(study, i, j, entry, d, budget)
            except ValidationError as err:  # (a ValueError too) the resolved spec, e.g. warmup > steps
                problems += [f"grid.n[{i}] x {label}: {line}" for line in format_errors(err, model=TrainSpec)]
            except ValueError as err:  # the resolver, or a task that cannot hold this D
                problems.append(f"grid.n[{i}] x {label}: {err}")
            else:
                cells += [cell] if cell is not None else []
    if problems:
        raise StudyError(list(dict.fromkeys(problems)))
    if study.grid.tokens_per_param is not None:
        _check_window(study, cells)
    return _distinct(cells)


MIN_SIZES_PER_BUDGET = 3  # a parabola in log N (analysis/isoflop.py) needs 3 sizes


def _check_window(study: Study, cells: list[Cell]) -> None:
    """Every budget keeps enough sizes for its parabola; say which sizes the window left."""
    problems = []
    for j, budget in enumerate(study.grid.flops or ()):
        kept = [c.n(study.grid.n_convention) for c in cells if c.d_index == j]
        if len(kept) < MIN_SIZES_PER_BUDGET:
            sizes = ", ".join(f"{n:,}" for n in sorted(kept)) or "none"
            problems.append(
                f"grid.tokens_per_param: at grid.flops[{j}] = {budget:g} the window keeps {len(kept)} "
                f"size(s) ({sizes}); an IsoFLOP parabola needs {MIN_SIZES_PER_BUDGET}: widen the window "
                f"or add sizes whose tokens per parameter fall in it"
            )
    if problems:
        raise StudyError(problems)


def _distinct(cells: list[Cell]) -> list[Cell]:
    keys = [c.key for c in cells]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise StudyError(
            [f"grid.n: two entries resolve to the same shape ({', '.join(dupes)}); make them distinct"]
        )
    return cells


# -- cells added inside a bracket (orchestrator/sweep/refine.py) -----------------------------------
PATH_POINTS = 257  # points on the geometric path between two shapes; integer fields repeat, so fewer shapes


def cell_between_n(study: Study, low: Cell, high: Cell, cells: list[Cell]) -> Cell | None:
    """A cell at low's D whose N lies strictly between low's and high's, nearest their geometric
    midpoint in log N; None when no model shape lies between (two widths one apart).

    Between two target counts, the midpoint is a target count, resolved like any grid entry (a
    width at the study's depth). Otherwise, and when that resolves to a shape already in the
    study, the shapes on the geometric path from low's shape to high's: every field that differs
    (d_model, d_mlp, n_layer, ...) interpolated as lo^(1-t) hi^t and rounded, t in (0, 1), which
    is the one field that varies when only one does."""
    conv = study.grid.n_convention
    n_lo, n_hi = low.n(conv), high.n(conv)
    goal = math.log(n_lo * n_hi) / 2
    entries: list[Any] = []
    if low.target_n is not None and high.target_n is not None:
        entries.append(round(math.exp(goal)))
    entries += _shapes_between(study, low, high, goal)
    taken = {c.key for c in cells}
    for entry in entries:
        try:
            cell = _cell(study, 0, low.d_index, entry, low.d_value, None)
        except ValueError:  # a width no head count divides, a target no width reaches (pydantic's too)
            continue
        if cell.key not in taken and n_lo < cell.n(conv) < n_hi:
            same = [c.n_index for c in cells if c.shape == cell.shape]
            return replace(cell, n_index=same[0] if same else 1 + max(c.n_index for c in cells))
    return None


def cell_between_d(study: Study, low: Cell, high: Cell, cells: list[Cell]) -> Cell | None:
    """A cell at low's N whose D is the geometric midpoint of low's and high's grid values (a
    whole count when D counts examples); None when no D lies strictly between."""
    kind_counts = study.d_field in task_kinds()[study.task["name"]].counts
    goal = math.sqrt(low.d_value * high.d_value)
    value = float(round(goal)) if kind_counts else float(f"{goal:.6g}")  # `:g`: the cell key's own precision
    if not low.d_value < value < high.d_value:
        return None
    entry = low.target_n if low.target_n is not None else low.shape
    same = [c.d_index for c in cells if c.d_value == value]
    try:
        cell = _cell(
            study, low.n_index, same[0] if same else 1 + max(c.d_index for c in cells), entry, value, None
        )
    except ValueError:
        return None
    if cell.key in {c.key for c in cells} or not low.n_train < cell.n_train < high.n_train:
        return None
    return cell


def _shapes_between(study: Study, low: Cell, high: Cell, goal: float) -> list[dict[str, Any]]:
    """Shapes on the geometric path between low's and high's, strictly between them in N, nearest
    exp(goal) first; [] when they differ in a field that is not a positive whole number."""
    lo_model, hi_model = (_model(study, c) for c in (low, high))
    fields = sorted(set(low.shape) | set(high.shape))
    ends = {f: (getattr(lo_model, f), getattr(hi_model, f)) for f in fields}
    varying = {f: v for f, v in ends.items() if v[0] != v[1]}
    if not varying or not all(
        isinstance(x, int) and not isinstance(x, bool) and x > 0 for v in varying.values() for x in v
    ):
        return []
    conv, n_lo, n_hi = (
        study.grid.n_convention,
        low.n(study.grid.n_convention),
        high.n(study.grid.n_convention),
    )
    found: dict[tuple, float] = {}
    for t in [i / (PATH_POINTS - 1) for i in range(1, PATH_POINTS - 1)]:
        shape = {f: (round(a ** (1 - t) * b**t) if f in varying else a) for f, (a, b) in ends.items()}
        key = tuple(sorted(shape.items()))
        if key in found:
            continue
        try:
            n = getattr(shape_counts(lo_model.model_copy(update=shape), *low.io[:3]), conv)
        except (ValueError, RuntimeError):  # a shape the model cannot be built with
            continue
        if n_lo < n < n_hi:
            found[key] = abs(math.log(n) - goal)
    return [dict(k) for k in sorted(found, key=lambda k: (found[k], k))]


def _model(study: Study, cell: Cell):
    """The cell's whole model section, validated (defaults filled in)."""
    data = study.trial_data(cell.shape, cell.d_value, {"train.steps": PROBE_STEPS}, study.grid.seeds[0])
    return TrainSpec.model_validate(anchored(data)).model
