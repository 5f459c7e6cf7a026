"""`grokscale plan`: the next rung of a finished study, as Marin's scaling ladders do.

  grokscale plan STUDY.yaml --flops C --out RUNG.yaml [--results results.json]
                 [--approach isoflop|loss_law] [--set KEY=VALUE ...] [--tracking-uri URI] [--json]

From the study's fitted laws (analysis/plan.py) at budget C: the compute-optimal N and D and the
loss to expect, with their bootstrap intervals; the model of the study's family closest to that
N (trainers/models.py `resolve_shape`, with no tolerance: the closest shape is always given, with
how far its N is from N_opt); and RUNG.yaml, the study itself cut to that one run: grid.n the
shape, grid.flops [C] (an IsoFLOP study; D follows from C and the shape) or grid.d [D_opt], one
trial with the tuned values of the finished cell nearest the plan (`nearest_cell`), the first
seed. The rung is checked as `grokscale validate` checks a study, and its steps and batch are
the ones it will train. `grokscale run RUNG.yaml` trains it; its min_val_loss against the planned
interval is the forecast's check.

Where the study's cells come from: its MLflow experiment (the study's tracking URI, as
`grokscale report` reads it), or with --results a saved report's results.json: the best trial
of each cell ("regularization": cell, best_value, best_params), with N and D from the study's
grid. The laws are refitted to those cells with the report's own functions and defaults, so the
intervals are the report's bootstrap; a refit whose a differs from the saved one means the study
file or the analysis changed since, and is refused.

Approach: "isoflop" (approach 2) for an IsoFLOP study, else "loss_law" (approach 3, L(N, D)).

Output: a table, or with --json one object: n_opt, n_low, n_high, d_opt, d_low, d_high, loss,
loss_low, loss_high (min_val_loss), shape (d_model, n_layer, n_head, n_params, relative_error,
within_tolerance, grid_entry), steps, batch (examples per step), tokens_per_step, d_rung (unique
tokens the rung trains), hyperparameters, hyperparameters_from (the cell), out, extrapolation
(C over the largest budget the law saw), approach, flops, flops_per_token, a, a_low, a_high,
largest_flops, source, rung_problems.

Exit codes: 0 planned, rung written and valid; 1 planned and written, but the rung is not a
valid study (its problems are printed: e.g. more data than the corpus holds); 2 nothing planned:
bad input, or the study's fit is missing or rejected (the reason is printed).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from orchestrator.analysis.estimate import jsonable
from orchestrator.analysis.plan import ComputePlan, nearest_cell, plan_isoflop, plan_loss_law

SHAPE_TOLERANCE = 0.10  # resolve_shape's default: a grid's target N lands within 10%
REPRODUCE_RTOL = 1e-6  # a refit of the saved cells gives the saved exponent to float precision


class PlanError(Exception):
    """Nothing can be planned; the message says why (exit 2)."""


@dataclass(frozen=True)
class CellBest:
    """One finished cell at its best trial: N (the study's convention), D (tokens), its budget
    (an IsoFLOP cell's C, else None), min_val_loss and the tuned values that reached it."""

    key: str
    n: float
    d: float
    flops: float | None
    loss: float
    params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Source:
    cells: tuple[CellBest, ...]
    flops_per_token: float
    label: str  # where the cells came from
    saved: dict | None = None  # a saved report's results.json


def add_plan_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan",
        help="the compute-optimal N, D and loss at a budget beyond a finished study, "
        "and a one-run study (a rung) to check it",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("study", help="the finished study's YAML file")
    p.add_argument(
        "--flops", type=float, required=True, metavar="C", help="the target budget, training FLOPs"
    )
    p.add_argument("--out", required=True, help="where to write the rung's study file (YAML)")
    p.add_argument(
        "--results",
        metavar="results.json",
        help="plan from a saved report (grokscale report --out DIR writes DIR/results.json) instead of "
        "the study's MLflow experiment",
    )
    p.add_argument(
        "--approach",
        choices=("isoflop", "loss_law"),
        help="isoflop (approach 2) or loss_law (approach 3, L(N, D)); default isoflop for an IsoFLOP "
        "study, else loss_law",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field of the study, as for run (repeatable)",
    )
    p.add_argument("--tracking-uri", help="the MLflow tracking URI (default: the study's)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def cmd_plan(args: argparse.Namespace) -> int:
    try:
        if not (math.isfinite(args.flops) and args.flops > 0):
            raise PlanError(f"--flops must be finite and > 0, got {args.flops}")
        out = plan_study(args)
    except PlanError as err:
        print(f"error: {err}", file=sys.stderr)
        print(f"{args.study}: nothing was planned", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=2) if args.json else table(out))
    for line in out["rung_problems"]:
        print(f"error: {out['out']}: {line}", file=sys.stderr)
    return 1 if out["rung_problems"] else 0


def plan_study(args: argparse.Namespace) -> dict:
    """Load, plan, write and check the rung; the --json object (module docstring)."""
    from orchestrator.study import StudyError, load_study

    overrides = list(args.set) + ([f"tracking.uri={args.tracking_uri}"] if args.tracking_uri else [])
    try:
        study = load_study(args.study, overrides)
    except StudyError as err:
        raise PlanError("; ".join(err.problems)) from None
    if study.trainer is not None:
        raise PlanError(
            f"trainer {study.trainer}: a study of your own trainer sizes its own model; grokscale "
            f"cannot pick its shape"
        )
    approach = args.approach or ("isoflop" if study.isoflop else "loss_law")
    if approach == "isoflop" and not study.isoflop:
        raise PlanError("--approach isoflop needs an IsoFLOP study (grid.flops)")
    source = source_from_report(args.results, study, approach) if args.results else source_from_mlflow(study)
    plan = compute_plan(source, args.flops, approach, study.grid.n_convention)
    shape = closest_shape(study, plan.N_opt.value)
    best = source.cells[
        nearest_cell(
            [c.n for c in source.cells],
            [_budget(c, source) for c in source.cells],
            plan.N_opt.value,
            plan.flops,
        )
    ]
    rung = rung_config(read_study_data(args.study, overrides), study, shape.shape, plan, best.params)
    header = rung_header(args, plan, shape, best)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(header + yaml.safe_dump(rung, sort_keys=False, default_flow_style=None, width=110))
    cell, problems = check_rung(out)
    return result(plan, shape, cell, best, str(out), source.label, problems, study.grid.n_convention)


# -- where the cells come from ----------------------------------------------------------------------
def source_from_report(path: str, study, approach: str) -> Source:
    """The cells of a saved report: each cell's best trial (results.json "regularization"), N and D
    from the study's grid. The fit the plan needs must be in the report, and accepted there."""
    from orchestrator.study import StudyError
    from orchestrator.study.grid import build_cells

    try:
        saved = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise PlanError(f"{path}: cannot read a report's results.json ({err})") from None
    skipped = saved.get("skipped") or {}
    if approach == "isoflop":
        fit = saved.get("frontier_isoflop")
        if fit is None:
            raise PlanError(
                f"{path} has no IsoFLOP frontier (frontier_isoflop)"
                + (f": the report skipped it: {skipped['frontier']}" if "frontier" in skipped else "")
            )
        if fit.get("a") is None:
            raise PlanError(f"{path}: approach 2 has no N_opt(C) power law: {fit.get('reason')}")
    else:
        law = saved.get("scaling_law")
        if law is None:
            raise PlanError(
                f"{path} has no L(N, D) fit (scaling_law)"
                + (f": {skipped['scaling_fit']}" if "scaling_fit" in skipped else "")
            )
        if not (law.get("check") or {}).get("accepted"):
            reasons = "; ".join((law.get("check") or {}).get("reasons") or ["no fit check recorded"])
            raise PlanError(f"{path}: the L(N, D) fit was rejected: {reasons}")
    objective = study.objectives[0]
    if (objective.metric, objective.direction) != ("min_val_loss", "minimize"):
        raise PlanError(
            f"{path} holds each cell's best {objective.metric}; a plan reads min_val_loss: plan from "
            f"MLflow instead (leave out --results)"
        )
    try:
        grid = build_cells(study)  # after the checks above: it reads the corpus
    except StudyError as err:
        raise PlanError("; ".join(err.problems)) from None
    by_key = {c.key: c for c in grid}
    entries = saved.get("regularization") or []
    unknown = [e["cell"] for e in entries if e["cell"] not in by_key]
    if unknown or not entries:
        raise PlanError(
            f"{path}: "
            + (
                f"cells {', '.join(unknown)} are not in {study.name}'s grid: the study file "
                f"changed since the report"
                if unknown
                else "no per-cell results"
            )
        )
    conv = study.grid.n_convention
    cells = tuple(
        CellBest(
            e["cell"],
            float(by_key[e["cell"]].n(conv)),
            float(by_key[e["cell"]].n_train),
            by_key[e["cell"]].flops_budget,
            float(e["best_value"]),
            dict(e.get("best_params") or {}),
        )
        for e in entries
    )
    k = (saved.get(f"frontier_{approach}") or {}).get("flops_per_token")
    if k is None:  # the runs' own accounting, as the report takes it (scaling_section.flops_per_token)
        k = float(np.median([c.flops_per_example / (c.tokens_per_example * c.n(conv)) for c in grid]))
    return Source(cells, float(k), f"{path} ({len(cells)} cells)", saved)


def source_from_mlflow(study) -> Source:
    """The cells of the study's MLflow experiment, as the report reads them: per cell the run
    with the lowest min_val_loss, an IsoFLOP run at the grid budget nearest its FLOPs."""
    from orchestrator.report.document import read_inputs
    from orchestrator.report.scaling_section import flops_per_token, per_cell_best
    from orchestrator.store.names import PARAM_SEARCHED_PREFIX
    from orchestrator.store.results import ResultsError, load_results
    from orchestrator.study import redact_url

    uri = study.tracking.uri
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise PlanError(
            f"no MLflow store at {uri}; pass --tracking-uri, or plan from a saved report with --results"
        )
    try:
        res = load_results(uri, study.experiment_name, with_curves=False)
    except ResultsError as err:
        raise PlanError(str(err)) from None
    inp = read_inputs(res, Path("."))
    usable = inp.usable
    need = ["min_val_loss", inp.n_col, inp.d_col] + (["flops"] if study.isoflop else [])
    if missing := [c for c in need if c not in usable]:
        raise PlanError(f"the runs of {study.experiment_name} did not report {', '.join(missing)}")
    best = per_cell_best(usable, "min_val_loss", minimize=True)
    budgets = np.asarray(study.grid.flops or [], dtype=float)
    cells = []
    for _, row in best.iterrows():
        budget = None
        if budgets.size:
            budget = float(budgets[np.argmin(np.abs(np.log(float(row["flops"])) - np.log(budgets)))])
        params = {
            c.removeprefix(PARAM_SEARCHED_PREFIX): _plain(row[c])
            for c in best.columns
            if c.startswith(PARAM_SEARCHED_PREFIX) and not _missing(row[c])
        }
        cells.append(
            CellBest(
                str(row["cell"]),
                float(row[inp.n_col]),
                float(row[inp.d_col]),
                budget,
                float(row["min_val_loss"]),
                params,
            )
        )
    label = f"MLflow experiment {study.experiment_name} at {redact_url(uri)} ({len(cells)} cells)"
    return Source(tuple(cells), flops_per_token(usable, inp.n_col), label)


def compute_plan(source: Source, flops: float, approach: str, convention: str) -> ComputePlan:
    """The plan by `approach`; a refused plan, or a refit that does not give the saved report's
    exponent, is a PlanError."""
    cells = source.cells
    n, d, loss = (np.array([getattr(c, f) for c in cells], dtype=float) for f in ("n", "d", "loss"))
    if approach == "isoflop":
        budgets = np.array([c.flops for c in cells], dtype=float)
        plan = plan_isoflop(n, budgets, loss, flops, flops_per_token=source.flops_per_token)
    else:
        plan = plan_loss_law(n, d, loss, flops, flops_per_token=source.flops_per_token, convention=convention)
    if plan.reason is not None:
        raise PlanError(f"{source.label}: {plan.reason}")
    saved_a = ((source.saved or {}).get(f"frontier_{approach}") or {}).get("a")
    if saved_a is not None and not math.isclose(plan.a.value, saved_a, rel_tol=REPRODUCE_RTOL):
        raise PlanError(
            f"{source.label}: refitted to its cells, the {approach} law gives a = {plan.a.value:.6g}, the "
            f"saved report a = {saved_a:.6g}: the study file or the analysis changed since the report"
        )
    return plan


def _budget(cell: CellBest, source: Source) -> float:
    return cell.flops if cell.flops is not None else source.flops_per_token * cell.n * cell.d


# -- the shape and the rung --------------------------------------------------------------------------
def closest_shape(study, target_n: float):
    """The study's model with the width (transformer: at its depth and heads), depth (gpt: its
    ladder) or hidden width (mlp) whose N is closest to `target_n`, however far that is
    (trainers/models.py: resolve_shape without a tolerance)."""
    from orchestrator.study.length import PROBE_STEPS
    from trainers.models import resolve_shape
    from trainers.spec import TrainSpec
    from trainers.tasks import make_task

    base = TrainSpec.model_validate(study.trial_data({}, None, {"train.steps": PROBE_STEPS}, 0))
    data = make_task(base.task, 0)
    try:
        return resolve_shape(
            base.model,
            max(1, round(target_n)),
            data.vocab_size,
            data.n_out,
            data.seq_len,
            convention=study.grid.n_convention,
            tolerance=math.inf,
        )
    except ValueError as err:
        raise PlanError(f"model: {err}") from None


def describe_shape(model) -> dict:
    """The size fields of a built-in model: d_model, n_layer, n_head (an MLP: its widths)."""
    if model.family == "mlp":
        return {"d_embed": model.d_embed, "d_hidden": model.d_hidden, "n_hidden": model.n_hidden}
    d_model = model.width if model.family == "gpt" else model.d_model
    return {"d_model": d_model, "n_layer": model.n_layer, "n_head": model.n_head}


def read_study_data(path: str, overrides: list[str]) -> dict:
    """The study file as data with its --set overrides and corpus paths made absolute, as
    load_study reads it, so the rung trains on the same files from any folder."""
    from orchestrator.study.load import absolute_paths, read_yaml
    from trainers.overrides import apply_overrides

    data = absolute_paths(read_yaml(Path(path)), Path(path).expanduser().absolute().parent)
    return absolute_paths(apply_overrides(data, overrides), Path.cwd())


def rung_config(data: dict, study, shape: dict, plan: ComputePlan, params: dict) -> dict:
    """The study `data` cut to one run: grid.n the shape, grid.flops [C] (an IsoFLOP study) or
    grid.d [D_opt], the first seed, `params` (dotted paths) fixed, nothing searched, and its own
    name, experiment and working folder, so its run never mixes with the study's."""
    out = copy.deepcopy(data)
    name = f"{study.name}_rung_{plan.flops:.3g}".replace("+", "")
    out["name"] = name
    out["description"] = (
        f"One run at {plan.flops:.3g} FLOPs, planned by grokscale plan from {study.name} "
        f"(approach {plan.approach}): does it reach the forecast loss?"
    )
    grid = {k: v for k, v in out["grid"].items() if k not in ("tokens_per_param", "refine", "d", "flops")}
    grid["n"] = [dict(shape)]
    if study.isoflop:
        grid["flops"] = [float(plan.flops)]
    else:
        from orchestrator.study.tasks import task_kinds

        if study.d_field not in task_kinds()[study.task["name"]].counts:
            raise PlanError(
                f"grid.d sets {study.d_field}, a fraction, not a count of tokens: write the rung's D "
                f"({plan.D_opt.value:.4g} tokens) into the study by hand"
            )
        grid["d"] = [int(round(plan.D_opt.value))]
    grid["seeds"] = [study.grid.seeds[0]]
    out["grid"] = grid
    out["search"] = {"sampler": "random", "trials_per_cell": 1, "seed": study.search.seed, "space": {}}
    for key, value in params.items():
        section, _, rest = key.partition(".")
        node = out.setdefault(section, {})
        *parents, leaf = rest.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    if (out.get("tracking") or {}).get("experiment"):
        out["tracking"] = {**out["tracking"], "experiment": name}
    for key in ("workdir", "checkpoints"):  # runs/<rung name>, not the study's folder
        out.pop(key, None)
    return out


def rung_header(args: argparse.Namespace, plan: ComputePlan, shape, best: CellBest) -> str:
    source = f" --results {args.results}" if args.results else ""
    lines = [
        f"A rung planned by `grokscale plan {args.study} --flops {args.flops:g}{source}` "
        f"(approach {plan.approach}, {plan.extrapolation:.3g}x the largest budget the law saw):",
        f"N_opt {_iv(plan.N_opt)}, D_opt {_iv(plan.D_opt)} tokens, forecast min_val_loss "
        f"{_iv(plan.L_opt, '.4f')}.",
        f"The shape {shape.shape} has N = {getattr(shape.n_params, shape.convention):,} "
        f"({_signed_error(shape, plan.N_opt.value):+.1%} from N_opt); the tuned values "
        f"{best.params or 'none'} are those of the finished cell {best.key}.",
        f"Train it with `grokscale run {args.out}` and set its min_val_loss against the forecast.",
    ]
    return "".join(f"# {part}\n" for line in lines for part in textwrap.wrap(line, 100))


def check_rung(path: Path):
    """(the rung's one cell, []) when it is a study `grokscale validate` accepts, else (None, problems)."""
    from orchestrator.study import StudyError, load_study
    from orchestrator.study.checks import MAX_RUNS, run_cap_problems
    from orchestrator.study.grid import build_cells
    from orchestrator.study.preflight import check_preflight, corpus_problems

    try:
        rung = load_study(path, max_runs=MAX_RUNS)
        if problems := corpus_problems(rung):
            raise StudyError(problems)
        cells = build_cells(rung)
        if problems := run_cap_problems(rung, MAX_RUNS, len(cells)) + check_preflight(rung, cells):
            raise StudyError(problems)
    except StudyError as err:
        return None, list(err.problems)
    if len(cells) != 1:
        return None, [f"the rung has {len(cells)} cells, not one"]
    return cells[0], []


# -- output ------------------------------------------------------------------------------------------
def result(
    plan: ComputePlan,
    shape,
    cell,
    best: CellBest,
    out: str,
    source: str,
    problems: list[str],
    convention: str,
) -> dict:
    n_shape = getattr(shape.n_params, convention)
    return jsonable(
        {
            "n_opt": plan.N_opt.value,
            "n_low": plan.N_opt.low,
            "n_high": plan.N_opt.high,
            "d_opt": plan.D_opt.value,
            "d_low": plan.D_opt.low,
            "d_high": plan.D_opt.high,
            "shape": {
                **describe_shape(shape.model),
                "n_params": n_shape,
                "convention": convention,
                "relative_error": _signed_error(shape, plan.N_opt.value),
                "within_tolerance": shape.relative_error <= SHAPE_TOLERANCE,
                "grid_entry": shape.shape,
            },
            "steps": None if cell is None else cell.steps,
            "batch": None if cell is None else cell.examples_per_step,
            "tokens_per_step": None if cell is None else cell.examples_per_step * cell.tokens_per_example,
            "d_rung": None if cell is None else cell.n_train,
            "loss": plan.L_opt.value,
            "loss_low": plan.L_opt.low,
            "loss_high": plan.L_opt.high,
            "hyperparameters": best.params,
            "hyperparameters_from": best.key,
            "out": out,
            "extrapolation": plan.extrapolation,
            "approach": plan.approach,
            "flops": plan.flops,
            "flops_per_token": plan.flops_per_token,
            "a": plan.a.value,
            "a_low": plan.a.low,
            "a_high": plan.a.high,
            "largest_flops": plan.largest_flops,
            "source": source,
            "rung_problems": problems,
        }
    )


def table(r: dict) -> str:
    s = r["shape"]
    size = ", ".join(f"{k} {v}" for k, v in s.items() if k in ("d_model", "n_layer", "n_head", "d_hidden"))
    tol = "within" if s["within_tolerance"] else "OUTSIDE"
    run = (
        "not a valid study (below)"
        if r["steps"] is None
        else f"{r['steps']:,} steps x batch {r['batch']} ({r['tokens_per_step']:,} tokens per step): "
        f"D = {r['d_rung']:,} tokens"
    )
    rows = [
        (
            "budget",
            f"{r['flops']:.4g} FLOPs, {r['extrapolation']:.3g}x the largest the law saw "
            f"({r['largest_flops']:.4g})",
        ),
        ("approach", f"{r['approach']}: N_opt ∝ C^a, a = {_iv3(r['a'], r['a_low'], r['a_high'], '.3f')}"),
        ("N_opt", f"{_iv3(r['n_opt'], r['n_low'], r['n_high'])} parameters ({s['convention']})"),
        ("D_opt", f"{_iv3(r['d_opt'], r['d_low'], r['d_high'])} tokens"),
        (
            "shape",
            f"{size}: N = {s['n_params']:,} ({s['relative_error']:+.1%} from N_opt, {tol} "
            f"{SHAPE_TOLERANCE:.0%})",
        ),
        ("run", run),
        ("tuned", f"{r['hyperparameters'] or 'nothing searched'} (best of {r['hyperparameters_from']})"),
        ("loss", f"{_iv3(r['loss'], r['loss_low'], r['loss_high'], '.4f')} (min_val_loss)"),
        ("rung", f"{r['out']}: grokscale run {r['out']}"),
        ("from", r["source"]),
    ]
    return "\n".join(f"{k:<9}{v}" for k, v in rows)


def _signed_error(shape, target: float) -> float:
    return getattr(shape.n_params, shape.convention) / target - 1


def _iv(est, fmt: str = ".3g") -> str:
    return _iv3(est.value, est.low, est.high, fmt)


def _iv3(value, low, high, fmt: str = ".3g") -> str:
    bounds = "" if low is None or high is None else f" [{low:{fmt}}, {high:{fmt}}]"
    return f"{value:{fmt}}{bounds}"


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
