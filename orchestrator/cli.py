"""`grokscale`: run, validate, inspect and report studies; train one model. Thin: parse, call.

Exit codes: 0 done, 1 the study ran but something failed, 2 bad input (nothing was started).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

EXAMPLES = """examples:
  grokscale validate sweeps/quickstart.yaml
  grokscale run sweeps/quickstart.yaml --set search.trials_per_cell=4
  grokscale status sweeps/quickstart.yaml
  grokscale report sweeps/quickstart.yaml --out report/   # plots and fits, also logged to MLflow
  grokscale plan sweeps/isoflop_charlm.yaml --flops 2.4e11 --out rung.yaml   # the next rung, forecast
  grokscale reproduce RUN_ID          # train one recorded run again, compare bit for bit
  grokscale train --task.p 59 --train.weight_decay 1.0
"""


def _study_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", help="the study's YAML file (under sweeps/)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any field by its dotted path, e.g. --set train.lr=3e-4 (repeatable)",
    )
    p.add_argument("--tracking-uri", help="the MLflow tracking URI (same as --set tracking.uri=...)")


def _max_runs_arg(p: argparse.ArgumentParser) -> None:
    # No default here: orchestrator.study.checks.MAX_RUNS is read in _load (importing it loads torch).
    p.add_argument(
        "--max-runs",
        type=int,
        metavar="N",
        help="refuse a study of more training runs (cells x trials per cell x seeds) than N "
        "(default 100,000)",
    )


def _load(args: argparse.Namespace, with_preflight: bool = True):
    """Load, resolve and check a study; print every problem and exit 2 if there is one."""
    from orchestrator.study import (  # lazily: it loads torch, which `fit` needs not
        StudyError,
        load_study,
    )
    from orchestrator.study.checks import MAX_RUNS, run_cap_problems
    from orchestrator.study.grid import build_cells
    from orchestrator.study.preflight import check_preflight, corpus_problems

    overrides = list(args.set) + ([f"tracking.uri={args.tracking_uri}"] if args.tracking_uri else [])
    max_runs = None  # `status` reads a study of any size; `run` and `validate` cap it
    if hasattr(args, "max_runs"):
        max_runs = MAX_RUNS if args.max_runs is None else args.max_runs
    try:
        study = load_study(args.study, overrides, max_runs=max_runs)
        if problems := corpus_problems(study):  # before the grid, which tokenizes the corpus
            raise StudyError(problems)
        cells = build_cells(study)
        if max_runs is not None and (problems := run_cap_problems(study, max_runs, len(cells))):
            raise StudyError(problems)
        # `validate --gpu NAME` plans for a GPU cluster elsewhere: this machine's own CPUs and
        # GPUs are not the measure.
        planned = {"CPU": math.inf, "GPU": math.inf} if getattr(args, "gpu", None) else None
        problems = check_preflight(study, cells, planned) if with_preflight else []
        if problems:
            raise StudyError(problems)
    except StudyError as err:
        for line in err.problems:
            print(f"error: {line}", file=sys.stderr)
        print(f"{args.study}: {len(err.problems)} problem(s); nothing was started", file=sys.stderr)
        sys.exit(2)
    return study, cells


def cmd_validate(args: argparse.Namespace) -> int:
    from orchestrator.study.checks import run_count
    from orchestrator.study.cost import DEFAULT_GPU, ESTIMATED_MFU, cell_cost

    study, cells = _load(args)
    runs = run_count(study, len(cells))
    print(
        f"{args.study}: valid. {len(cells)} cells x {study.search.trials_per_cell} trials x "
        f"{len(study.grid.seeds)} seeds = {runs} training runs"
    )
    window = study.grid.tokens_per_param
    if window is not None:
        product = len(study.grid.n) * len(study.grid.flops or ())
        print(
            f"  grid.tokens_per_param [{window.min or 0:g}, {window.max or math.inf:g}] keeps {len(cells)} "
            f"of the {product} N x C cells"
        )
    gpu_hours = 0.0
    for c in cells:
        if study.trainer is not None:  # the user's trainer reports its own N and decides its data
            print(f"  {c.key}: N and D as the trainer {study.trainer} reports them")
            continue
        budget = f", C = {c.flops_budget:.3g}" if c.flops_budget else ""
        cost = cell_cost(study, c, args.gpu or DEFAULT_GPU)
        print(
            f"  {c.key}: N = {c.n(study.grid.n_convention):,} ({study.grid.n_convention}), D = "
            f"{c.n_train:,}, {c.steps:,} steps ({c.epochs:.3g} epochs, {c.train_flops:.3g} training "
            f"FLOPs){budget}; {cost.describe()}"
        )
        gpu_hours += cost.gpu_hours
    if gpu_hours:
        print(
            f"  in all: {gpu_hours:,.1f} GPU-hours on {args.gpu or DEFAULT_GPU} at an assumed MFU of "
            f"{ESTIMATED_MFU:.0%} (orchestrator/study/cost.py); each run logs the MFU it reached"
        )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    study, cells = _load(args)
    if study.ray.local():
        # A local Ray binds every socket (GCS, raylet, workers) to 127.0.0.1 only in its
        # single-machine mode, which must be chosen before ray is imported. Never when joining
        # a cluster: other nodes must reach this driver.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    from orchestrator.store.hold import HoldLost, StudyHeld
    from orchestrator.store.journal import JournalCorrupt
    from orchestrator.store.queue import StoreUnreachable
    from orchestrator.store.ui import study_links
    from orchestrator.study import redact_url
    from orchestrator.sweep.launcher import ClusterLost
    from orchestrator.sweep.refine import run_refined

    try:
        stats, refined = run_refined(study, cells, show=not args.quiet)  # run_study, refined with grid.refine
    except (StudyHeld, JournalCorrupt) as err:  # nothing was started
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (ClusterLost, StoreUnreachable, HoldLost) as err:  # stopped part-way; nothing recorded is lost
        print(f"error: {err}", file=sys.stderr)
        return 1
    out = {k: v for k, v in stats.to_dict().items() if k != "timeline"}  # per-run timestamps: for benchmarks
    if refined is not None:
        out["refine"] = refined.to_dict()
    if not args.no_report:
        out["report"] = _report(
            redact_url(study.tracking.uri), study.tracking.uri, study.experiment_name, quiet=args.json
        )
    links = study_links(study)  # after the report, so its link opens the report's heatmap
    out["links"] = links.to_dict() if links else None
    if args.json:
        print(json.dumps(out))
    else:
        print(
            f"{study.name}: {stats.completed} completed, {stats.stopped} pruned, {stats.diverged} diverged, "
            f"{stats.failed} failed in {stats.wall_time_s:.0f} s."
        )
        if stats.dropped_keys or stats.write_failures:
            print(
                f"MLflow: {stats.dropped_keys} metric, param or tag names or values it refuses were "
                f"dropped (each run's grokscale.dropped_keys tag lists its own); {stats.write_failures} "
                f"runs failed because a write of theirs failed (their grokscale.reason says why)."
            )
        if refined is not None:
            print(refined.summary())
        _print_links(links)
    return 0 if stats.failed == 0 else 1


def _print_links(links) -> None:
    """Where to look: the MLflow UI's runs table and report, and optuna-dashboard."""
    for line in links.lines() if links else []:
        print(line)


