"""Compute saved by `grid.refine` against a uniform grid fine enough for the same interval.

Two measurements, both costed in training FLOPs of the cells as the study resolves them
(Cell.train_flops: steps x examples per step x FLOPs per example, trainers/flops.py), times the
runs per cell (trials x seeds), since success-stop shortens a run alike in both grids:

  planted  sweeps/emergence_parity.yaml's own grid (5 target N from 1k to 100k x 5 D), with a
           planted clean step N*(D) = 10^4.2 (D / 1000)^-0.5 in place of training: the refine
           loop (orchestrator/sweep/refine.py) with the study's real cells, shapes and analysis
           (critical_sizes, as the report fits it), nothing trained. Against it, a uniform grid
           of targets log-spaced as finely as the widest interval refinement reached, over the
           grid's N range, at every D: a clean step between two scales s decades apart has an
           interval of s decades, so that grid gives the same interval.
  real     a tiny sparse-parity study (tests/study/test_refine.py's) through `grokscale run`:
           runs trained and wall time; the uniform grid's FLOPs from its cells (not trained).

Usage: python benchmarks/bench_refine.py [--out benchmarks/results/refine] [--skip-real]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: the repo's packages come first

from orchestrator.analysis.emergence import critical_sizes  # noqa: E402
from orchestrator.study import Study, load_study  # noqa: E402
from orchestrator.study.grid import build_cells  # noqa: E402
from orchestrator.sweep.refine import Split, cell_for, refine  # noqa: E402

sys.path.insert(0, str(ROOT / "tests"))  # the tests' tiny studies
from support.studies import refine_parity_study  # noqa: E402

PARITY = ROOT / "sweeps" / "emergence_parity.yaml"
REFINE = {"axis": "n", "max_cells": 40, "width_decades": 0.1}
TINY = refine_parity_study("refine_bench", max_cells=6)


def n_star(d: float) -> float:
    return 10 ** (4.2 - 0.5 * math.log10(d / 1000))


def cost(study: Study, cells: list) -> float:
    runs = study.search.trials_per_cell * len(study.grid.seeds)
    return float(sum(c.train_flops for c in cells) * runs)


def uniform_targets(lo: float, hi: float, spacing: float) -> list[int]:
    """Targets log-spaced at most `spacing` decades apart from lo to hi."""
    k = math.ceil(math.log10(hi / lo) / spacing)
    return [round(lo * (hi / lo) ** (i / k)) for i in range(k + 1)]


def planted() -> dict:
    study = load_study(PARITY, [f"grid.refine={json.dumps(REFINE)}"])
    conv, seeds = study.grid.n_convention, len(study.grid.seeds)

    def measure(cells: list):
        rows = [
            {"n": c.n(conv), "d": c.n_train, "m": 1.0 if c.n(conv) >= n_star(c.n_train) else 0.5}
            for c in cells
            for _ in range(seeds)
        ]
        return critical_sizes(
            pd.DataFrame(rows), metric="m", n_col="n", d_col="d", chance=0.5, status_col=None
        ).n_star

    t0 = time.monotonic()
    grid = build_cells(study)
    cells, result = refine(
        grid,
        study.grid.refine,
        run=lambda cells, added: None,
        measure=measure,
        realize=lambda split, now: cell_for(study, split, now),
        key=lambda c: c.key,
    )
    widest = max(line.interval_decades for line in result.lines)
    assert all(line.low <= n_star(line.line) <= line.high for line in result.lines), result.lines
    ns = [c.n(conv) for c in grid]
    out = {
        "study": str(PARITY.relative_to(ROOT)),
        "refine": REFINE,
        "grid_cells": len(grid),
        "added_cells": len(result.added),
        "rounds": result.rounds,
        "widest_interval_decades": widest,
        "lines": [
            {
                "d": line.line,
                "n_star": n_star(line.line),
                "low": line.low,
                "high": line.high,
                "stop": line.stop,
            }
            for line in result.lines
        ],
        "refined_flops": cost(study, cells),
        "seconds": time.monotonic() - t0,
    }
    for name, spacing in (
        ("uniform_same_interval", widest),
        ("uniform_width_decades", REFINE["width_decades"]),
    ):
        targets = uniform_targets(min(ns), max(ns), spacing)
        uniform = build_cells(load_study(PARITY, [f"grid.n={json.dumps(targets)}"]))
        out[name] = {
            "spacing_decades": spacing,
            "cells": len(uniform),
            "flops": cost(study, uniform),
            "refined_over_uniform_flops": out["refined_flops"] / cost(study, uniform),
            "refined_over_uniform_cells": len(cells) / len(uniform),
        }
    return out


def real(work: Path) -> dict:
    path = work / "study.yaml"
    path.write_text(yaml.safe_dump(TINY))
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "run", str(path), "--quiet", "--json", "--no-report"],
        cwd=work,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    counts = json.loads(proc.stdout.strip().splitlines()[-1])
    study = load_study(path)
    cells = build_cells(study)
    for a in counts["refine"]["added"]:  # the same cells again: the realization is deterministic
        cells.append(cell_for(study, Split(a["line"], a["low"], a["high"], math.inf), cells))
    assert [c.key for c in cells[3:]] == [a["key"] for a in counts["refine"]["added"]]
    widest = max(line["interval_decades"] or math.inf for line in counts["refine"]["lines"])
    # Every width whose N lies on a log grid of that spacing over the grid's range (N = 6 + 19 w).
    ns = [c.n(study.grid.n_convention) for c in cells[:3]]
    widths = sorted({max(1, round((n - 6) / 19)) for n in uniform_targets(min(ns), max(ns), widest)})
    uniform = build_cells(
        load_study(path, [f"grid.n={json.dumps([{'d_hidden': w} for w in widths])}", "grid.refine=null"])
    )
    return {
        "runs_trained": counts["completed"],
        "wall_s": wall,
        "refine": counts["refine"],
        "refined_cells": len(cells),
        "refined_flops": cost(study, cells),
        "uniform_same_interval": {
            "spacing_decades": widest,
            "cells": len(uniform),
            "widths": widths,
            "flops": cost(study, uniform),
            "refined_over_uniform_flops": cost(study, cells) / cost(study, uniform),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "refine")
    parser.add_argument("--skip-real", action="store_true", help="only the planted comparison (no training)")
    args = parser.parse_args()
    result = {"planted": planted()}
    if not args.skip_real:
        with tempfile.TemporaryDirectory() as tmp:
            result["real"] = real(Path(tmp))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "refine.json").write_text(json.dumps(result, indent=2, default=float))
    print(json.dumps(result, indent=2, default=float))


if __name__ == "__main__":
    np.seterr(over="ignore")  # the sigmoid fit's exp overflows harmlessly far from its midpoint
    main()
