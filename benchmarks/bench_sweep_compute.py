"""Compute per sweep: the grokking phase diagram with success-stop and per-cell pruning, against
the same grid at a naive fixed step budget with no stopping.

Both are real studies (`grokscale run`: Ray, Optuna, MLflow) of sweeps/grokking_modular.yaml,
shrunk to fit a laptop by --set overrides (a smaller p and model, a shorter budget; the grid of
data fractions, the weight decay range, the sampler and the trials per cell are the study's
own). The QMC sampler draws the same weight decays in both, so runs pair up by cell and trial.

  naive    success_stop_evals: null, prune.mode: off; every run trains its whole budget
  stopped  the study's own success-stop and `prune.mode: phase` (orchestrator/sweep/stopping/phase.py)

Reported: total training steps (stopped / naive; target <= 0.25), the phase of every run and
every cell (analysis/grokking.py) in both, and every run that generalized within the budget in
the naive study but not in the stopped one (target: none). A run's steps are the steps it
trained, as its MLflow run records them (final metric `steps`).

Usage: python benchmarks/bench_sweep_compute.py [--out benchmarks/results/sweep_compute]
           [--set key=value ...] (more overrides, applied to both studies)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: the repo's packages come first

# After the sys.path line above, which these imports need.
from orchestrator.analysis.grokking import grokking_phases  # noqa: E402
from orchestrator.store.results import load_results  # noqa: E402
from orchestrator.study import load_study  # noqa: E402

STUDY = ROOT / "sweeps" / "grokking_modular.yaml"
# p = 113, d_model 128 and 20k steps (about 12 CPU-days for the naive grid) down to what a
# laptop runs in minutes; the ratios of budget to grokking time stay those of the study.
SHRINK = [
    "task.p=47",
    'grid.n=[{"d_model": 32}]',
    "model.d_mlp=128",
    "train.steps=10000",
    "train.eval_every=100",
    "train.success_stop_evals=3",
    "train.checkpoint_every=null",
    "train.lr=3e-3",
]
NAIVE = ["train.success_stop_evals=null", "prune.mode=off"]


def run_study(name: str, overrides: list[str], out: Path, reuse: bool = False) -> dict:
    """Run the study afresh (or, with `reuse`, read a finished one run with the same overrides:
    on CPU every run is bitwise repeatable, so its steps and phases would come out the same)."""
    workdir = out / name
    overrides = overrides + [
        f"name=grokking_modular_{name}",
        f"workdir={workdir}",
        f"tracking.uri=sqlite:///{workdir}/mlflow.db",
    ]
    done = workdir / "finished.json"
    digest = load_study(STUDY, overrides).digest()  # the whole resolved study
    if reuse and done.exists() and json.loads(done.read_text()).get("digest") == digest:
        wall = json.loads(done.read_text())["wall_s"]
    else:
        if workdir.exists():
            shutil.rmtree(workdir)
        cmd = [sys.executable, "-m", "orchestrator.cli", "run", str(STUDY), "--no-report"]
        for o in overrides:
            cmd += ["--set", o]
        t = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=ROOT)
        wall = time.perf_counter() - t
        done.write_text(json.dumps({"overrides": overrides, "digest": digest, "wall_s": wall}))
    study = load_study(STUDY, overrides)
    res = load_results(study.tracking.uri, study.experiment_name, with_curves=False)
    runs = grokking_phases(res.runs)
    return {"study": study, "runs": runs, "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "sweep_compute")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument(
        "--reuse-naive",
        action="store_true",
        help="read the naive study from an earlier run with the same overrides instead of running it",
    )
    ap.add_argument("--naive-only", action="store_true")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    shrink = SHRINK + args.overrides
    print("naive: fixed budget, no stopping", flush=True)
    naive = run_study("naive", shrink + NAIVE, args.out, reuse=args.reuse_naive)
    if args.naive_only:
        print(
            grokking_phases(naive["runs"])[
                [
                    "cell",
                    "trial_number",
                    "param.train.weight_decay",
                    "memorization_step",
                    "generalization_step",
                    "phase",
                ]
            ].to_string()
        )
        return
    print("stopped: success-stop and per-cell pruning", flush=True)
    stopped = run_study("stopped", shrink, args.out)

    key = ["cell", "trial_number", "seed"]
    a = naive["runs"].set_index(key)
    b = stopped["runs"].set_index(key)
    if set(a.index) != set(b.index):
        sys.exit(f"the two studies ran different trials: {sorted(set(a.index) ^ set(b.index))}")
    b = b.loc[a.index]
    wd = "param.train.weight_decay"
    if not (a[wd] == b[wd]).all():
        sys.exit("the two studies drew different weight decays; the comparison needs the same trials")
    steps_naive, steps_stopped = float(a["steps"].sum()), float(b["steps"].sum())
    generalized = a["generalization_step"].notna()
    lost = a.index[generalized & b["generalization_step"].isna()]
    moved = a.index[
        generalized
        & b["generalization_step"].notna()
        & (a["generalization_step"] != b["generalization_step"])
    ]
    phase_same = a["phase"] == b["phase"]
    cells = {}
    for cell in a.index.get_level_values("cell").unique():
        pa, pb = a.loc[cell, "phase"].tolist(), b.loc[cell, "phase"].tolist()
        cells[cell] = {
            "d": float(a.loc[cell, "d_value"].iloc[0]),
            "naive": pa,
            "stopped": pb,
            "same": pa == pb,
            "steps_naive": float(a.loc[cell, "steps"].sum()),
            "steps_stopped": float(b.loc[cell, "steps"].sum()),
            "pruned": int(b.loc[cell, "reason"].str.startswith("pruned").sum()),
            "success_stopped": int(b.loc[cell, "reason"].str.startswith("success-stop").sum()),
        }
    summary = {
        "overrides": shrink,
        "runs": len(a),
        "naive_reused": args.reuse_naive,
        "total_steps": {"naive": steps_naive, "stopped": steps_stopped, "ratio": steps_stopped / steps_naive},
        "wall_s": {
            "naive": naive["wall_s"],
            "stopped": stopped["wall_s"],
            "ratio": stopped["wall_s"] / naive["wall_s"],
        },
        "runs_same_phase": int(phase_same.sum()),
        "cells_same_phases": sum(c["same"] for c in cells.values()),
        "cells": len(cells),
        "generalized_in_naive": int(generalized.sum()),
        "generalized_in_naive_but_not_stopped": [list(map(str, i)) for i in lost],
        "generalization_step_differs": [list(map(str, i)) for i in moved],
        "phases_naive": a["phase"].value_counts().to_dict(),
        "pruned": int(b["reason"].str.startswith("pruned").sum()),
        "success_stopped": int(b["reason"].str.startswith("success-stop").sum()),
        "target_met": bool(steps_stopped <= 0.25 * steps_naive and phase_same.all() and not len(lost)),
        "per_cell": cells,
        "load_average": os.getloadavg()[0],
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(json.dumps({k: v for k, v in summary.items() if k != "per_cell"}, indent=2, default=str))
    for cell, c in cells.items():
        print(
            f"{cell}: steps {c['steps_stopped']:.0f}/{c['steps_naive']:.0f}, pruned {c['pruned']}, "
            f"phases {'same' if c['same'] else 'DIFFER'}: {c['naive']}"
        )


if __name__ == "__main__":
    main()
