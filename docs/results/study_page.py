"""Write docs/results/<study>.md from a real `grokscale run` of a canonical study.

The three studies, shrunk to the 2-core dev machine (claims/<study>.py says what is shrunk and
why; `python docs/results/study_page.py --sets <study>` prints the overrides). The minutes are
the real runs' wall times (on the 2-core machine beside other work):

    # grokking_modular, 56 runs of at most 7,000 steps: 29 min
    mkdir -p docs/results/grokking_modular/store && cd docs/results/grokking_modular/store
    grokscale run ../../../../sweeps/grokking_modular.yaml --quiet --set task.p=59 \
        --set 'grid.n=[{d_model: 64}]' --set model.d_mlp=256 --set train.lr=3e-3 --set train.steps=7000 \
        --set train.eval_every=100 --set train.checkpoint_every=1000
    cd - && python docs/results/study_page.py grokking_modular docs/results/grokking_modular/store

    # emergence_parity, 100 runs of at most 20,000 steps: 15 min
    mkdir -p docs/results/emergence_parity/store && cd docs/results/emergence_parity/store
    grokscale run ../../../../sweeps/emergence_parity.yaml --quiet --set 'grid.seeds=[0]'
    cd - && python docs/results/study_page.py emergence_parity docs/results/emergence_parity/store

    # mirage_addition, 42 runs of 3,000 steps: about 70 min, in two sittings on a heavily loaded machine
    mkdir -p docs/results/mirage_addition/store && cd docs/results/mirage_addition/store
    widths='{d_model: 4},{d_model: 8},{d_model: 12},{d_model: 16},{d_model: 20},{d_model: 28},{d_model: 44}'
    grokscale run ../../../../sweeps/mirage_addition.yaml --quiet \
    --set "grid.n=[$widths]" \
    --set train.steps=3000
    cd - && python docs/results/study_page.py mirage_addition docs/results/mirage_addition/store

The report is made again from the study's MLflow store (its plots go next to the page, in
docs/results/<study>/), the page's numbers are read from the report's results.json plus one record
per run (`page_runs`: its N, D, searched values, events, phase and where its validation curve
left chance), and the claims in claims/<study>.py are pure functions of that dict. What the run
changed from sweeps/<study>.yaml is read back from the study config it logged, and its wall time
from its MLflow parent run: nothing on the page is typed by hand but the published claims and
the reasons for shrinking.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import shutil
import sys
from pathlib import Path

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from claims import STUDIES  # noqa: E402 - docs/results is not a package
from claims.measures import curve_rise, fmt, number  # noqa: E402

from orchestrator.report.prediction_section import bracket_text  # noqa: E402

ROOT = HERE.parent.parent
CAPTIONS = {
    "emergence_heatmap": "Best validation accuracy per cell over N x D, with the critical-size lines",
    "metric_vs_n": "The metric over N at each D, with the fitted sigmoids",
    "grokking_curves": "Training and validation accuracy of every run, one panel per cell",
    "phase_wd_x_d": "Phases over weight decay x training data (Liu et al. 2022)",
    "phase_wd_x_lr": "Phases over weight decay x learning rate",
    "scaling_fit": "The L(N, D) fit",
    "mirage": "The mirage check: the discontinuous metric against its continuous counterpart over N",
}
# The direction of D*(N) in the literature (checked against the papers' abstracts; see the report's
# critical_data.py for Huang et al.'s figure).
D_STAR_LITERATURE = (
    (
        "Zhu et al. 2024, Critical data size of language models from a grokking perspective",
        "grows",
        '"as the model size increases, this critical point also becomes larger" (abstract)',
    ),
    (
        "Huang et al. 2024, Unified view of grokking, double descent and emergent abilities",
        "shrinks",
        "Fig. 1 draws D_crit falling as models grow (as read in orchestrator/analysis/critical_data.py; "
        "the abstract says only that the dynamics depend on model size and data)",
    ),
    (
        "Varma et al. 2023, Explaining grokking through circuit efficiency",
        None,
        "defines D_crit over data (memorizing circuits lose efficiency as D grows), for one model size: "
        "no claim over N",
    ),
)


# --- the page's inputs: the report, per-run records, what the run changed, how long it took -----------------


def page_runs(res, config: dict) -> list[dict]:
    """One record per training run (claims/measures.py names the fields), from the study's runs
    and curves, with events and phases as the report computes them (its own thresholds)."""
    from orchestrator.report.document import read_inputs
    from orchestrator.report.sections import run_events
    from orchestrator.store import names
    from trainers.spec import TrainConfig

    inp = read_inputs(res, Path("."))
    events = run_events(inp.curves, inp.runs).set_index("run_id") if not inp.curves.empty else None
    train = config.get("train") or {}
    fixed = {k: float(train.get(k, TrainConfig.model_fields[k].default)) for k in ("weight_decay", "lr")}
    chance = inp.chance if inp.chance is not None else 0.0
    curves = dict(tuple(inp.curves.groupby("run_id"))) if not inp.curves.empty else {}
    out = []
    for _, r in inp.runs.iterrows():
        rec = {
            "run_id": r["run_id"],
            "cell": r.get("cell"),
            "status": r.get("status"),
            "n": number(r.get(inp.n_col)),
            "d": number(r.get(inp.d_col)),
            "d_value": number(r.get(names.PARAM_D_VALUE)),
            "seed": number(r.get(names.PARAM_SEED)),
            "val_threshold": number(r.get("val_threshold")),
        }
        for k in ("weight_decay", "lr"):
            v = r.get(f"{names.PARAM_SEARCHED_PREFIX}train.{k}")
            rec[k] = fixed[k] if number(v) is None else float(v)
        for k in ("max_val_acc", "val_acc", "val_token_acc", "val_answer_logprob"):
            rec[k] = number(r.get(k))
        ev = events.loc[r["run_id"]] if events is not None and r["run_id"] in events.index else None
        for k in ("memorization_step", "generalization_step", "phase", "last_step"):
            if ev is None:
                rec[k] = None
            elif k == "phase":
                rec[k] = ev[k]
            else:
                rec[k] = None if number(ev[k]) is None else float(ev[k])
        curve = curves.get(r["run_id"])
        if curve is not None and "val_acc" in curve and rec["val_threshold"] is not None:
            steps = curve["step"].to_numpy(float)
            rec["eval_every"] = float(np.median(np.diff(np.sort(steps)))) if steps.size > 1 else None
            rec["plateau_end"], rec["reach_step"] = curve_rise(
                steps, curve["val_acc"].to_numpy(float), chance=chance, threshold=rec["val_threshold"]
            )
        else:
            rec["eval_every"] = rec["plateau_end"] = rec["reach_step"] = None
        out.append(rec)
    return out


def flatten(data: dict, prefix: str = "") -> dict:
    """Dotted keys to leaf values (lists and empty sections are leaves)."""
    out = {}
    for k, v in data.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def overrides(canonical: dict, used: dict) -> list[dict]:
    """What a run changed from the canonical study: every field of the canonical YAML whose value
    the run's logged config holds differently (fields the YAML leaves to defaults are not compared)."""
    a, b = flatten(canonical), flatten(used)
    out = []
    for key, value in a.items():
        if key in b and not _same(value, b[key]):
            out.append({"key": key, "canonical": value, "used": b[key]})
    return out


