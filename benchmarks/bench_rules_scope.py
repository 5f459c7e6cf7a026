"""A rule's constant searched once for the whole grid (search.scope: study) against the same grid
searched per cell (search.scope: cell), on sweeps/rules_scope_demo.yaml: the learning rate as
lr = value x (N / 1e4)^-0.5 over 3 byte-level LMs, `value` searched by TPE in the same range.

Both are real `grokscale run`s on this machine (local Ray, Optuna journal and MLflow SQLite in a
temporary folder). What each spent: runs, training FLOPs (each run's own count, trainers/flops.py)
and wall time; what each found: per cell, the best held-out loss (min over its evaluations, nats
per byte) and the learning rate that gave it, also after only the first k trials (TPE's first
draws are seeded, so a shorter search is the first k trials of this one).

Usage: python benchmarks/bench_rules_scope.py [--out docs/results/rules_scope.md]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: the repo's packages come first

from mlflow.tracking import MlflowClient  # noqa: E402

from orchestrator.store import names  # noqa: E402
from orchestrator.study import load_study  # noqa: E402

STUDY = ROOT / "sweeps" / "rules_scope_demo.yaml"
SCOPES = ("study", "cell")


def run_scope(scope: str, where: Path) -> dict:
    """One `grokscale run` of the demo under `scope`; its runs as rows, and its counts."""
    name = f"rules_scope_{scope}"
    args = [
        sys.executable,
        "-m",
        "orchestrator.cli",
        "run",
        str(STUDY),
        "--quiet",
        "--json",
        "--no-report",
        "--set",
        f"search.scope={scope}",
        "--set",
        f"name={name}",
    ]
    t0 = time.monotonic()
    out = subprocess.run(args, cwd=where, capture_output=True, text=True, check=False)
    wall = time.monotonic() - t0
    if out.returncode != 0:
        raise SystemExit(f"{scope}: grokscale run failed:\n{out.stderr[-3000:]}")
    counts = json.loads(next(line for line in reversed(out.stdout.splitlines()) if line.startswith("{")))
    client = MlflowClient(f"sqlite:///{where / 'mlflow.db'}")
    exp = client.get_experiment_by_name(name)
    rows = []
    for r in client.search_runs([exp.experiment_id], f"tags.`{names.TAG_CELL}` != ''", max_results=1000):
        spec = json.loads(r.data.params[names.PARAM_SPEC_JSON])
        rows.append(
            {
                "cell": r.data.tags[names.TAG_CELL],
                "n": int(r.data.params[names.PARAM_N_PARAMS]),
                "trial": int(r.data.params[names.PARAM_TRIAL_NUMBER]),
                "value": float(r.data.params["param.train.lr.value"]),
                "lr": spec["train"]["lr"],
                "loss": r.data.metrics[f"{names.FINAL_PREFIX}min_val_loss"],
                "flops": r.data.metrics[f"{names.FINAL_PREFIX}flops"],
            }
        )
    return {"scope": scope, "wall_s": wall, "completed": counts["completed"], "rows": rows}


def within(rows: list[dict], trials: int) -> list[dict]:
    """The runs of each cell's first `trials` trials (scope study: the study's first trials)."""
    out = []
    for cell in {r["cell"] for r in rows}:
        runs = [r for r in rows if r["cell"] == cell]
        first = sorted({r["trial"] for r in runs})[:trials]
        out += [r for r in runs if r["trial"] in first]
    return out


def best(rows: list[dict], trials: int) -> dict[str, dict]:
    """Per cell, its best run among the first `trials` trials of that cell."""
    out: dict[str, dict] = {}
    for r in within(rows, trials):
        if r["cell"] not in out or r["loss"] < out[r["cell"]]["loss"]:
            out[r["cell"]] = r
    return out


def shared_best(rows: list[dict], trials: int) -> float:
    """scope study: the constant whose mean loss over the cells is lowest (Optuna's best trial)."""
    first = sorted({r["trial"] for r in rows})[:trials]
    means = {
        t: sum(r["loss"] for r in rows if r["trial"] == t) / sum(r["trial"] == t for r in rows) for t in first
    }
    t = min(means, key=means.get)
    return next(r["value"] for r in rows if r["trial"] == t)


def report(results: list[dict], trials: int) -> str:
    cells = sorted({r["cell"]: r["n"] for res in results for r in res["rows"]}.items(), key=lambda kv: kv[1])
    lines = [
        "# A rule's constant searched once for the grid vs once per cell",
        "",
        f"`python benchmarks/bench_rules_scope.py` on `sweeps/rules_scope_demo.yaml`: {len(cells)} "
        f"byte-level LMs (N = {', '.join(f'{n:,}' for _, n in cells)} with embeddings), one pass over "
        "100k tokens each; "
        "lr = value x (N / 1e4)^-0.5, `value` searched by TPE in [1e-3, 1e-1] (log). "
        f"{trials} trials per search: with `search.scope: study` {trials} values each run in every cell "
        "(one Optuna study, a trial's objective the mean of the cells' best validation losses); with "
        f"`search.scope: cell` {trials} values per cell, each cell its own Optuna study. "
        "Loss: best held-out loss of a run, nats per byte. One run each, 2 shared CPU cores.",
        "",
        "## Compute spent",
        "",
        "| scope | runs | training FLOPs | wall time |",
        "|---|---:|---:|---:|",
    ]
    for res in results:
        lines.append(
            f"| {res['scope']} | {len(res['rows'])} | {sum(r['flops'] for r in res['rows']):.3g} | "
            f"{res['wall_s']:.0f} s |"
        )
    lines += [
        "",
        "## Best loss per cell (the learning rate that gave it)",
        "",
        "| N | "
        + " | ".join(
            f"{res['scope']}, {k} trials ({len(within(res['rows'], k))} runs)"
            for res in results
            for k in (2, trials)
        )
        + " |",
        "|---:|" + "---:|" * (2 * len(results)),
    ]
    for cell, n in cells:
        row = [f"{n:,}"]
        for res in results:
            for k in (2, trials):
                b = best(res["rows"], k)[cell]
                row.append(f"{b['loss']:.4f} ({b['lr']:.2g})")
        lines.append("| " + " | ".join(row) + " |")
    means = {
        res["scope"]: sum(best(res["rows"], trials)[c]["loss"] for c, _ in cells) / len(cells)
        for res in results
    }
    shared = next(res for res in results if res["scope"] == "study")
    lines += [
        "",
        "Mean over cells of the best loss: "
        + ", ".join(f"{s} {m:.4f}" for s, m in means.items())
        + f". The study's one constant: value = {shared_best(shared['rows'], trials):.3g} "
        "(the lr at N = 1e4).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "rules_scope.md")
    args = ap.parse_args()
    trials = load_study(STUDY).search.trials_per_cell
    with tempfile.TemporaryDirectory() as tmp:
        results = []
        for scope in SCOPES:
            where = Path(tmp) / scope
            where.mkdir()
            results.append(run_scope(scope, where))
            print(f"{scope}: {len(results[-1]['rows'])} runs in {results[-1]['wall_s']:.0f} s", flush=True)
    text = report(results, trials)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