def _report(
    shown_uri: str, uri: str, experiment: str, quiet: bool = False, out_dir: str | None = None
) -> dict:
    """Make the study's report from MLflow and log it to the parent run; failure is reported, not raised."""
    from orchestrator.report.report import make_report
    from orchestrator.store.results import ResultsError

    try:
        report = make_report(uri, experiment, out_dir)
    except ResultsError as err:
        print(f"report: {err}", file=sys.stderr)
        return {"error": str(err)}
    if not quiet:
        from orchestrator.report.report import outline

        for line in outline(report):
            print(f"report: {line}")
        print(
            f"report: {len(report.plots)} plots, every fit and every reason in results.json, on the study's "
            f"parent run in {shown_uri}; files in {report.directory}"
        )
    return {"plots": sorted(report.plots), "skipped": report.skipped, "directory": str(report.directory)}


def cmd_report(args: argparse.Namespace) -> int:
    """The study is a YAML file (its name and tracking URI are read from it) or an experiment name."""
    from orchestrator.study import redact_url

    uri, experiment = args.tracking_uri, args.study
    if args.study.endswith((".yaml", ".yml")):
        study = load_study_or_exit(args.study, [f"tracking.uri={uri}"] if uri else [])
        uri, experiment = study.tracking.uri, study.experiment_name
    uri = uri or "sqlite:///mlflow.db"
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        print(f"error: no MLflow store at {uri}; pass --tracking-uri", file=sys.stderr)
        return 2
    out = _report(redact_url(uri), uri, experiment, quiet=args.json, out_dir=args.out)
    if args.json:
        print(json.dumps(out))
    return 2 if "error" in out else 0