def _same(x, y) -> bool:
    if isinstance(x, (int, float)) and isinstance(y, (int, float)) and not isinstance(x, bool):
        return math.isclose(float(x), float(y), rel_tol=1e-12)
    return x == y


def inline(value) -> str:
    """A value as --set writes it (YAML flow style)."""
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def command(study: str, changed: list[dict]) -> str:
    sets = " ".join(f"--set {shlex.quote(c['key'] + '=' + inline(c['used']))}" for c in changed)
    return f"grokscale run sweeps/{study}.yaml --quiet {sets}".strip()


def timing(tracking_uri: str, parent_run_id: str) -> dict:
    """The study's wall time (its parent run's start to end) and the sum of its runs' times, from MLflow."""
    from mlflow.tracking import MlflowClient

    from orchestrator.store import names
    from orchestrator.store.names import tag_equals

    client = MlflowClient(tracking_uri=tracking_uri)
    parent = client.get_run(parent_run_id).info
    children = client.search_runs(
        [parent.experiment_id], tag_equals(names.PARENT_RUN, parent_run_id), max_results=50_000
    )
    # A run restarted by a later driver (the study was stopped and resumed) keeps its first start:
    # the parent's span then includes the time no driver ran.
    resumed = sum(int(c.data.tags.get(names.TAG_ATTEMPTS, "1")) > 1 for c in children)
    return {
        "wall_s": (parent.end_time - parent.start_time) / 1000 if parent.end_time else None,
        "runs": len(children),
        "resumed_runs": resumed,
    }


