"""Write docs/results/isoflop_charlm.md from a real `grokscale run sweeps/isoflop_charlm.yaml`.

    cd docs/results/isoflop_charlm/store && grokscale run ../../../../sweeps/isoflop_charlm.yaml
    python docs/results/isoflop_page.py docs/results/isoflop_charlm/store

The report is made again from the study's MLflow store (its plots go next to the page) and the
page's numbers are read from the report's results.json: nothing on the page is typed by hand but
the published values it is compared with.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

from orchestrator.analysis.isoflop import fit_isoflop
from orchestrator.report.report import build_report
from orchestrator.store.results import load_results

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from study_page import timing  # noqa: E402 - docs/results is not a package

# Published exponents of N_opt ∝ C^a: Hoffmann et al. 2022 (Table 2, approaches 1, 2, 3),
# Kaplan et al. 2020 (0.73), Porian et al. 2024 (about 0.5 once lr, warmup and beta2 are tuned).
PUBLISHED = [
    ("Hoffmann et al. 2022, approach 1", 0.50),
    ("Hoffmann et al. 2022, approach 2", 0.49),
    ("Hoffmann et al. 2022, approach 3", 0.46),
    ("Kaplan et al. 2020", 0.73),
    ("Porian et al. 2024, tuned", 0.50),
]


def _num(v, fmt: str = ".3g") -> str:
    return "n/a" if v is None else format(v, fmt)


def _interval(d: dict, key: str, fmt: str = ".3g") -> str:
    if d.get(key) is None:
        return "n/a"
    return f"{_num(d[key], fmt)} [{_num(d.get(key + '_low'), fmt)}, {_num(d.get(key + '_high'), fmt)}]"


def _agrees(a: dict, b: dict) -> str:
    """Do two approaches' exponents agree: do their 95% intervals overlap?"""
    if a.get("a") is None or b.get("a") is None or None in (a.get("a_low"), b.get("a_low")):
        return "cannot tell (an approach has no exponent)"
    overlap = a["a_low"] <= b["a_high"] and b["a_low"] <= a["a_high"]
    return "yes: their 95% intervals overlap" if overlap else "no: their 95% intervals do not overlap"


def findings(iso: dict, env: dict, law: dict) -> list[str]:
    """The page's reading of its own numbers: which budgets' minima lie inside the sizes, where
    the others lie, and what that means for the exponent (worded from the results, not typed)."""
    points = iso.get("budgets") or []
    inside = [p for p in points if p.get("bracketed")]
    out = [f"- {len(inside)} of {len(points)} budgets have their loss minimum inside the sampled sizes."]
    if inside:
        tpp = {f["flops"]: f.get("tokens_per_param") for f in iso.get("frontier") or []}
        out.append(
            "- The bracketed optima: "
            + "; ".join(
                f"N_opt {_interval(p, 'N_opt')} at {p['flops']:.2g} FLOPs ({_num(tpp.get(p['flops']))} "
                "tokens per parameter)"
                for p in inside
            )
            + ". Chinchilla's rule of thumb is ~20 tokens per parameter."
        )
    for p in points:
        if p.get("N_opt") is None:
            out.append(f"- At {p['flops']:.2g} FLOPs there is no minimum: {p.get('reason')}.")
            continue
        if p.get("bracketed"):
            continue
        side = "below the smallest" if p["N_opt"] < p["n_min"] else "above the largest"
        out.append(
            f"- At {p['flops']:.2g} FLOPs the fitted minimum (N_opt ~ {p['N_opt']:.3g}) lies {side} "
            "size: that budget says only that N_opt is beyond the grid's edge there."
        )
    if iso.get("a") is None:
        out.append(
            f"- Approach 2 gives no exponent: {iso.get('reason')}. That is the answer the data "
            "supports; a number fitted through unbracketed minima would be extrapolated, not measured."
        )
    else:
        out.append(
            f"- Approach 2 gives a = {_interval(iso, 'a')} from {iso.get('n_fit')} budgets: the optimal "
            f"size grows as C^{iso['a']:.2f}, and the optimal data as C^{iso['b']:.2f}."
        )
    if env.get("a") is not None:
        width = env["a_high"] - env["a_low"] if env.get("a_low") is not None else None
        out.append(
            f"- Approach 1 (the envelope of every run's curve) gives a = {_interval(env, 'a')}"
            + (
                ", an interval too wide to say more than its sign."
                if width is not None and width > 0.5
                else "."
            )
        )
    if not law:
        out.append(
            "- Approach 3 has no L(N, D) law to work from: the fit was rejected (reasons in the table). "
            "On a one-pass IsoFLOP grid N and D move together along each budget, so the law's two "
            "exponents are poorly separated by design; Hoffmann et al. fit it on many more runs."
        )
    return out


