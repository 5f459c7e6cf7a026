"""docs/results/coverage.md: how often each kind of extrapolation interval held the truth in the
backtests of the shipped studies' real results (orchestrator/analysis/coverage.py).

Reads the results.json of each results page and the plan's outcome; writes coverage.md and
coverage.json beside this file. Run from the repository root:
    .venv/bin/python docs/results/coverage_page.py
"""

from __future__ import annotations

import json
from pathlib import Path

from orchestrator.analysis.coverage import FLAG_BELOW, NOMINAL, Check, coverage

HERE = Path(__file__).resolve().parent
PAGES = ("grokking_modular", "emergence_parity", "mirage_addition", "isoflop_charlm", "forecast_addition")


def load(page: str) -> dict | None:
    path = HERE / page / "results.json"
    return json.loads(path.read_text()) if path.exists() else None


def frontier_checks(page: str, res: dict) -> dict[str, list[Check]]:
    out: dict[str, list[Check]] = {"frontier N_opt": [], "frontier L_opt": []}
    for b in res.get("frontier_backtest") or []:
        if b.get("N_opt_predicted") is not None and b.get("N_opt_observed") is not None:
            out["frontier N_opt"].append(
                Check(
                    b["N_opt_observed"],
                    b["N_opt_predicted"],
                    b.get("N_opt_predicted_low"),
                    b.get("N_opt_predicted_high"),
                    log=True,
                    source=f"{page} ({b['approach']})",
                )
            )
        if b.get("L_opt_predicted") is not None and b.get("L_opt_observed") is not None:
            out["frontier L_opt"].append(
                Check(
                    b["L_opt_observed"],
                    b["L_opt_predicted"],
                    b.get("L_opt_predicted_low"),
                    b.get("L_opt_predicted_high"),
                    source=f"{page} ({b['approach']})",
                )
            )
    return out


def critical_data_checks(page: str, res: dict) -> list[Check]:
    """D*(N) held-out sizes: the truth is known only to its grid bracket; its geometric middle is
    taken as the truth (the page's `agrees` asks only that interval and bracket overlap)."""
    cd = (res.get("predictions") or {}).get("critical_data") or {}
    return [
        Check(
            b["observed"]["value"],
            b["predicted"],
            b.get("predicted_low"),
            b.get("predicted_high"),
            log=True,
            source=page,
        )
        for b in cd.get("backtest") or []
        if b.get("predicted") is not None and b.get("observed")
    ]


def step_checks(page: str, res: dict) -> list[Check]:
    gs = (res.get("predictions") or {}).get("generalization_step") or {}
    return [
        Check(p["observed"], p["predicted"], p.get("low"), p.get("high"), log=True, source=page)
        for p in gs.get("predictions") or []
        if p.get("predicted") is not None and p.get("observed") is not None
    ]


def forecast_checks(page: str, res: dict) -> list[Check]:
    fc = res.get("forecast") or {}
    out = []
    for b in fc.get("backtests") or []:
        for p in b["predictions"]:
            out.append(
                Check(
                    p["actual"],
                    p["metric"],
                    p.get("metric_low"),
                    p.get("metric_high"),
                    source=f"{page} (holdout {b['holdout']})",
                )
            )
    return out


def below_the_jump_checks() -> list[Check]:
    """forecast_addition's page backtest, fitted below the jump only (docs/results/forecast_page.py)."""
    path = HERE / "forecast_addition" / "below_the_jump.json"
    if not path.exists():
        return []
    b = json.loads(path.read_text())
    return [
        Check(
            p["actual"],
            p["metric"],
            p.get("metric_low"),
            p.get("metric_high"),
            source=f"forecast_addition (below the jump, holdout {b['holdout']})",
        )
        for p in b["predictions"]
    ]


def plan_checks() -> list[Check]:
    plan, outcome = HERE / "plan_isoflop_charlm" / "plan.json", HERE / "plan_isoflop_charlm" / "outcome.json"
    if not (plan.exists() and outcome.exists()):
        return []
    p, o = json.loads(plan.read_text()), json.loads(outcome.read_text())
    return [
        Check(
            o["min_val_loss"], p["loss"], p["loss_low"], p["loss_high"], source="plan_isoflop_charlm (rung)"
        )
    ]


def main() -> None:
    kinds: dict[str, list[Check]] = {
        "frontier N_opt": [],
        "frontier L_opt": [],
        "D*(N)": [],
        "generalization step (decay clock)": [],
        "downstream forecast": below_the_jump_checks(),
        "plan: rung loss": plan_checks(),
    }
    for page in PAGES:
        res = load(page)
        if res is None:
            continue
        for kind, checks in frontier_checks(page, res).items():
            kinds[kind] += checks
        kinds["D*(N)"] += critical_data_checks(page, res)
        kinds["generalization step (decay clock)"] += step_checks(page, res)
        kinds["downstream forecast"] += forecast_checks(page, res)
    rows = [coverage(kind, checks) for kind, checks in kinds.items()]
    (HERE / "coverage.json").write_text(json.dumps([r.to_dict() for r in rows], indent=2))
    lines = [
        "# Do the intervals hold? Coverage of grokscale's extrapolation intervals",
        "",
        f"Made by `docs/results/coverage_page.py` from the backtests in the shipped studies' results "
        f"(each results page's `results.json`, and the planned rung's outcome). Every interval is nominally "
        f"{NOMINAL:.0%}. *held*: backtests whose truth fell inside; *rate [95%]*: the share, with its exact "
        f"binomial interval; *factor*: by how much every interval would have to widen about its estimate "
        f"for {NOMINAL:.0%} of these truths to fall inside (in log scale for N, D and steps). A kind "
        f"below {FLAG_BELOW:.0%} is **flagged**, and its factor is the widening to apply.",
        "",
        "| interval | backtests | held | rate [95%] | factor | verdict | from |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if not r.n:
            lines.append(f"| {r.kind} | 0 | | | | no backtest in the shipped results | |")
            continue
        if r.flagged:
            verdict = f"**flagged**: widen {r.factor:.2f}x"
        elif r.rate_high < NOMINAL:
            verdict = f"covers less than it claims: widen {r.factor:.2f}x for {NOMINAL:.0%}"
        elif r.rate_low < FLAG_BELOW:
            verdict = "no miss against it yet; too few backtests to call it calibrated"
        else:
            verdict = "holds"
        lines.append(
            f"| {r.kind} | {r.n} | {r.held} | {r.rate:.0%} [{r.rate_low:.0%}, {r.rate_high:.0%}] | "
            f"{r.factor:.2f} | {verdict} | {', '.join(r.sources)} |"
        )
    (HERE / "coverage.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
