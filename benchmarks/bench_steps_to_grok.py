"""Steps to grok: Nanda et al.'s baseline against the best regularization an Optuna search finds.

Canonical modular addition (p = 113, 30% of pairs, Nanda et al. 2023's 1-layer transformer
without LayerNorm, full batch). Three phases, each saved as JSON under --out as it ends, so an
interrupted benchmark goes on where it stopped (a phase whose file exists for the same study
file and code is not run again; --fresh discards them):

  baseline  the study's fixed sections unchanged: AdamW lr 1e-3, weight decay 1, betas
            (0.9, 0.98), no Grokfast, init scale 1, on the held-out seeds (1, 2, 3 by
            default) until validation accuracy has stayed >= 0.95 for 3 evaluations;
  search    `grokscale run sweeps/grok_fast.yaml`, a real study (Ray, Optuna, MLflow) on seed 0
            whose space holds weight decay, Grokfast's EMA filter (alpha, lambda) and the init
            scale; objective: the generalization step, minimized;
  confirm   the search's best values on the same held-out seeds as the baseline.

Steps to grok = the generalization step: the first evaluation with validation accuracy >= 0.95
(trainers/spec.py). The figure is the ratio of the best values' steps to the baseline's, per
seed and as the ratio of the means. Target: <= 0.1 on every seed.

Usage: python benchmarks/bench_steps_to_grok.py [--phase all|baseline|search|confirm]
           [--seeds 1 2 3] [--workers 2] [--out benchmarks/results/steps_to_grok]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator.study import load_study  # noqa: E402
from trainers import TrainSpec, train  # noqa: E402

STUDY = ROOT / "sweeps" / "grok_fast.yaml"
# Nanda et al. (2023): AdamW, lr 1e-3, weight decay 1, betas (0.9, 0.98), 10 warmup steps.
BASELINE = {
    "train.lr": 1e-3,
    "train.weight_decay": 1.0,
    "train.betas": [0.9, 0.98],
    "train.warmup_steps": 10,
    "train.grokfast": False,
    "train.init_scale": 1.0,
}
BASELINE_BUDGET = 40_000  # steps; Nanda et al. train 40k full-batch epochs
EVAL_EVERY = 50


def fingerprint(*texts: str, code: tuple[str, ...] = ("trainers",)) -> str:
    """What a result came from (its runs' specs, the study file) and the code that computed it:
    a stale result is never reused."""
    h = hashlib.sha256()
    for text in texts:
        h.update(text.encode())
    for part in code:
        for f in sorted((ROOT / part).rglob("*.py")):
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def run_spec(study, params: dict, seed: int, budget: int) -> TrainSpec:
    """One run of the study's only cell: its fixed sections, then `params`, at `budget` steps."""
    entry, d = study.grid.n[0], study.grid.d[0]
    data = study.trial_data(
        entry,
        d,
        {
            **params,
            "train.steps": budget,
            "train.eval_every": EVAL_EVERY,
            "train.success_stop_evals": 3,
            "train.checkpoint_every": None,
        },
        seed,
    )
    return TrainSpec.model_validate(data)


def _train(spec_json: str) -> dict:
    spec = TrainSpec.model_validate_json(spec_json)
    r = train(spec)
    return {
        "seed": spec.seed,
        "generalization_step": r.events.generalization_step,
        "memorization_step": r.events.memorization_step,
        "steps": r.steps,
        "status": r.status,
        "final_val_acc": r.final.get("val_acc"),
        "wall_time_s": r.wall_time_s,
    }


def train_seeds(study, params: dict, seeds: list[int], budget: int, workers: int) -> list[dict]:
    jsons = [run_spec(study, params, s, budget).model_dump_json() for s in seeds]
    with mp.get_context("spawn").Pool(min(workers, len(jsons))) as pool:
        out = []
        for row in pool.imap(_train, jsons):
            print(
                f"  seed {row['seed']}: generalized at step {row['generalization_step']} "
                f"({row['wall_time_s']:.0f} s)",
                flush=True,
            )
            out.append(row)
    return out


def best_params(study) -> dict:
    import optuna

    from orchestrator.study.grid import build_cells
    from orchestrator.sweep.search import cell_study, open_storage

    cell = build_cells(study)[0]
    ostudy = cell_study(study, cell, 0, open_storage(study.storage_url))
    best = ostudy.best_trial
    return {
        "params": dict(best.params),
        "search_generalization_step": best.value,
        "trial": best.number,
        "trials": len(ostudy.get_trials(states=[optuna.trial.TrialState.COMPLETE])),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phase", choices=["all", "baseline", "search", "confirm"], default="all")
    ap.add_argument("--study", type=Path, default=STUDY)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "steps_to_grok")
    ap.add_argument("--fresh", action="store_true", help="discard saved phases and the search's store")
    args = ap.parse_args()
    study = load_study(args.study)
    if args.fresh and args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    specs = lambda params: [run_spec(study, params, s, BASELINE_BUDGET).model_dump_json() for s in args.seeds]  # noqa: E731
    tags = {"baseline": fingerprint(*specs(BASELINE)), "search": fingerprint(args.study.read_text())}

    def saved(phase: str) -> dict | None:
        f = args.out / f"{phase}.json"
        if f.exists():
            data = json.loads(f.read_text())
            tag = tags.get(phase) or fingerprint(*specs(data.get("params", {})), tags["search"])
            if data.get("fingerprint") == tag:
                return data
        return None

    def save(phase: str, data: dict) -> dict:
        tag = tags.get(phase) or fingerprint(*specs(data["params"]), tags["search"])
        data = {"fingerprint": tag, "seeds": args.seeds, "load_average": os.getloadavg()[0], **data}
        (args.out / f"{phase}.json").write_text(json.dumps(data, indent=2))
        return data

    phases = ["baseline", "search", "confirm"] if args.phase == "all" else [args.phase]
    if "baseline" in phases and saved("baseline") is None:
        print(f"baseline (Nanda et al. 2023) on seeds {args.seeds}", flush=True)
        t = time.perf_counter()
        rows = train_seeds(study, BASELINE, args.seeds, BASELINE_BUDGET, args.workers)
        save("baseline", {"params": BASELINE, "runs": rows, "wall_s": time.perf_counter() - t})
    if "search" in phases and saved("search") is None:
        workdir = args.out / "search"
        print(f"search: grokscale run {args.study} (store in {workdir})", flush=True)
        t = time.perf_counter()
        overrides = [f"workdir={workdir}", f"tracking.uri=sqlite:///{workdir}/mlflow.db"]
        cmd = [sys.executable, "-m", "orchestrator.cli", "run", str(args.study), "--no-report"]
        for o in overrides:
            cmd += ["--set", o]
        subprocess.run(cmd, check=True, cwd=ROOT)
        study_run = load_study(args.study, overrides)
        save("search", {**best_params(study_run), "wall_s": time.perf_counter() - t})
    if "confirm" in phases and saved("confirm") is None:
        search = saved("search")
        if search is None:
            sys.exit("confirm needs the search phase first")
        print(f"confirm: best values {search['params']} on seeds {args.seeds}", flush=True)
        t = time.perf_counter()
        rows = train_seeds(study, search["params"], args.seeds, study.train["steps"] * 5, args.workers)
        save("confirm", {"params": search["params"], "runs": rows, "wall_s": time.perf_counter() - t})

    base, conf = saved("baseline"), saved("confirm")
    if base is None or conf is None:
        return
    b = {r["seed"]: r["generalization_step"] for r in base["runs"]}
    c = {r["seed"]: r["generalization_step"] for r in conf["runs"]}
    ratios = {s: (c[s] / b[s] if c[s] is not None and b[s] else None) for s in args.seeds}
    mean = lambda xs: sum(xs) / len(xs) if xs and None not in xs else None  # noqa: E731
    mb, mc = mean([b[s] for s in args.seeds]), mean([c[s] for s in args.seeds])
    summary = {
        "baseline_steps": b,
        "best_steps": c,
        "ratio_per_seed": ratios,
        "ratio_of_means": mc / mb if mb and mc is not None else None,
        "target_met": all(r is not None and r <= 0.1 for r in ratios.values()),
        "best_params": conf["params"],
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