def build(study: str, store: Path, out: Path, experiment: str | None = None) -> dict:
    """The page's results from the study's MLflow store (see `build_from`)."""
    from orchestrator.store.results import load_results

    uri = f"sqlite:///{store.resolve() / 'mlflow.db'}"
    res = load_results(uri, experiment or study)
    return build_from(study, res, out, timing(uri, res.parent_run_id))


def build_from(study: str, res, out: Path, took: dict) -> dict:
    """Make the report from a study's results (orchestrator.store.results.StudyResults), copy its
    plots and predictions into `out`, and return the page's results dict (also out/results.json):
    the report's results, `page_runs` and `page` (what the run changed, its command and timing)."""
    from orchestrator.report.report import build_report

    out.mkdir(parents=True, exist_ok=True)
    report = build_report(res, out / "report")
    for name, path in report.plots.items():
        shutil.copy(path, out / f"{name}.png")
    results = dict(report.results)
    canonical = yaml.safe_load((ROOT / "sweeps" / f"{study}.yaml").read_text())
    changed = overrides(canonical, res.config)
    results["page_runs"] = page_runs(res, res.config)
    results["page"] = {
        "study": study,
        "overrides": changed,
        "command": command(study, changed),
        "timing": took,
        "summary_md": (out / "report" / "summary.md").read_text(),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2, default=_json))
    shutil.copy(out / "report" / "predictions" / "predictions.md", out / "predictions.md")
    shutil.rmtree(out / "report")
    return json.loads((out / "results.json").read_text())  # what the claims see is what the JSON holds


def _json(value):
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return None if not np.isfinite(value) else float(value)
    return str(value)


# --- the page: a pure function of the results dict ----------------------------------------------------------

# Whether a page's verdicts survived the same command on another kind of CPU (its curves are then
# equal only to float tolerance: README, "Reproduce a run").
NOT_RERUN = "Not yet rerun on another kind of machine: its verdicts are checked on this one only."
RERUNS = {
    "emergence_parity": (
        "Rerun by a reviewer with the same command on another 2-core machine (AMD EPYC): the same searched "
        "values for all 100 runs; 41 of the 100 runs had different curves (for example max_val_acc 0.974 "
        "against 0.9795, learned at step 7,000 against 6,750), so the numbers moved (N* 1,590 against "
        "1,596; one run from confusion to memorization), and **every verdict stayed the same**."
    ),
}


