"""The report's sections on emergence, grokking, the mirage check, regularization and grid
refinement: each reads the Inputs, draws its figures into the Report and records its numbers in
`results`."""

from __future__ import annotations

import pandas as pd

from orchestrator.analysis import (
    CriticalSizes,
    cell_regularization,
    critical_sizes,
    curve_events,
    mirage_checks,
    phase_regions,
)
from orchestrator.report.document import Inputs, Report
from orchestrator.report.grokking_plots import (
    axis_is_log,
    phase_facets,
    plot_grokking_curves,
    plot_phase_diagram,
)
from orchestrator.report.plots import plot_emergence_heatmap, plot_metric_vs_scale, plot_mirage
from orchestrator.store import names
from orchestrator.store.results import THRESHOLDS


def emergence(inp: Inputs, report: Report, results: dict) -> CriticalSizes | None:
    """Where the metric leaves chance, over N at each D and over D at each N."""
    if inp.usable.empty:
        report.skipped["emergence"] = "no completed runs"
        return None
    critical = critical_sizes(
        inp.usable, metric=inp.metric, n_col=inp.n_col, d_col=inp.d_col, chance=inp.chance
    )
    results["critical_sizes"] = critical.to_dict()
    for axis, lines in (("D_star", critical.d_star), ("N_star", critical.n_star)):
        other = "N" if axis == "D_star" else "D"
        for at, fit in lines:
            if fit.threshold is not None:
                report.metric(f"{axis}/{other}_{at:g}", fit.threshold)
    report.draw(
        "emergence_heatmap",
        plot_emergence_heatmap,
        inp.usable,
        inp.out / "emergence_heatmap.png",
        metric=inp.metric,
        n_col=inp.n_col,
        d_col=inp.d_col,
        critical=critical,
    )
    if inp.usable[inp.n_col].nunique() < 2:  # one N: every point on one vertical line, nothing to read
        report.skipped["metric_vs_n"] = "one model size: the metric over N needs 2 or more"
    else:
        report.draw(
            "metric_vs_n",
            plot_metric_vs_scale,
            inp.usable,
            inp.out / "metric_vs_n.png",
            metric=inp.metric,
            x_col=inp.n_col,
            group_col=inp.d_col,
            fits=dict(critical.n_star),
        )
    return critical


def grokking(inp: Inputs, report: Report, results: dict) -> pd.DataFrame:
    """Events and phase of every run from its curves; the classic picture per cell."""
    if inp.curves.empty:
        report.skipped["grokking"] = "no curves recorded"
        return pd.DataFrame()
    events = run_events(inp.curves, inp.usable)
    phases = inp.usable.merge(events, on="run_id", how="inner", suffixes=("", "_curve"))
    results["phases"] = phases["phase"].value_counts().to_dict() if "phase" in phases else {}
    # The lines drawn are the thresholds most runs used (all of them, unless a study searched them).
    train_t, val_t = (float(inp.runs[col].mode().iloc[0]) for col in THRESHOLDS)
    report.draw(
        "grokking_curves",
        plot_grokking_curves,
        inp.curves,
        inp.out / "grokking_curves.png",
        runs=inp.runs,
        train_threshold=train_t,
        val_threshold=val_t,
    )
    train = inp.config.get("train") or {}
    wd, lr = f"{names.PARAM_SEARCHED_PREFIX}train.weight_decay", f"{names.PARAM_SEARCHED_PREFIX}train.lr"
    for col, fixed in ((wd, train.get("weight_decay", 1.0)), (lr, train.get("lr", 1e-3))):
        if col not in phases:  # not searched: every run had the study's fixed value
            phases[col] = float(fixed)
    results["phase_regions"] = {}
    for name, y_col, facet_col in (("phase_wd_x_d", inp.d_col, inp.n_col), ("phase_wd_x_lr", lr, inp.d_col)):
        log_x, log_y = searched_log(inp.config, wd), searched_log(inp.config, y_col)
        flat = any(col not in phases or phases[col].nunique() < 2 for col in (wd, y_col))
        # An axis the study never varied has no plane to fill: the figure is skipped, and so are its regions.
        regions = {} if flat else regions_by_facet(phases, wd, y_col, facet_col, log_x, log_y)
        results["phase_regions"][name] = {str(k): r.to_dict() for k, r in regions.items()}
        report.draw(
            name,
            plot_phase_diagram,
            phases,
            inp.out / f"{name}.png",
            x_col=wd,
            y_col=y_col,
            facet_col=facet_col,
            log_x=log_x,
            log_y=log_y,
            regions=regions,
        )
    return phases


