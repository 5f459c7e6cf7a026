"""docs/results/mutransfer_charlm.md: μTransfer (Yang et al. 2022) checked on a real run of
sweeps/mutransfer_charlm.yaml: the optimal learning rate at each width under sp and under mup,
and its drift over N, by the report's transfer check (orchestrator/analysis/transfer.py).

    .venv/bin/python docs/results/mutransfer_page.py --store /path/to/run/mlflow.db [--minutes M]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

from orchestrator.report.report import build_report
from orchestrator.store.results import load_results

HERE = Path(__file__).resolve().parent
OUT = HERE / "mutransfer_charlm"
KEEP = ("transfer.png", "results.json")
GROUPS = {"sp": "model.parametrization=sp", "mup": "model.parametrization=mup"}


def fmt(check: dict) -> str:
    if check.get("exponent") is None:
        return f"no exponent: {check['reason']}"
    return (
        f"optimum lr ∝ N^{check['exponent']:+.2f} [{check['exponent_low']:+.2f}, "
        f"{check['exponent_high']:+.2f}] over {check['n_usable']} widths"
    )


def agreement(transfers: bool | None, claimed: bool) -> str:
    """The claims table's "agrees?" cell: **yes** when the measured verdict (True: transfers, False:
    does not, None: undecided) is the claimed one, **no** when it is the other one."""
    if transfers is False:
        return "**no**" if claimed else "**yes**"
    if transfers:
        return "**yes**" if claimed else "**no**"
    return "undecided"


def optima_rows(checks: dict[str, dict]) -> list[str]:
    out = ["| N | sp: optimal lr [90%] | mup: optimal lr [90%] |", "|---|---|---|"]
    by_n: dict[float, dict[str, str]] = {}
    for name, key in GROUPS.items():
        for o in checks[key]["optima"]:
            if o["optimum"] is None or o["reason"]:
                cell = "at the edge of the searched rates" if o["at_edge"] else "refused: " + str(o["reason"])
            else:
                cell = f"{o['optimum']:.3g} [{o['low']:.3g}, {o['high']:.3g}]"
            by_n.setdefault(o["n"], {})[name] = cell
    for n in sorted(by_n):
        out.append(f"| {n:,.0f} | {by_n[n].get('sp', '-')} | {by_n[n].get('mup', '-')} |")
    return out


def page(results: dict, minutes: float | None) -> str:
    checks = results["transfer"]["train.lr"]
    sp, mup = checks[GROUPS["sp"]], checks[GROUPS["mup"]]
    took = f" ({minutes:.0f} min on the 2-core machine shared with other work)" if minutes else ""
    verdict = {True: "transfers", False: "does not transfer", None: "undecided"}
    agrees = mup["transfers"] is True and sp["transfers"] is False
    lines = [
        "# μTransfer on byte-level language models: does the best learning rate hold as width grows?",
        "",
        "Made by `docs/results/mutransfer_page.py` from a real "
        f"`grokscale run sweeps/mutransfer_charlm.yaml`{took}: {results['runs']} runs: the `gpt` family at 5 "
        "widths spanning 16x (d_model 8 to 128, 2 layers), 7 learning rates from 1e-3 to 6.4e-2 at each "
        "width, under standard parametrization (sp) and under μP (mup, base_width 16), 150 steps each, the "
        "objective the best held-out loss.",
        "",
        "## The optimal learning rate per width",
        "",
        *optima_rows(checks),
        "",
        "## Claims",
        "",
        "| claim in the paper | what grokscale measured | agrees? |",
        "|---|---|---|",
        "| Yang et al. 2022 (Tensor Programs V): under μP the optimal learning rate is stable across width | "
        f"mup: {fmt(mup)}: {verdict[mup['transfers']]} | "
        f"{agreement(mup['transfers'], claimed=True)} |",
        f"| Yang et al. 2022: under standard parametrization it shifts with width | sp: {fmt(sp)}: "
        f"{verdict[sp['transfers']]} | "
        f"{agreement(sp['transfers'], claimed=False)} |",
        "",
        "Verdict rule (orchestrator/analysis/transfer.py): transfers when the exponent's 90% interval lies "
        f"within |e| <= {sp['tolerance']:g}; does not when it excludes 0 and lies outside that band; "
        "undecided otherwise. Both halves of the claim hold here."
        if agrees
        else "The claim does not hold in full here; the table says which half.",
        "",
        "![The optimal learning rate per width under sp and mup](mutransfer_charlm/transfer.png)",
        "",
        "Raw numbers: [mutransfer_charlm/results.json](mutransfer_charlm/results.json) (`transfer`).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", required=True, help="the run's MLflow SQLite file")
    ap.add_argument("--minutes", type=float, help="the run's wall time, for the page")
    args = ap.parse_args()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    res = load_results(f"sqlite:///{Path(args.store).resolve()}", "mutransfer_charlm")
    work = OUT.with_name("mutransfer_charlm_report")
    build_report(res, work)
    OUT.mkdir(exist_ok=True)
    for name in KEEP:
        if (work / name).exists():
            shutil.copy(work / name, OUT / name)
    shutil.rmtree(work)
    results = json.loads((OUT / "results.json").read_text())
    (HERE / "mutransfer_charlm.md").write_text(page(results, args.minutes))
    print(f"wrote {HERE / 'mutransfer_charlm.md'}")


if __name__ == "__main__":
    main()
