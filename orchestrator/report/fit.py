"""`grokscale fit`: the analysis fits on any CSV, one row per run.

  grokscale fit scaling FILE.csv --n-col N --d-col D --loss-col L [--flops C ...] [--flops-per-token K]
                                 [--json]
  grokscale fit isoflop FILE.csv --n-col N --flops-col C --loss-col L [--flops-per-token K] [--json]
  grokscale fit emergence FILE.csv --x-col X --y-col Y [--group-col G] [--chance C] [--json]
  grokscale fit downstream FILE.csv --n-col N --d-col D --loss-col L --metric-col M --at N:D [--at ...]
                                    [--group-col G] [--chance C] [--curves EVALS.csv] [--step-col S] [--json]
  grokscale fit transfer FILE.csv --n-col N --param-col P --loss-col L [--group-col G] [--tolerance T]
                                  [--json]

`fit scaling` fits L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022, approach 3) and
its compute-optimal frontier at the budgets --flops (default: 5 spanning the runs' K*N*D), with
C = K*N*D (K = --flops-per-token, FLOPs per token per parameter, default 6); with only one of
--n-col / --d-col, the one-variable law L(N) or L(D), which has no frontier. `fit isoflop` runs
approach 2 on IsoFLOP runs: a parabola in ln N per budget, N_opt = G (C/K)^a across budgets,
and a backtest that predicts the largest budget from the others. `fit emergence` fits the
emergence sigmoid of Y over X, once per value of G when given. `fit downstream` forecasts a task's
metric at each target N:D in two steps (Bhagia et al. 2024; `analysis/downstream.py`): L(N, D) on
the runs' final losses, then metric = a / (1 + exp(k (L - L0))) + b over every evaluation (the
--curves file, one row per checkpoint, same column names and the run's N and D; without it the
main file's rows), with a 90% prediction interval and whether the small runs say it may be
trusted. `fit transfer` asks whether a tuned hyperparameter's optimum holds across N (muTransfer,
Yang et al. 2022; `analysis/transfer.py`): per N a quadratic in log P near the best trial, then
optimum ∝ N^e across N.

Output: a table, or with --json one object with stable keys. scaling: E, A, alpha, B, beta,
each with <name>_low and <name>_high (the bootstrap interval; null for a term not in the law),
and law, variables, convention, objective, n_points, n_inits, n_boot, ci, delta; with both
N and D also a, b, G (each with _low/_high), flops_per_token, frontier_reason and "frontier":
one object per budget with flops, N_opt, D_opt, L_opt, tokens_per_param (each with _low/_high),
trusted, reason. isoflop: the same a, b, G and frontier (one object per budget in the file),
residual_rms, reason (why there is no power law), "budgets" (the parabolas) and "backtest".
emergence:
threshold, low, high, reason, sharp, evidence, bracket, ... (see EmergenceFit); with
--group-col, "groups": a list of those objects, each with its "group" value. downstream: "groups"
(per group: loss_law, the step-1 fit with accepted/reasons; sigmoid, a, k, L0, b with _low/_high,
accepted, reasons; noise; largest_run) and "predictions" (per group and target: group, n, d, loss,
loss_low, loss_high, metric, metric_low, metric_high, extrapolation {n_ratio, d_ratio,
loss_beyond_range, loss_beyond_width}, predictable, reason). transfer: "groups" (per group:
optima [{n, optimum, low, high, at_edge, reason}], exponent, exponent_low, exponent_high,
transfers true/false/null, reason).

Exit codes: 0 fitted (a group without a threshold, a frontier without enough budgets, a forecast
refused, an undecided transfer: results, not errors), 2 bad input (missing file or column,
non-numeric values, too few points, a malformed --at).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


class InputError(Exception):
    """Input the fit cannot use; the message names the file or column."""


def add_fit_parser(sub: argparse._SubParsersAction) -> None:
    """Register `fit scaling|isoflop|emergence|downstream|transfer` on the grokscale subcommands."""
    p = sub.add_parser(
        "fit",
        help="fit a scaling law or an emergence threshold to any CSV (one row per run)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    kinds = p.add_subparsers(dest="fit_kind", required=True)
    s = kinds.add_parser("scaling", help="L(N, D) = E + A/N^alpha + B/D^beta (or L(N), L(D))")
    s.add_argument("file", help="CSV file, one row per run")
    s.add_argument("--n-col", help="column with N, the parameter count")
    s.add_argument("--d-col", help="column with D, the training set size")
    s.add_argument("--loss-col", required=True, help="column with the loss (> 0)")
    s.add_argument(
        "--convention",
        choices=("total", "non_embedding"),
        default="total",
        help="how N was counted (recorded in the result; default total)",
    )
    s.add_argument(
        "--flops",
        type=float,
        nargs="+",
        metavar="C",
        help="compute budgets for the frontier (default: 5 log-spaced over the runs' K*N*D)",
    )
    _add_common(s)
    s.set_defaults(fit_func=cmd_scaling)
    i = kinds.add_parser(
        "isoflop", help="approach 2: a parabola in log N per compute budget, N_opt(C) power law"
    )
    i.add_argument("file", help="CSV file, one row per run")
    i.add_argument("--n-col", required=True, help="column with N, the parameter count")
    i.add_argument("--flops-col", required=True, help="column with the run's compute budget C (FLOPs)")
    i.add_argument("--loss-col", required=True, help="column with the final loss")
    _add_common(i)
    i.set_defaults(fit_func=cmd_isoflop)
    e = kinds.add_parser("emergence", help="emergence threshold: sigmoid of a metric over log scale")
    e.add_argument("file", help="CSV file, one row per run")
    e.add_argument("--x-col", required=True, help="column with the scale (> 0), e.g. n_params")
    e.add_argument("--y-col", required=True, help="column with the metric, e.g. max_val_acc")
    e.add_argument("--group-col", help="fit once per value of this column, e.g. n_train")
    e.add_argument(
        "--chance", type=float, help="the metric at chance (the floor); default the lowest scale mean"
    )
    e.add_argument(
        "--best-value",
        type=float,
        default=1.0,
        help="the best possible value of the metric (default 1, an accuracy; 0 for a log-likelihood)",
    )
    e.add_argument(
        "--agg",
        choices=("mean", "best"),
        default="mean",
        help="how runs at one scale combine (default mean; best: the best run)",
    )
    e.add_argument("--lower-is-better", action="store_true", help="the metric improves downwards (a loss)")
    e.add_argument(
        "--n-boot", type=int, default=200, help="bootstrap resamples for the interval (default 200)"
    )
    e.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    e.add_argument("--json", action="store_true", help="print JSON instead of a table")
    e.set_defaults(fit_func=cmd_emergence)
    ds = kinds.add_parser(
        "downstream", help="two-step forecast: loss from (N, D), then the metric from the loss"
    )
    ds.add_argument("file", help="CSV file, one row per finished run (N, D, the task's loss)")
    ds.add_argument("--n-col", required=True, help="column with N, the parameter count")
    ds.add_argument("--d-col", required=True, help="column with D, the run's training set size")
    ds.add_argument("--loss-col", required=True, help="column with the task's loss (> 0)")
    ds.add_argument("--metric-col", required=True, help="column with the task's metric, e.g. an accuracy")
    ds.add_argument("--group-col", help="fit once per value of this column, e.g. a task name")
    ds.add_argument(
        "--chance", type=float, help="the metric at chance: fixes the sigmoid's floor b (else b is fitted)"
    )
    ds.add_argument(
        "--curves",
        metavar="CSV",
        help="every evaluation of the runs for step 2 (same column names, one row per "
        "checkpoint, N and D those of its run); default: the main file's rows",
    )
    ds.add_argument(
        "--step-col", help="column of --curves that orders a run's evaluations (default: file order)"
    )
    ds.add_argument(
        "--at",
        action="append",
        required=True,
        metavar="N:D",
        help="a target to forecast, e.g. 1e9:2e10 (repeatable)",
    )
    _add_boot(ds)
    ds.set_defaults(fit_func=cmd_downstream)
    t = kinds.add_parser("transfer", help="does a tuned hyperparameter's optimum hold across N (muTransfer)?")
    t.add_argument("file", help="CSV file, one row per trial")
    t.add_argument("--n-col", required=True, help="column with N, the parameter count")
    t.add_argument("--param-col", required=True, help="column with the hyperparameter (> 0), e.g. lr")
    t.add_argument("--loss-col", required=True, help="column with the trial's loss (lower is better)")
    t.add_argument("--group-col", help="check once per value of this column")
    t.add_argument(
        "--tolerance",
        type=float,
        default=None,
        help="|e| within which the optimum counts as transferring (default 0.1)",
    )
    _add_boot(t)
    t.set_defaults(fit_func=cmd_transfer)


def _add_boot(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--n-boot", type=int, default=200, help="bootstrap resamples for the intervals (default 200)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--flops-per-token",
        type=float,
        default=6.0,
        metavar="K",
        help="FLOPs per token per parameter: C = K*N*D (default 6, Kaplan et al. 2020)",
    )
    p.add_argument(
        "--n-boot", type=int, default=200, help="bootstrap resamples for the intervals (default 200)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run_fit(args: argparse.Namespace) -> int:
    """Run the chosen fit; bad input prints `error: ...` and returns 2."""
    try:
        return args.fit_func(args)
    except (InputError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def cmd_scaling(args: argparse.Namespace) -> int:
    from orchestrator.analysis.scaling import fit_power_law, fit_scaling_law

    if not args.n_col and not args.d_col:
        raise InputError("give --n-col, --d-col or both")
    if args.flops and not (args.n_col and args.d_col):
        raise InputError(
            "--flops needs both --n-col and --d-col: a one-variable law has no compute-optimal frontier"
        )
    cols = [c for c in (args.n_col, args.d_col) if c] + [args.loss_col]
    data = read_columns(args.file, cols)
    try:
        if args.n_col and args.d_col:
            fit = fit_scaling_law(
                data[args.n_col],
                data[args.d_col],
                data[args.loss_col],
                convention=args.convention,
                n_boot=args.n_boot,
                seed=args.seed,
            )
        else:
            variable, col = ("N", args.n_col) if args.n_col else ("D", args.d_col)
            fit = fit_power_law(
                data[col],
                data[args.loss_col],
                variable=variable,
                convention=args.convention if variable == "N" else None,
                n_boot=args.n_boot,
                seed=args.seed,
            )
    except ValueError as err:
        raise InputError(f"{args.file}: {err}") from err
    out = {"file": str(args.file), **fit.to_dict()}
    if fit.variables == ("N", "D"):
        out.update(_frontier_keys(fit, data[args.n_col] * data[args.d_col], args))
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"{out['law']}  ({args.file}, {out['n_points']} runs, N counted as {out['convention']})",
        title_justify="left",
    )
    for col in ("parameter", "value", f"{int(out['ci'] * 100)}% low", f"{int(out['ci'] * 100)}% high"):
        table.add_column(col)
    for name in ("E", "A", "alpha", "B", "beta"):
        if out[name] is not None:
            table.add_row(name, _num(out[name]), _num(out[f"{name}_low"]), _num(out[f"{name}_high"]))
    Console().print(table)
    print(
        f"Huber objective {out['objective']:.6g} (delta {out['delta']}), best of {out['n_inits']} starts, "
        f"{out['n_boot']} bootstrap fits"
    )
    if "frontier" in out:
        print_frontier(out, f"compute-optimal frontier of the law (C = {out['flops_per_token']:g}*N*D)")
    return 0


def _frontier_keys(fit, n_times_d, args: argparse.Namespace) -> dict:
    """a, b, G, flops_per_token, frontier_reason and frontier of the fitted law (approach 3)."""
    from orchestrator.analysis.frontier import loss_law_frontier

    if args.flops_per_token <= 0:
        raise InputError(f"--flops-per-token must be > 0, got {args.flops_per_token}")
    budgets = args.flops
    if not budgets:  # 3 significant digits: budgets a reader can quote
        span = args.flops_per_token * n_times_d
        budgets = [float(f"{c:.3g}") for c in np.geomspace(span.min(), span.max(), 5)]
    try:
        fr = loss_law_frontier(fit, budgets, flops_per_token=args.flops_per_token).to_dict()
    except ValueError as err:
        raise InputError(f"--flops: {err}") from err
    keys = [f"{k}{s}" for k in ("a", "b", "G") for s in ("", "_low", "_high")]
    return {
        **{k: fr[k] for k in keys},
        "flops_per_token": fr["flops_per_token"],
        "frontier_reason": fr["reason"],
        "frontier": fr["frontier"],
    }


def cmd_isoflop(args: argparse.Namespace) -> int:
    from orchestrator.analysis.backtest import extrapolation_backtest
    from orchestrator.analysis.isoflop import fit_isoflop

    data = read_columns(args.file, [args.n_col, args.flops_col, args.loss_col])
    kw = dict(flops_per_token=args.flops_per_token, n_boot=args.n_boot, seed=args.seed)
    try:
        fit = fit_isoflop(data[args.n_col], data[args.flops_col], data[args.loss_col], **kw)
        (backtest,) = extrapolation_backtest(
            data[args.n_col], data[args.flops_col], data[args.loss_col], predictors=("isoflop",), **kw
        )
    except ValueError as err:
        raise InputError(f"{args.file}: {err}") from err
    out = {"file": str(args.file), **fit.to_dict(), "backtest": backtest.to_dict()}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print_frontier(
        out,
        f"IsoFLOP minima ({args.file}, {len(data[args.n_col])} runs, "
        f"{len(out['budgets'])} budgets, C = {out['flops_per_token']:g}*N*D)",
    )
    bt = out["backtest"]
    if bt["reason"]:
        print(f"backtest: {bt['reason']}")
    else:
        print(
            f"backtest, fitted on the {bt['n_budgets']} smaller budgets, at C = {_num(bt['flops'])}: "
            f"N_opt {_num(bt['N_opt_predicted'])} predicted vs {_num(bt['N_opt_observed'])} observed "
            f"({bt['N_opt_error']:+.1%}); L_opt {_num(bt['L_opt_predicted'])} vs "
            f"{_num(bt['L_opt_observed'])} ({bt['L_opt_error']:+.1%})"
        )
    return 0


def print_frontier(out: dict, title: str) -> None:
    """The frontier points as a table, then the power law (or why there is none)."""
    from rich.console import Console
    from rich.table import Table

    pct = f"{int(out.get('ci', 0.95) * 100)}%"
    table = Table(title=title, title_justify="left")
    for col in ("C (FLOPs)", "N_opt", f"N_opt {pct}", "D_opt", "L_opt", "D/N"):
        table.add_column(col, no_wrap=True)
    for p in out["frontier"]:
        ci = "" if p["N_opt_low"] is None else f"{_num(p['N_opt_low'])}-{_num(p['N_opt_high'])}"
        flag = "" if p["reason"] is None else " *"
        table.add_row(
            _num(p["flops"]) + flag,
            _num(p["N_opt"]) or "none",
            ci,
            _num(p["D_opt"]),
            _num(p["L_opt"]),
            _num(p["tokens_per_param"]),
        )
    Console().print(table)
    for p in out["frontier"]:
        if p["reason"] is not None:
            print(f"* C = {_num(p['flops'])} not trusted: {p['reason']}")
    if out["a"] is None:
        print(f"no power law: {out.get('frontier_reason') or out.get('reason')}")
        return
    print(
        "  ".join(
            f"{k} = {_num(out[k])} [{_num(out[f'{k}_low'])}, {_num(out[f'{k}_high'])}]"
            for k in ("a", "b", "G")
        )
        + f"   (N_opt = G (C/{out['flops_per_token']:g})^a, D_opt = (C/{out['flops_per_token']:g})^b / G)"
    )


def cmd_emergence(args: argparse.Namespace) -> int:
    from orchestrator.analysis.emergence import emergence_threshold

    cols = [args.x_col, args.y_col] + ([args.group_col] if args.group_col else [])
    data = read_columns(args.file, cols, numeric=[args.x_col, args.y_col])
    if (data[args.x_col] <= 0).any():
        raise InputError(f"{args.file}: column {args.x_col!r} must be > 0 (the fit is in log scale)")
    if len(set(data[args.x_col])) < 3:
        raise InputError(
            f"{args.file}: column {args.x_col!r} has {len(set(data[args.x_col]))} distinct value(s); "
            f"a threshold needs at least 3 scales"
        )
    kwargs = dict(
        chance=args.chance,
        best_value=args.best_value,
        agg=args.agg,
        higher_is_better=not args.lower_is_better,
        n_boot=args.n_boot,
        seed=args.seed,
    )
    head = {"file": str(args.file), "x_col": args.x_col, "y_col": args.y_col}
    if args.group_col:
        groups = []
        for value in sorted(set(data[args.group_col]), key=_sort_key):
            mask = data[args.group_col] == value
            fit = emergence_threshold(data[args.x_col][mask], data[args.y_col][mask], **kwargs)
            groups.append({"group": _plain(value), **fit.to_dict()})
        out = {**head, "group_col": args.group_col, "groups": groups}
        rows = groups
    else:
        out = {**head, **emergence_threshold(data[args.x_col], data[args.y_col], **kwargs).to_dict()}
        rows = [out]
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"emergence of {args.y_col} over {args.x_col} ({args.file})", title_justify="left")
    for col in ([args.group_col] if args.group_col else []) + [
        "threshold",
        "95% interval",
        "between scales",
        "sharp jump",
    ]:
        table.add_column(col)
    for r in rows:
        bracket = "" if r["bracket"] is None else f"{_num(r['bracket'][0])} - {_num(r['bracket'][1])}"
        ci = "" if r["low"] is None else f"{_num(r['low'])} - {_num(r['high'])}"
        if r["threshold"] is None:
            sharp = ""
        elif r["sharp"]:
            sharp = f"yes ({r['evidence']:.3g})"
        else:
            sharp = f"no ({r['evidence']:.3g})"
        table.add_row(
            *([str(r["group"])] if args.group_col else []), _num(r["threshold"]) or "none", ci, bracket, sharp
        )
    Console().print(table)
    for r in rows:
        if r["reason"]:
            print(
                (f"{args.group_col} = {r['group']}: " if args.group_col else "")
                + f"no threshold: {r['reason']}"
            )
    print("sharp jump: the AIC evidence for a sigmoid over a smooth power law (>= 6: sharp)")
    return 0


def cmd_downstream(args: argparse.Namespace) -> int:
    from orchestrator.analysis.downstream import Evaluations, forecast_downstream

    targets = [parse_target(t) for t in args.at]
    group = [args.group_col] if args.group_col else []
    numeric = [args.n_col, args.d_col, args.loss_col]
    main_cols = numeric + ([] if args.curves else [args.metric_col])
    runs = read_columns(args.file, main_cols + group, numeric=main_cols)
    if args.curves:
        ev_cols = numeric + [args.metric_col] + ([args.step_col] if args.step_col else [])
        curves = read_columns(args.curves, ev_cols + group, numeric=ev_cols)
    elif args.step_col:
        raise InputError("--step-col orders the evaluations of --curves: give --curves too")
    else:
        curves = runs
    groups, predictions = [], []
    for value, rows, where in _groups(runs, args.group_col):
        ev_rows = _rows_of(curves, args.group_col, value)
        ev = Evaluations(
            n=curves[args.n_col][ev_rows],
            d=curves[args.d_col][ev_rows],
            loss=curves[args.loss_col][ev_rows],
            metric=curves[args.metric_col][ev_rows],
            step=curves[args.step_col][ev_rows] if args.step_col else None,
        )
        try:
            fc = forecast_downstream(
                runs[args.n_col][rows],
                runs[args.d_col][rows],
                runs[args.loss_col][rows],
                ev,
                targets,
                chance=args.chance,
                n_boot=args.n_boot,
                seed=args.seed,
                group=_plain(value),
            )
        except ValueError as err:
            raise InputError(f"{args.file}{where}: {err}") from err
        groups.append(fc.to_dict())
        predictions.extend(p.to_dict() for p in fc.predictions)
    out = {
        "file": str(args.file),
        "curves": args.curves,
        "group_col": args.group_col,
        "groups": groups,
        "predictions": predictions,
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print_downstream(out)
    return 0


def print_downstream(out: dict) -> None:
    """Each group's two fits, one line each, then the forecasts as a table and why any is refused."""
    from rich.console import Console
    from rich.table import Table

    grouped = out["group_col"] is not None
    for g in out["groups"]:
        law, sig, noise = g["loss_law"], g["sigmoid"], g["noise"]
        head = f"{out['group_col']} = {g['group']}: " if grouped else ""
        print(
            f"{head}step 1, {law['law']} on {law['n_points']} runs ({int(round(law['ci'] * 100))}% "
            "intervals): "
            + _estimates(law, ("E", "A", "alpha", "B", "beta"))
            + ("" if law["accepted"] else f"; REJECTED: {'; '.join(law['reasons'])}")
        )
        b = f"b = {_num(sig['b'])}" + (" (fixed: chance)" if sig["b_fixed"] else "")
        print(
            f"{head}step 2, {sig['form']} on {sig['n_points']} evaluations: "
            + _estimates(sig, ("a", "k", "L0"))
            + f", {b}, R^2 {_num(sig['r2'])}, "
            f"checkpoint noise {_num(noise['std'])} ({noise['source']})"
            + ("" if sig["accepted"] else f"; REJECTED: {'; '.join(sig['reasons'])}")
        )
    table = Table(
        title=f"forecast ({out['file']}; 90% prediction intervals; N x, D x: beyond the largest run)",
        title_justify="left",
    )
    for col in ([out["group_col"]] if grouped else []) + [
        "N",
        "D",
        "loss",
        "loss 90%",
        "metric",
        "metric 90%",
        "N x",
        "D x",
        "trusted",
    ]:
        table.add_column(col, no_wrap=col in ("N", "D", "loss", "metric", "trusted"))
    for p in out["predictions"]:
        ex = p["extrapolation"]
        table.add_row(
            *([str(p["group"])] if grouped else []),
            _num(p["n"]),
            _num(p["d"]),
            _num(p["loss"]),
            _range(p["loss_low"], p["loss_high"]),
            _num(p["metric"]),
            _range(p["metric_low"], p["metric_high"]),
            _num(ex["n_ratio"]),
            _num(ex["d_ratio"]),
            "yes" if p["predictable"] else "no",
        )
    Console().print(table)
    for p in out["predictions"]:
        if p["reason"]:
            where = f"{out['group_col']} = {p['group']}, " if grouped else ""
            print(f"{where}N:D = {_num(p['n'])}:{_num(p['d'])} not predictable: {p['reason']}")