def page(results: dict, folder: str) -> str:
    """The page's markdown; `folder` is where its plots are, relative to the page."""
    meta = results["page"]
    study = meta["study"]
    module = STUDIES[study]
    lines = [
        f"# {module.TITLE}",
        "",
        *_intro(results, module),
        "",
        "## Claims",
        "",
        "| claim in the paper | what grokscale measured | agrees? |",
        "|---|---|---|",
    ]
    for claim in module.CLAIMS:
        v = claim.check(results)
        lines.append(f"| {claim.paper}: {claim.statement} | {_cell(v.measured)} | {_cell(v.cell())} |")
    lines += ["", "### Rerun on another machine", "", RERUNS.get(study, NOT_RERUN), "", "## Plots", ""]
    for name in results.get("plots") or []:
        lines += [
            f"![{CAPTIONS.get(name, name)}]({folder}/{name}.png)",
            "",
            f"*{CAPTIONS.get(name, name)}.*",
            "",
        ]
    for name, why in sorted((results.get("skipped") or {}).items()):
        lines.append(f"- not drawn or not fitted, {name}: {why}")
    lines += [
        "",
        *_numbers(results),
        "",
        *_predictions(results, folder),
        "",
        f"Raw numbers: [{folder}/results.json]({folder}/results.json); the report's predictions section: "
        f"[{folder}/predictions.md]({folder}/predictions.md).",
        "",
    ]
    return "\n".join(lines)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _bound(fit: dict, side: str) -> str:
    """One end ("low" or "high") of a threshold's interval: "unbounded" where the fit found none."""
    return "unbounded" if fit.get(f"{side}_unbounded") else fmt(fit.get(side), ",.4g")


def _intro(results: dict, module) -> list[str]:
    meta = results["page"]
    t = meta.get("timing") or {}
    wall = "unknown" if t.get("wall_s") is None else f"{t['wall_s'] / 60:.1f} min"
    statuses = ", ".join(f"{v} {k}" for k, v in (results.get("statuses") or {}).items())
    out = [
        f"Made by `docs/results/study_page.py` from a real `grokscale run sweeps/{meta['study']}.yaml` on "
        f"the 2-core dev machine: {results.get('runs')} runs ({statuses}); wall time {wall} (the study's "
        "MLflow parent run, start to end"
        + (
            f"; the study was stopped and resumed, {t['resumed_runs']} runs restarted "
            f"by the later driver, so this includes the time between the two)"
            if t.get("resumed_runs")
            else ")"
        )
        + ". The command:",
        "",
        "```",
        meta["command"],
        "```",
        "",
        "### What was shrunk, and why",
        "",
    ]
    changed = meta.get("overrides") or []
    if not changed:
        out.append("Nothing: this is the canonical study.")
    else:
        out += ["| field | canonical | this run | why |", "|---|---|---|---|"]
        recommended = {k: yaml.safe_load(v) for k, _, v in (s.partition("=") for s in module.SETS)}
        for c in changed:
            rec = recommended.get(c["key"], c["canonical"])
            why = (
                module.WHY.get(c["key"], "")
                if c["key"] in recommended and _same(rec, c["used"])
                else f"not the recommended shrink (recommended: `{inline(rec)}`)"
            )
            out.append(
                f"| `{c['key']}` | `{_cell(inline(c['canonical']))}` | `{_cell(inline(c['used']))}` | "
                f"{_cell(why)} |"
            )
    recommended = {s.partition("=")[0] for s in module.SETS}
    if {c["key"] for c in changed} != recommended:
        out += [
            "",
            f"**This is not the recommended run** (`python docs/results/study_page.py --sets {meta['study']}`"
            f" gives its overrides: {', '.join(sorted(recommended))}): read its verdicts as a check of the "
            "page's machinery, not of the papers.",
        ]
    return out