def design(config: dict) -> str:
    """The grid as the study recorded it (its config logged with the parent run)."""
    grid, search, model = config.get("grid") or {}, config.get("search") or {}, config.get("model") or {}
    shapes = [n.get("d_model") for n in grid.get("n") or [] if isinstance(n, dict)]
    budgets = grid.get("flops") or []
    lr = (search.get("space") or {}).get("train.lr") or {}
    rates = (
        f"the learning rate from the grid {lr['choices']}"
        if lr.get("choices")
        else (
            "the learning rate tuned per cell "
            f"({search.get('trials_per_cell')} {search.get('sampler')} trials)"
        )
    )
    window = grid.get("tokens_per_param")
    kept = (
        f", each budget keeping the sizes that train {window.get('min') or 0:g} to "
        f"{window.get('max') or float('inf'):g} tokens per parameter (grid.tokens_per_param)"
        if window
        else ""
    )
    return (
        f"{len(shapes)} model sizes (d_model {', '.join(map(str, shapes))}; {model.get('n_layer')} layers) x "
        f"{len(budgets)} training budgets ({min(budgets):.2g} to {max(budgets):.2g} FLOPs){kept}, {rates}"
    )


def rate_edges(runs, config: dict) -> str | None:
    """How often each cell's best run used the learning-rate grid's largest or smallest value:
    an optimum at the grid's edge means the rate, too, was not bracketed there."""
    choices = ((config.get("search") or {}).get("space") or {}).get("train.lr", {}).get("choices")
    col = "param.train.lr"
    if not choices or col not in runs or "min_val_loss" not in runs:
        return None
    done = runs.dropna(subset=["min_val_loss"])
    best = done.loc[done.groupby("cell")["min_val_loss"].idxmin()]
    top, low = (
        (best[col].astype(float) == max(choices)).sum(),
        (best[col].astype(float) == min(choices)).sum(),
    )
    return (
        f"- The best learning rate of a cell is the grid's largest ({max(choices):g}) in {top} of "
        f"{len(best)} cells and its smallest in {low}: "
        + (
            "the rate's optimum lies above the grid in most cells, so "
            "every size trained below its best rate, and not necessarily by the same amount (the best rate "
            "usually falls with width), which can move the minima. A wider rate grid is the next run."
            if top > len(best) / 2
            else "the grid brackets the rate in most cells."
        )
        + _edge_budgets(best, col, max(choices))
    )


def _edge_budgets(best, col: str, top: float) -> str:
    """The budgets at which every size's best rate was the grid's largest: there the whole
    budget trained below its best rate, which raises its losses but moves its minimum less."""
    budget = best["cell"].str.extract(r"_C=([0-9.e+-]+)$")[0].astype(float)
    at_top = best[col].astype(float) == top
    edge = sorted(c for c, all_top in at_top.groupby(budget).all().items() if all_top)
    return (
        f" At {', '.join(f'{c:.2g}' for c in edge)} FLOPs every size's best rate was the largest: that "
        "budget's rates were not bracketed, and its losses are upper bounds."
        if edge
        else ""
    )


