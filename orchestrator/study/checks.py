"""What the schema cannot see alone: the study's parts must fit each other and the trainer.

`check_study(study)` returns every problem as a line `path: message`; [] when the study can run.
It runs after the schema validated, so each check may trust the types.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from orchestrator.study.errors import Problem, problems_of
from orchestrator.study.length import PROBE_STEPS, length_problems
from orchestrator.study.own_trainer import own_trainer_problems
from orchestrator.study.plugins import plugin_problems
from orchestrator.study.rules import STUDY_LENGTH_KEYS, Rule, RuleError, anchored, rule_problems
from orchestrator.study.schema import Study
from orchestrator.study.tasks import task_kinds
from trainers.overrides import OverrideError
from trainers.spec import TrainSpec

STEP_METRICS = ("generalization_step", "memorization_step")  # what prune.mode 'objective' can bound
SINGLE_OBJECTIVE_SAMPLERS = ("cmaes",)


def _task(study: Study) -> list[str]:
    """The task is one the trainer knows, and the grid's D is one of its data sizes; nothing
    else can be checked until it is."""
    kinds = task_kinds()
    name = study.task.get("name")
    if name is None:
        return [f"task.name: required, but missing; name the task: {', '.join(kinds)}"]
    if not isinstance(name, str):
        return [
            f"task.name: a task's name (a string), got {name!r}; allowed: {', '.join(kinds)}, or your own "
            f"task as 'package.module:Class'"
        ]
    if name not in kinds:
        return [f"task.name: unknown task {name!r}; allowed: {', '.join(kinds)}"]
    kind = kinds[name]
    if not kind.d_fields:
        return [
            f"task.name: task {name!r} declares no data size (its class has no d_fields), so grid.d "
            f"has nothing to set"
        ]
    if study.d_field not in kind.d_fields:
        return [
            f"grid.d_field: {study.d_field!r} is not a data size of task {name!r}; "
            f"allowed: {', '.join(kind.d_fields)}"
        ]
    return []


def _grid_d(study: Study) -> list[str]:
    """Each D is a whole count, or a fraction in (0, 1), as the task's D field is; and the task
    section sets no other data size, which the grid's would silently replace."""
    kind = task_kinds()[study.task["name"]]
    problems = [
        f"task.{f}: the grid sets the data size as {study.d_field} (grid.d); give one data size: "
        f"remove task.{f}, or set grid.d_field: {f}"
        for f in kind.d_fields
        if f != study.d_field and study.task.get(f) is not None
    ]
    for i, d in enumerate(study.grid.d or ()):
        if study.d_field in kind.counts and d != int(d):
            problems.append(f"grid.d[{i}]: {study.d_field} is a count, got {d}")
        elif study.d_field not in kind.counts and not 0 < d < 1:
            problems.append(f"grid.d[{i}]: a {study.d_field} must be in (0, 1), got {d}")
    return problems


def _length(study: Study) -> list[str]:
    """One training length (orchestrator/study/length.py); an IsoFLOP grid only where D counts
    the tokens a language model trains on, so that a budget C buys D = C / FLOPs per token."""
    kind = task_kinds()[study.task["name"]]
    problems = []
    if study.isoflop and not kind.language_model:
        lms = [k.name for k in task_kinds().values() if k.language_model]
        problems.append(
            f"grid.flops: an IsoFLOP grid needs a language-modelling task, whose D counts the tokens "
            f"trained on ({', '.join(lms)}); task {kind.name!r} is not one: give grid.d"
        )
    elif study.isoflop and study.d_field not in kind.counts:
        problems.append(
            f"grid.d_field: an IsoFLOP grid sets D as a count of tokens; {study.d_field!r} is not one"
        )
    # A rule for tokens or epochs is refused in rules.py, once; one for steps is a length like any.
    train = {k: v for k, v in study.train.items() if not (isinstance(v, Rule) and k in STUDY_LENGTH_KEYS)}
    return problems + length_problems(train, study.isoflop, kind.language_model, list(study.search.space))


def _search(study: Study) -> list[str]:
    """Searched fields are trainer fields; objectives are metrics a run reports, each once, and
    the sampler and pruning rule can serve them."""
    problems = [
        f"search.space.{key}: must be a dotted trainer field under task., model. or train. "
        f"(e.g. train.weight_decay)"
        for key in study.search.space
        if key.split(".")[0] not in ("task", "model", "train")
    ]
    # A user trainer's metrics are whatever it reports and returns: known only once it runs.
    allowed = study.allowed_metrics() if study.trainer is None else [o.metric for o in study.objectives]
    problems += [
        f"objectives[{i}].metric: unknown metric {o.metric!r}; allowed: {', '.join(allowed)}"
        for i, o in enumerate(study.objectives)
        if o.metric not in allowed
    ]
    if len({o.metric for o in study.objectives}) != len(study.objectives):
        problems.append("objectives: each metric may appear once")
    if len(study.objectives) > 1 and study.search.sampler in SINGLE_OBJECTIVE_SAMPLERS:
        problems.append(
            f"search.sampler: {study.search.sampler!r} optimizes one objective; use tpe, nsgaii, "
            f"random or qmc with {len(study.objectives)} objectives"
        )
    problems += _scope(study)
    if study.prune.mode == "objective":
        objectives = [(o.metric, o.direction) for o in study.objectives]
        if len(objectives) != 1 or objectives[0][0] not in STEP_METRICS or objectives[0][1] != "minimize":
            problems.append(
                f"prune.mode: 'objective' stops a run once it cannot beat its cell's best step, so it "
                f"needs one objective, {' or '.join(STEP_METRICS)} minimized; got {objectives}; "
                f"use 'phase' or 'off'"
            )
    return problems