def _numbers(results: dict) -> list[str]:
    out = ["## Fitted numbers", ""]
    phases = results.get("phases") or {}
    if phases:
        out += [
            "Phases (Liu et al. 2022, analysis/grokking.py): "
            + ", ".join(f"{k} {v}" for k, v in phases.items()),
            "",
        ]
    cs = results.get("critical_sizes") or {}
    for key, over, at in (("d_star", "D", "n"), ("n_star", "N", "d")):
        fits = cs.get(key) or []
        if not fits:
            continue
        if all(f.get("threshold") is None and "distinct scales" in str(f.get("reason")) for f in fits):
            out += [
                f"No emergence threshold over {over}: fewer than 3 values of {over} at each "
                f"{'N' if at == 'n' else 'D'}.",
                "",
            ]
            continue
        out += [
            f"Emergence threshold over {over} at each {'N' if at == 'n' else 'D'} (analysis/emergence.py: "
            f"the midpoint of a sigmoid in log {over} of {cs.get('metric')} from chance "
            f"{fmt(cs.get('chance'))} to its fitted ceiling; not the same as the predictions' D*, the least "
            "data at which a run reaches its validation threshold):",
            "",
            f"| {'N' if at == 'n' else 'D'} | {over}* | 95% interval | sharp | note |",
            "|---|---|---|---|---|",
        ]
        for f in fits:
            if f.get("threshold") is None:
                interval = ""
            else:
                interval = f"{_bound(f, 'low')} to {_bound(f, 'high')}"
                if f.get("censored"):
                    interval += " (censored to the bracket)"
            sharp = {True: "yes", False: "no", None: "undecided"}[f.get("sharp")]
            note = f.get("reason") or (f.get("sharp_reason") or "")
            out.append(
                f"| {f[at]:,.4g} | {fmt(f.get('threshold'), ',.4g')} | {interval} | {sharp} | {_cell(note)} |"
            )
        out.append("")
    if results.get("mirage"):
        out += [
            "Mirage checks (analysis/mirage.py):",
            "",
            "| metrics | D | verdict | reason |",
            "|---|---|---|---|",
        ]
        for c in results["mirage"]:
            out.append(
                f"| {c['discontinuous_metric']} vs {c['continuous_metric']} | "
                f"{fmt(c.get('group'), ',.0f')} | {c['verdict']} | {_cell(c['reason'])} |"
            )
        out.append("")
    for name, facets in (results.get("phase_regions") or {}).items():
        for at, r in facets.items():
            state = (
                f"drawn (leave-one-out accuracy {r['loo_accuracy']:.0%})"
                if r.get("drawn")
                else f"not drawn: {r.get('reason')}"
            )
            out.append(f"- {name} at {'all runs' if at == 'None' else at}: phase regions {state}")
    if "scaling_fit" in (results.get("skipped") or {}):
        out.append(f"- L(N, D): {results['skipped']['scaling_fit']}")
    out += ["", "Per cell (the report's summary table):", "", results["page"].get("summary_md", "").strip()]
    return out