def parse_target(text: str) -> tuple[float, float]:
    """`N:D` (e.g. 1e9:2e10) as two numbers > 0."""
    parts = text.split(":")
    try:
        n, d = (float(p) for p in parts) if len(parts) == 2 else (None, None)
    except ValueError:
        n = d = None
    if n is None or not (np.isfinite(n) and np.isfinite(d) and n > 0 and d > 0):
        raise InputError(f"--at {text!r}: expected N:D, two finite numbers > 0 (e.g. 1e9:2e10)")
    return n, d


def cmd_transfer(args: argparse.Namespace) -> int:
    from orchestrator.analysis.transfer import TOLERANCE, transfer_check

    tolerance = TOLERANCE if args.tolerance is None else args.tolerance
    numeric = [args.n_col, args.param_col, args.loss_col]
    data = read_columns(args.file, numeric + ([args.group_col] if args.group_col else []), numeric=numeric)
    groups = []
    for value, rows, where in _groups(data, args.group_col):
        try:
            res = transfer_check(
                data[args.n_col][rows],
                data[args.param_col][rows],
                data[args.loss_col][rows],
                param_name=args.param_col,
                tolerance=tolerance,
                n_boot=args.n_boot,
                seed=args.seed,
            )
        except ValueError as err:
            raise InputError(f"{args.file}{where}: {err}") from err
        groups.append({"group": _plain(value), **res.to_dict()})
    out = {
        "file": str(args.file),
        "param_col": args.param_col,
        "group_col": args.group_col,
        "tolerance": tolerance,
        "groups": groups,
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    for g in groups:
        head = f" ({args.group_col} = {g['group']})" if args.group_col else ""
        table = Table(
            title=f"optimum {args.param_col} per N{head} ({args.file}; "
            f"{int(round(g['ci'] * 100))}% intervals)",
            title_justify="left",
        )
        for col in ("N", f"optimum {args.param_col}", "interval", "at edge"):
            table.add_column(col, no_wrap=True)
        for o in g["optima"]:
            table.add_row(
                _num(o["n"]),
                _num(o["optimum"]) or "none",
                _range(o["low"], o["high"]),
                "yes" if o["at_edge"] else "",
            )
        Console().print(table)
        print(g["reason"])
    return 0


def _groups(data: dict, group_col: str | None):
    """(value, row mask, " (G = value)") per value of group_col; one (None, all rows, "") without it."""
    if group_col is None:
        yield None, _rows_of(data, None, None), ""
        return
    for value in sorted(set(data[group_col]), key=_sort_key):
        yield value, data[group_col] == value, f" ({group_col} = {value})"


def _rows_of(data: dict, group_col: str | None, value) -> np.ndarray:
    if group_col is None:
        return np.ones(len(next(iter(data.values()))), dtype=bool)
    return data[group_col] == value


def _estimates(out: dict, names: tuple[str, ...]) -> str:
    """`name = value [low, high]` for each of names."""
    return ", ".join(
        f"{k} = {_num(out[k])} [{_num(out[f'{k}_low'])}, {_num(out[f'{k}_high'])}]" for k in names
    )


def read_columns(path: str, cols: list[str], numeric: list[str] | None = None):
    """The named columns of a CSV as a DataFrame; `numeric` (default all) must parse as numbers.
    Rows with an empty cell in any of them are dropped."""
    import pandas as pd

    file = Path(path)
    if not file.is_file():
        raise InputError(f"{path}: no such file")
    try:
        table = pd.read_csv(file)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not a readable CSV ({err})") from err
    missing = [c for c in cols if c not in table.columns]
    if missing:
        raise InputError(
            f"{path}: no column {', '.join(repr(c) for c in missing)}; "
            f"the columns are {', '.join(map(str, table.columns))}"
        )
    table = table[cols].dropna()
    for col in cols if numeric is None else numeric:
        values = pd.to_numeric(table[col], errors="coerce")
        bad = values.isna()
        if bad.any():
            row = int(bad.to_numpy().argmax())
            raise InputError(
                f"{path}: column {col!r} is not numeric (row {table.index[row] + 2} of the file: "
                f"{table[col].iloc[row]!r})"
            )
        table[col] = values.astype(float)
    if table.empty:
        raise InputError(f"{path}: no row has values in all of {', '.join(cols)}")
    return {c: table[c].to_numpy() for c in cols}


def _num(value) -> str:
    return "" if value is None else f"{value:.4g}"


def _range(low, high) -> str:
    return "" if low is None or high is None else f"{_num(low)} - {_num(high)}"


def _plain(value):
    return value.item() if hasattr(value, "item") else value


def _sort_key(value):
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))