def _scope(study: Study) -> list[str]:
    """search.scope study: one trial runs in every cell and is judged on all of them together
    (orchestrator/sweep/cell.py: SharedSearch), so nothing may judge a run against its cell alone
    or add a cell after trials ran."""
    if study.search.scope != "study":
        return []
    problems = []
    if study.prune.mode != "off":
        problems.append(
            f"prune.mode: {study.prune.mode!r} stops runs against their own cell's trials; with "
            f"search.scope: study a trial is judged over every cell at once: set prune.mode: off"
        )
    if study.grid.refine is not None:
        problems.append(
            "grid.refine: refining adds cells after trials have run, and a trial of search.scope: study "
            "covers every cell: remove grid.refine, or use search.scope: cell"
        )
    return problems


def _spec_problems(study: Study, n_entry: Any, d: float | None, params: dict) -> list[str]:
    """Why the trainer refuses one run of the study ([] if it accepts it). The D field the grid
    sets is reported as grid.d, where the person wrote it. A length other than steps is checked
    per cell once it is resolved (grid.build_cells); here the steps are a probe's."""
    entry = n_entry if isinstance(n_entry, dict) else {}
    try:
        data = anchored(
            study.trial_data(entry, d, params, study.grid.seeds[0])
        )  # rules: per cell, in grid.py
        if study.length.kind != "steps":
            data["train"]["steps"] = PROBE_STEPS
        TrainSpec.model_validate(data)
    except ValidationError as err:
        d_path = f"task.{study.d_field}"
        return [
            str(Problem("grid.d", p.message) if p.path == d_path and d is not None else p)
            for p in problems_of(err, TrainSpec)
        ]
    except (OverrideError, RuleError) as err:
        return [str(err)]
    return []


def _d_axis(study: Study) -> list[tuple[str, float | None]]:
    """The grid's second axis as (label, D): an IsoFLOP grid's D is known only per cell, later."""
    if study.grid.d is None:
        return [("", None)]
    return [(f" x grid.d[{j}]", d) for j, d in enumerate(study.grid.d)]


def _specs(study: Study) -> list[str]:
    """Build the first cell's spec, then every cell, then the first cell under each searched
    value at its ends: a fixed field, a shape or a searched range the trainer refuses fails here,
    reported once at the place in the study that set it."""
    n0, d0 = study.grid.n[0], _d_axis(study)[0][1]
    first = _spec_problems(study, n0, d0, {})
    # A problem of the fixed sections is reported once, plainly; one that only a grid entry's
    # shape causes is reported per cell below.
    if first:
        fixed = _spec_problems(study, {}, d0, {}) if isinstance(n0, dict) else first
        if fixed:
            return fixed
    problems = []
    for i, n_entry in enumerate(study.grid.n):
        for label, d in _d_axis(study):
            problems += [f"grid.n[{i}]{label}: {line}" for line in _spec_problems(study, n_entry, d, {})]
    for key, p in study.search.space.items():
        for v in [p.low, p.high] if p.type != "categorical" else p.choices:
            problems += [
                f"search.space.{key}: value {v!r} is not allowed: {line}"
                for line in _spec_problems(study, n0, d0, {key: v})
                if line not in first
            ]
    return problems


def _refine_own_trainer(study: Study) -> list[str]:
    """Refinement places a new scale by its N or D before it trains (orchestrator/sweep/refine.py);
    a user's function reports its N only once it has run."""
    if study.grid.refine is None:
        return []
    return [
        f"grid.refine: refining needs the built-in trainers, whose model shapes have a known N before they "
        f"train; trainer {study.trainer!r} reports its N only after: remove grid.refine, or add the scales "
        f"to grid.{study.grid.refine.axis} by hand"
    ]


MAX_RUNS = 100_000  # the most training runs a study may ask for unless `--max-runs` says more


def run_count(study: Study, n_cells: int) -> int:
    """Training runs of `n_cells` cells: each runs trials_per_cell trials, each trial once per seed."""
    return n_cells * study.search.trials_per_cell * len(study.grid.seeds)


def run_cap_problems(study: Study, max_runs: int, n_cells: int | None = None) -> list[str]:
    """A study of more runs than `max_runs` is refused: `trials_per_cell: 10000000` is a typo, not a
    plan, and would write ten million trials. Without `n_cells`, counted on the grid as written
    (every N x D or N x C pair is a cell), before any cell is built; an IsoFLOP window keeps only
    some pairs, so such a grid is counted once its cells are (n_cells)."""
    if n_cells is None:
        if study.grid.tokens_per_param is not None:
            return []
        n_cells = len(study.grid.n) * len(study.grid.d or study.grid.flops or ())
    runs = run_count(study, n_cells)
    if runs <= max_runs:
        return []
    trials, seeds = study.search.trials_per_cell, len(study.grid.seeds)
    return [
        f"(study): {runs:,} training runs ({n_cells:,} cells x {trials:,} trials per cell "
        f"(search.trials_per_cell) x {seeds} seeds (grid.seeds)) is more than the limit of {max_runs:,}; "
        f"make the grid or trials_per_cell smaller, or pass --max-runs {runs} to allow it"
    ]


def check_study(study: Study) -> list[str]:
    """Every problem the schema could not see, each once; the trainer is asked only once the
    study's own parts fit."""
    if study.trainer is not None:
        return list(
            dict.fromkeys(
                own_trainer_problems(study)
                + _search(study)
                + _refine_own_trainer(study)
                + rule_problems(study)
                + plugin_problems(study)
            )
        )
    problems = _task(study)
    if problems:
        return problems
    problems = (
        _grid_d(study) + _length(study) + _search(study) + rule_problems(study) + plugin_problems(study)
    )
    return list(dict.fromkeys(problems or _specs(study)))