def _predictions(results: dict, folder: str) -> list[str]:
    pred = results.get("predictions") or {}
    cd, gs = pred.get("critical_data") or {}, pred.get("generalization_step") or {}
    out = ["## Predictions, backtested", "", "### Critical data size D*(N)", ""]
    law = cd.get("law") or {}
    if "points" not in cd:
        out.append(f"No D* brackets: {cd.get('reason')}.")
    elif one_data_size(cd):
        sizes = sorted({p["low"] if p["low"] is not None else p["high"] for p in cd["points"]})
        out.append(
            f"This study trains one data size per model size (D = {', '.join(f'{d:,.0f}' for d in sizes)}): "
            f"D* is not measured by it, so there is no D*(N) law to fit or backtest."
        )
    else:
        out.append(
            "D* at each model size, bracketed by the grid: "
            + "; ".join(f"N = {p['n']:,.0f}: {bracket_text(p, 'D*')}" for p in cd["points"])
            + "."
        )
        if law.get("exponent") is None:
            out.append(f"The power law D* ∝ N^b: refused, {law.get('reason')}.")
        else:
            out.append(
                f"The power law: D* ∝ N^{law['exponent']:.3g}, every line through the brackets "
                f"[{fmt(law.get('exponent_low'))}, {fmt(law.get('exponent_high'))}]: D* {law['direction']} "
                f"with N."
            )
        out += ["", "| source | D* as N grows | what grokscale measured | agrees? |", "|---|---|---|---|"]
        for who, direction, what in D_STAR_LITERATURE:
            ours = law.get("direction")
            if direction is None:
                ok = "n/a: no claim over N"
            elif ours is None:
                ok = "cannot tell: no law"
            elif ours == "undecided":
                ok = "cannot tell: undecided"
            elif ours == direction:
                ok = "yes"
            else:
                ok = "no"
            out.append(f"| {who} | {direction or 'no claim'}: {_cell(what)} | {ours or 'no law'} | {ok} |")
        out += [
            "",
            "Backtest: each size predicted from the smaller sizes alone.",
            "",
            "| held-out N | predicted D* [interval] | outcome (grid bracket) | error | agrees |",
            "|---|---|---|---|---|",
        ]
        for b in cd.get("backtest") or []:
            p = (
                "none: " + _cell(b["reason"])
                if b.get("predicted") is None
                else f"{b['predicted']:,.4g} [{fmt(b.get('predicted_low'), ',.4g')}, "
                f"{fmt(b.get('predicted_high'), ',.4g')}]"
            )
            agrees = {True: "yes", False: "no", None: "n/a"}[b.get("agrees")]
            out.append(
                f"| {b['n']:,.0f} | {p} | {bracket_text(b['observed'], 'D*')} | "
                f"{fmt(b.get('error'), '+.0%')} | {agrees} |"
            )
        if not cd.get("backtest"):
            out.append(f"| | {_cell(cd.get('backtest_reason', ''))} | | | |")
        nxt = cd.get("next")
        if nxt:
            out.append(
                f"\nNext size N = {nxt['n']:,.0f} (not trained): D* predicted "
                + (
                    "none (no law)"
                    if nxt.get("predicted") is None
                    else f"{nxt['predicted']:,.4g} [{fmt(nxt.get('predicted_low'), ',.4g')}, "
                    f"{fmt(nxt.get('predicted_high'), ',.4g')}]"
                )
                + "."
            )
    out += ["", "### Generalization step, predicted at the memorization step by the decay clock", ""]
    if "predictions" not in gs or not gs.get("n_scored"):
        out.append(f"No prediction scored: {gs.get('reason')}.")
    else:
        out.append(
            f"{gs['n_scored']} runs scored: median |error| {fmt(gs.get('median_abs_error'), '.0%')} against "
            f"{fmt(gs.get('baseline_median_abs_error'), '.0%')} for the baseline (the median step of the "
            f"pool); outcome inside the predicted interval for {fmt(gs.get('within_interval'), '.0%')}; "
            f"predicted to generalize but never did: {gs['missed']}; predicted not to but did: "
            f"{gs['surprised']}. Every prediction, with its outcome: "
            f"[{folder}/predictions.md]({folder}/predictions.md)."
        )
    out += ["", "### Where the predictions fail", "", *failures(results)]
    return out