def other_convention(runs, config: dict, iso: dict) -> str | None:
    """Approach 2 again on the same runs with N counted the other way (total vs non-embedding).
    At these sizes the embeddings are most of a model (d_model 8: 4.6k of 6.3k parameters), and
    how N is counted moves the exponent: Pearce & Song 2024 ("Reconciling Kaplan and Chinchilla
    scaling laws") and Porian et al. 2024 trace much of Kaplan's 0.73 against Chinchilla's 0.5 to
    counting non-embedding parameters at small scale."""
    grid = config.get("grid") or {}
    used = grid.get("n_convention", "total")
    other, col = (
        ("non_embedding", "n_params_non_embedding") if used == "total" else ("total", "n_params_total")
    )
    if iso.get("a") is None or col not in runs or "min_val_loss" not in runs or not grid.get("flops"):
        return None
    done = runs.dropna(subset=["min_val_loss", col, "flops"])
    best = done.loc[done.groupby("cell")["min_val_loss"].idxmin().to_numpy()]
    budgets = np.array(grid["flops"], dtype=float)
    run_flops = best["flops"].astype(float).to_numpy()
    budget = budgets[np.argmin(np.abs(np.log(run_flops[:, None]) - np.log(budgets[None, :])), axis=1)]
    fit = fit_isoflop(
        best[col].to_numpy(float), budget, best["min_val_loss"].to_numpy(float)
    ).frontier.to_dict()
    if fit.get("a") is None:
        return f"- Counted as {other} parameters, approach 2 gives no exponent: {fit.get('reason')}."
    between = min(iso["a"], fit["a"]) < 0.5 < max(iso["a"], fit["a"])
    return (
        f"- How N is counted moves the exponent. The same runs with N counted as {other} parameters give "
        f"a = {_interval(fit, 'a')}, against {_interval(iso, 'a')} as {used}: at these sizes the embeddings "
        f"are most of a model (d_model 8: 4.6k of its 6.3k parameters), and their share falls as models "
        f"grow, so the two counts grow at different rates. "
        + ("Hoffmann et al.'s ~0.5 lies between the two. " if between else "")
        + "Pearce & Song (2024) and Porian et al. (2024) trace much of the gap between Kaplan et al.'s 0.73 "
        "and Chinchilla's 0.5 to this choice at small scale; Chinchilla counts every parameter, at sizes "
        "where the embeddings are a small share. At 1e10-1e11 FLOPs neither count is Chinchilla's regime, so "
        "neither a should be expected to equal 0.5."
    )