def searched_log(config: dict, col: str) -> bool | None:
    """Whether a searched column (`param.<dotted path>`) was searched on a log scale, from the
    study's search space; None for an axis that was not searched (the figure then decides)."""
    space = (config.get("search") or {}).get("space") or {}
    entry = (
        space.get(col.removeprefix(names.PARAM_SEARCHED_PREFIX))
        if col.startswith(names.PARAM_SEARCHED_PREFIX)
        else None
    )
    return bool(entry.get("log", False)) if isinstance(entry, dict) and "low" in entry else None


def regions_by_facet(
    phases: pd.DataFrame, x_col: str, y_col: str, facet_col: str, log_x: bool | None, log_y: bool | None
) -> dict:
    """Phase regions (analysis/phase_regions.py) per panel of the phase diagram, each axis in the
    space it was searched in (an axis not searched: log when its values span a decade)."""
    if "phase" not in phases or x_col not in phases or y_col not in phases:
        return {}
    data = phases.assign(
        _x=pd.to_numeric(phases[x_col], errors="coerce"), _y=pd.to_numeric(phases[y_col], errors="coerce")
    ).dropna(subset=["_x", "_y", "phase"])
    if data.empty:
        return {}
    lx, ly = axis_is_log(data["_x"], log_x), axis_is_log(data["_y"], log_y)  # the figure's own scales
    out = {}
    for value, part in phase_facets(data, facet_col):
        out[value] = phase_regions(
            part["_x"].to_numpy(), part["_y"].to_numpy(), part["phase"].to_numpy(), log_x=lx, log_y=ly
        )
    return out