def load_study_or_exit(path: str, overrides: list[str]):
    from orchestrator.study import StudyError, load_study

    try:
        return load_study(path, overrides)
    except StudyError as err:
        for line in err.problems:
            print(f"error: {line}", file=sys.stderr)
        sys.exit(2)


def cmd_status(args: argparse.Namespace) -> int:
    study, cells = _load(args, with_preflight=False)
    from orchestrator.store.journal import JournalCorrupt
    from orchestrator.store.status import print_status, study_status
    from orchestrator.store.ui import study_links

    try:
        rows = study_status(study, cells)
    except JournalCorrupt as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:  # the rows alone, one per cell: what scripts read
        print(json.dumps(rows, indent=2))
        return 0
    print_status(study, rows)
    _print_links(study_links(study))
    return 0


def cmd_train(args: argparse.Namespace, rest: list[str]) -> int:
    from trainers.__main__ import main as train_main

    return train_main(rest)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # grokscale prints its own progress; MLflow's artifact bars would interleave with it.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    parser = argparse.ArgumentParser(
        prog="grokscale",
        description=__doc__,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run or resume a study (same command again resumes)")
    _study_args(p)
    _max_runs_arg(p)
    p.add_argument("--quiet", action="store_true", help="no live progress display")
    p.add_argument("--json", action="store_true", help="print the final counts as JSON")
    p.add_argument("--no-report", action="store_true", help="skip the analysis report at the end")
    p = sub.add_parser(
        "report", help="analyse a study from MLflow alone; log plots, tables and fits to its parent run"
    )
    p.add_argument("study", help="the study's YAML file, or its MLflow experiment name")
    p.add_argument(
        "--tracking-uri", help="the MLflow tracking URI (default: the study's, or sqlite:///mlflow.db)"
    )
    p.add_argument("--out", help="also keep the report's files in this folder (default: a temporary folder)")
    p.add_argument("--json", action="store_true", help="print what was made as JSON")
    p = sub.add_parser("validate", help="check a study config without running anything")
    _study_args(p)
    _max_runs_arg(p)
    p.add_argument(
        "--gpu",
        help="plan for this GPU (a name in trainers/device.py's table: H100, A100, L4, ...): "
        "GPU cells' tokens/s and GPU-hours on it, not checked against this machine",
    )
    p = sub.add_parser("status", help="per-cell trial counts and the best trial, from the Optuna storage")
    _study_args(p)
    p.add_argument("--json", action="store_true")
    sub.add_parser(
        "train", help="train one model: python -m trainers with the same flags (see --help)", add_help=False
    )
    if argv[:1] == ["train"]:
        return cmd_train(argparse.Namespace(), argv[1:])
    sub.add_parser(
        "reproduce",
        help="train one recorded run again; compare its metrics bit for bit (see --help)",
        add_help=False,
    )
    if argv[:1] == ["reproduce"]:
        from orchestrator.report.reproduce import main as reproduce_main

        return reproduce_main(argv[1:])
    from orchestrator.cluster.slurm import add_slurm_parser, cmd_slurm
    from orchestrator.report.fit import add_fit_parser, run_fit
    from orchestrator.report.plan import add_plan_parser, cmd_plan

    add_fit_parser(sub)  # grokscale fit scaling|isoflop|emergence|downstream|transfer FILE.csv ...
    add_plan_parser(sub)  # grokscale plan STUDY --flops C --out rung.yaml
    add_slurm_parser(sub)  # grokscale slurm STUDY --nodes N ...
    args = parser.parse_args(argv)
    if args.command == "fit":
        return run_fit(args)
    return {
        "run": cmd_run,
        "validate": cmd_validate,
        "status": cmd_status,
        "report": cmd_report,
        "slurm": cmd_slurm,
        "plan": cmd_plan,
    }[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