def page(results: dict, wall: str, design: str, extra: list[str] = ()) -> str:
    iso, law, env = (
        results.get(k) or {} for k in ("frontier_isoflop", "frontier_loss_law", "frontier_envelope")
    )
    no_law = "the L(N, D) fit was rejected or not made: " + str(
        (results.get("skipped") or {}).get("scaling_fit")
    )
    lines = [
        "# IsoFLOP study: byte-level language modelling of the Python standard library",
        "",
        "Made by `docs/results/isoflop_page.py` from a real `grokscale run sweeps/isoflop_charlm.yaml` "
        f"on the 2-core dev machine ({wall}). The study: {design}, one pass over the data, a cosine "
        "schedule matched to each run. What was shrunk, and why: budgets ~1e11 FLOPs instead of "
        "Chinchilla's 1e18-1e21, because the corpus (4.7M bytes) and 2 cores bound them; the sizes "
        "and the window are placed from the earlier runs' optima (see the comment at the top of the "
        "study file, which also says why the learning rate is a grid, not a search).",
        "",
        "![IsoFLOP curves](isoflop_charlm/isoflop_curves.png)",
        "",
        "![Frontier](isoflop_charlm/frontier.png)",
        "",
        "## Optimal model size per budget (approach 2)",
        "",
        "| C (FLOPs) | N_opt | D_opt (tokens) | L_opt (nats/byte) | tokens per parameter | trusted |",
        "|---|---|---|---|---|---|",
    ]
    for p in iso.get("frontier", []):
        lines.append(
            f"| {p['flops']:.3g} | {_interval(p, 'N_opt')} | {_interval(p, 'D_opt')} | "
            f"{_interval(p, 'L_opt', '.4f')} | {_interval(p, 'tokens_per_param')} | "
            f"{'yes' if p.get('trusted') else 'no: ' + str(p.get('reason'))} |"
        )
    lines += [
        "",
        "## The exponent a of N_opt ∝ C^a",
        "",
        "| approach | a, 95% interval | b (D_opt ∝ C^b) | note |",
        "|---|---|---|---|",
        f"| 1: envelope of training curves | {_interval(env, 'a')} | {_interval(env, 'b')} | "
        f"{env.get('reason') or ''} |",
        f"| 2: IsoFLOP parabolas | {_interval(iso, 'a')} | {_interval(iso, 'b')} | "
        f"{iso.get('reason') or ''} |",
        f"| 3: from L(N, D) | {_interval(law, 'a')} | {_interval(law, 'b')} | "
        f"{law.get('reason') or ('' if law else no_law)} |",
        "",
        f"Approaches 2 and 3 agree? {_agrees(iso, law)}.",
        "",
        "| claim in the literature | a | what grokscale measured (approach 2) | agrees? |",
        "|---|---|---|---|",
    ]
    for who, a in PUBLISHED:
        if iso.get("a_low") is None:
            ok = "n/a"
        elif iso["a_low"] <= a <= iso["a_high"]:
            ok = "yes"
        else:
            ok = "no"
        lines.append(f"| {who} | {a} | {_interval(iso, 'a')} | {ok} |")
    lines += [
        "",
        "## What this run shows",
        "",
        *findings(iso, env, law),
        *extra,
        "",
        "## Extrapolation backtest",
        "",
        "Fit every budget but the largest, predict the largest budget's optimum.",
        "",
        "| predictor | N_opt predicted | N_opt observed | error | L_opt predicted | L_opt observed | error "
        "| note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for b in results.get("frontier_backtest") or []:
        lines.append(
            f"| {b['approach']} | {_num(b.get('N_opt_predicted'))} | {_num(b.get('N_opt_observed'))} | "
            f"{_num(b.get('N_opt_error'), '+.1%')} | {_num(b.get('L_opt_predicted'), '.4f')} | "
            f"{_num(b.get('L_opt_observed'), '.4f')} | {_num(b.get('L_opt_error'), '+.1%')} | "
            f"{b.get('reason') or ''} |"
        )
    lines += ["", "Raw numbers: [isoflop_charlm/results.json](isoflop_charlm/results.json).", ""]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("store", help="the folder the study ran in (mlflow.db inside)")
    p.add_argument(
        "--wall", help="how long the study took, for the page (default: from its MLflow parent run)"
    )
    args = p.parse_args(argv)
    uri = f"sqlite:///{Path(args.store).resolve() / 'mlflow.db'}"
    res = load_results(uri, "isoflop_charlm")
    if args.wall is None:
        took = timing(uri, res.parent_run_id)
        args.wall = (
            f"{took['wall_s'] / 60:.1f} min wall, {took['runs']} runs"
            if took["wall_s"]
            else f"{took['runs']} runs; the study's wall time is not recorded (its parent run has no end)"
        )
    out = HERE / "isoflop_charlm"
    report = build_report(res, out / "report")
    for name in ("isoflop_curves", "frontier"):
        if name in report.plots:
            shutil.copy(report.plots[name], out / f"{name}.png")
    shutil.copy(out / "report" / "results.json", out / "results.json")
    shutil.rmtree(out / "report")
    (HERE / "isoflop_charlm.md").write_text(
        page(
            report.results,
            args.wall,
            design(res.config),
            [
                line
                for line in [
                    rate_edges(res.runs, res.config),
                    other_convention(res.runs, res.config, report.results.get("frontier_isoflop") or {}),
                ]
                if line
            ],
        )
    )
    print(f"wrote {HERE / 'isoflop_charlm.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