def failures(results: dict) -> list[str]:
    """The backtests' failures, worded from their numbers."""
    pred = results.get("predictions") or {}
    cd, gs = pred.get("critical_data") or {}, pred.get("generalization_step") or {}
    out = []
    for b in [] if one_data_size(cd) else cd.get("backtest") or []:
        if b.get("predicted") is None:
            out.append(f"- D* at N = {b['n']:,.0f}: no prediction ({b.get('reason')}).")
        elif b.get("agrees") and b.get("error") is not None and abs(b["error"]) > 0.5:
            out.append(
                f"- D* at N = {b['n']:,.0f}: the predicted interval meets the grid's bracket "
                f"({bracket_text(b['observed'], 'D*')}), but the point prediction {b['predicted']:,.4g} is "
                f"off by "
                f"{b['error']:+.0%} from its midpoint: the law's direction and size are loosely held."
            )
        elif b.get("agrees") is False:
            out.append(
                f"- D* at N = {b['n']:,.0f}: predicted {b['predicted']:,.4g}, the grid says "
                f"{bracket_text(b['observed'], 'D*')} ({fmt(b.get('error'), '+.0%')}): the smaller sizes' "
                f"law does not carry to this size."
            )
    if "points" in cd and not cd.get("backtest") and not one_data_size(cd):
        out.append(
            f"- D*(N) is not backtested: {cd.get('backtest_reason') or (cd.get('law') or {}).get('reason')}."
        )
    if "predictions" in gs:
        reasons: dict[str, int] = {}
        for p in gs["predictions"]:
            if p.get("predicted") is None and p.get("reason"):
                reasons[p["reason"]] = reasons.get(p["reason"], 0) + 1
        for why, k in sorted(reasons.items(), key=lambda x: -x[1]):
            out.append(f"- generalization step: {k} run(s) got no prediction: {why}.")
        if gs.get("reason"):
            out.append(f"- generalization step: {gs['reason']}.")
        m, b = gs.get("median_abs_error"), gs.get("baseline_median_abs_error")
        trivial, late_err, late_base = (
            gs.get("n_immediate") or 0,
            gs.get("late_median_abs_error"),
            gs.get("late_baseline_median_abs_error"),
        )
        late = gs.get("n_scored", 0) - trivial
        if trivial and not late:
            out.append(
                f"- generalization step: all {trivial} scored runs generalized at the evaluation at which "
                f'they memorized (comprehension): the clock\'s "now" is trivially right for each, so this '
                f"study does not test the clock on a delayed generalization."
            )
        elif trivial:
            out.append(
                f"- generalization step: {trivial} of {gs['n_scored']} scored runs generalized at the "
                f'evaluation at which they memorized (comprehension): for them the clock predicts "now" '
                f"and is trivially right. Over the {late} that generalized later, the median |error| is "
                f"{fmt(late_err, '.0%')} against {fmt(late_base, '.0%')} for the baseline."
            )
        if late and late_err is not None and late_base is not None and late_err >= late_base:
            out.append(
                f"- generalization step: on runs that generalized after memorizing, the decay clock "
                f"({late_err:.0%}) does not beat the baseline ({late_base:.0%})."
            )
        elif m is not None and b is not None and m >= b:
            out.append(
                f"- generalization step: the decay clock ({m:.0%}) does not beat the baseline ({b:.0%}): "
                f"on this study it explains nothing the pool's median step does not."
            )
        if gs.get("missed"):
            out.append(
                f"- generalization step: {gs['missed']} run(s) were predicted to generalize within their "
                "budget and never did."
            )
        if gs.get("surprised"):
            out.append(
                f"- generalization step: {gs['surprised']} run(s) were predicted not to generalize in time "
                f"and did."
            )
    elif gs:
        out.append(f"- generalization step: no prediction at all: {gs.get('reason')}.")
    return out or ["- none: every prediction made lay within what the grid measured."]


def one_data_size(cd: dict) -> bool:
    """The study measured a single D at every model size: no D* can be bracketed."""
    return bool(cd.get("points")) and all(p.get("n_values", 0) < 2 for p in cd["points"])


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("study", choices=sorted(STUDIES))
    p.add_argument("store", nargs="?", help="the folder the study ran in (mlflow.db inside)")
    p.add_argument("--sets", action="store_true", help="print the recommended --set overrides and exit")
    p.add_argument("--out", help="the folder for the page and its files (default: docs/results)")
    p.add_argument("--experiment", help="the MLflow experiment (default: the study's name)")
    args = p.parse_args(argv)
    if args.sets:
        print(" ".join(f"--set {shlex.quote(s)}" for s in STUDIES[args.study].SETS))
        return 0
    if args.store is None or not (Path(args.store) / "mlflow.db").exists():
        print(
            f"error: store: no mlflow.db in {args.store!r}; give the folder the study ran in", file=sys.stderr
        )
        return 2
    base = Path(args.out) if args.out else HERE
    results = build(args.study, Path(args.store), base / args.study, args.experiment)
    (base / f"{args.study}.md").write_text(page(results, args.study))
    print(f"wrote {base / (args.study + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