def run_events(curves: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Grokking events and phase of each run from its curves, under the thresholds its own
    trainer used (the `train_threshold` and `val_threshold` columns of `runs`): with the
    defaults, a study with `val_threshold: 0.9` would get phases that contradict the events its
    runs recorded."""
    frames = []
    for (train_t, val_t), part in runs.groupby(list(THRESHOLDS), sort=False):
        mine = curves[curves["run_id"].isin(part["run_id"])]
        if not mine.empty:
            frames.append(curve_events(mine, train_threshold=float(train_t), val_threshold=float(val_t)))
    return pd.concat(frames, ignore_index=True) if frames else curve_events(curves.iloc[:0])


def mirage(inp: Inputs, report: Report, results: dict) -> None:
    """The discontinuous metric against its continuous counterparts, over N at each D."""
    usable = inp.usable
    pairs = [
        (p, c)
        for p, c in (
            ("val_acc", "val_token_acc"),
            ("val_acc", "val_answer_logprob"),
            ("val_acc", "val_p_answer"),
        )
        if p in usable and c in usable and usable[c].notna().any()
    ]
    if not pairs or usable.empty:
        report.skipped["mirage"] = "no continuous counterpart of the accuracy was recorded"
        return
    n_values = usable[inp.n_col].nunique() if inp.n_col in usable else 0
    if n_values < 3:  # the check fits a threshold over N under each metric: one row per D would only say so
        report.skipped["mirage"] = (
            f"the mirage check compares thresholds over N; this study has {n_values} "
            f"value(s) of N, a threshold needs 3"
        )
        return
    best_values = {"val_answer_logprob": 0.0, "val_p_answer": 1.0, "val_token_acc": 1.0, "val_acc": 1.0}
    checks = mirage_checks(
        usable,
        x_col=inp.n_col,
        group_col=inp.d_col,
        pairs=tuple(pairs[:2]),
        best_values=best_values,
        chance_discontinuous=inp.chance,
    )
    results["mirage"] = [c.to_dict() for c in checks]
    for c in checks:
        disc = c.discontinuous
        if disc.threshold is not None and disc.sharp is None:
            continue  # the data cannot decide whether the jump is sharp: no number is better than a guess
        report.metric(
            f"mirage/{c.continuous_metric}/D_{c.group:g}/emergent_discontinuous",
            float(disc.threshold is not None and bool(disc.sharp)),
        )
    if checks:
        # Draw the check at the largest D that emerged under the discontinuous metric, else the largest D.
        shown = max(checks, key=lambda c: (c.discontinuous.threshold is not None, c.group or 0))
        part = usable[usable[inp.d_col] == shown.group] if shown.group is not None else usable
        report.draw(
            "mirage",
            plot_mirage,
            shown,
            part[inp.n_col].to_numpy(float),
            part[shown.discontinuous_metric].to_numpy(float),
            part[shown.continuous_metric].to_numpy(float),
            inp.out / "mirage.png",
            x_col=inp.n_col,
        )


def regularization(inp: Inputs, results: dict) -> list:
    """The best trial and the importance of each searched value, per cell."""
    objective = (inp.config.get("objectives") or [{"metric": "max_val_acc", "direction": "maximize"}])[0]
    if objective["metric"] not in inp.usable:
        return []
    regs = cell_regularization(inp.usable, objective=objective["metric"], direction=objective["direction"])
    results["regularization"] = [r.to_dict() for r in regs]
    return regs


def refinement(refine: dict | None, inp: Inputs, report: Report, results: dict) -> str:
    """What grid.refine added and why each line stopped (the parent run's refine.json, read by
    results.py), into results["refine"]; returns the report's "Refinement" section as markdown,
    "" for a study that did not refine."""
    results["refine"] = refine
    if refine is None:
        return ""
    if "error" in refine:
        report.skipped["refinement"] = refine["error"]
        return f"## Refinement (grid.refine)\n\n{refine['error']}\n"
    by_cell = inp.runs.drop_duplicates("cell").set_index("cell") if "cell" in inp.runs else pd.DataFrame()
    scale_col = inp.n_col if refine.get("axis") == "n" else inp.d_col
    scales = by_cell[scale_col].to_dict() if scale_col in by_cell else {}
    return refinement_markdown(refine, scales)


def refinement_markdown(refine: dict, scales: dict) -> str:
    """The Refinement section: one sentence, the cells added (round, cell, its scale, the bracket
    it split) and, per line, where its threshold ended and why nothing more was added there.
    `scales`: cell key -> the added cell's measured scale (N for axis n, D for axis d)."""
    scale, line = ("N", "D") if refine.get("axis") == "n" else ("D", "N")
    added, lines = refine.get("added") or [], refine.get("lines") or []
    resolved = sum(1 for x in lines if str(x.get("stop", "")).startswith("resolved"))
    out = [
        "## Refinement (grid.refine)",
        "",
        f"Thresholds over {scale} at each {line}: {len(added)} cells added in {refine.get('rounds', 0)} "
        f"rounds (budget {refine.get('max_cells')}), each at the geometric midpoint of a bracket whose "
        f"threshold interval was wider than {_num(refine.get('width_decades'))} decades; {resolved} of "
        f"{len(lines)} thresholds ended narrower than that. Added cells are marked in the table above "
        "(origin), and with hollow diamonds in emergence_heatmap.png and metric_vs_n.png.",
        "",
    ]
    if added:
        out += [f"| round | cell | {scale} | at {line} | bracket split ({scale}) |", "|---|---|---|---|---|"]
        out += [
            f"| {a.get('round')} | {a.get('key')} | {_num(scales.get(a.get('key')))} | {_num(a.get('line'))} "
            f"| {_num(a.get('low'))} to {_num(a.get('high'))} |"
            for a in added
        ]
        out.append("")
    if lines:
        out += [
            f"| {line} | threshold {scale}* | 95% interval | width (decades) | why it stopped |",
            "|---|---|---|---|---|",
        ]
        for x in lines:
            if x.get("threshold") is None:
                interval = ""
            else:
                interval = f"{_num(x.get('low'), 'unbounded')} to {_num(x.get('high'), 'unbounded')}"
                if x.get("censored"):
                    interval += " (censored)"
            out.append(
                f"| {_num(x.get('line'))} | {_num(x.get('threshold'), 'none')} | {interval} "
                f"| {_num(x.get('interval_decades'))} | {x.get('stop', '')} |"
            )
        out.append("")
    return "\n".join(out)


def _num(value, missing: str = "") -> str:
    return (
        missing if value is None or (isinstance(value, float) and value != value) else f"{float(value):.4g}"
    )
