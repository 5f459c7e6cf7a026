"""What a trial costs the driver in Optuna on PostgreSQL: Optuna's own storage (its wrapper over
RDBStorage, which reads every trial in flight back from the database) against HeldStorage
(orchestrator/store/held_storage.py: the same writes, reads from memory), in one run.

Each trial does what the driver does to one: created, a value drawn, two run-id attributes,
then, with `--in-flight` trials running, a status attribute and `tell`. Samplers: TPE (reads
every trial on each draw) and random (reads none: what is left is the writes). It starts a
throwaway PostgreSQL (tests/support/postgres.py) and prints driver CPU-ms per trial.

Usage: python benchmarks/bench_held_storage.py [--trials 300] [--in-flight 50] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import optuna

from orchestrator.store.held_storage import HeldStorage

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support.postgres import Postgres, unavailable  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)


def cpu_ms_per_trial(
    storage, name: str, sampler: optuna.samplers.BaseSampler, trials: int, in_flight: int
) -> float:
    study = optuna.create_study(storage=storage, study_name=name, sampler=sampler)
    study_id = study._study_id
    running: list[optuna.Trial] = []
    start = time.process_time()
    for _ in range(trials):
        trial = optuna.Trial(study, study._storage.create_new_trial(study_id))  # as CellSearch asks
        trial.suggest_float("train.weight_decay", 0.01, 3.0, log=True)
        trial.set_user_attr("run_id.0", "0" * 32)
        trial.set_user_attr("run_id.1", "1" * 32)
        running.append(trial)
        if len(running) > in_flight:
            done = running.pop(0)
            done.set_user_attr("status", "completed")
            study.tell(done, 0.5)
    return (time.process_time() - start) / trials * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=300)
    ap.add_argument("--in-flight", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "held_storage.json")
    args = ap.parse_args()
    why = unavailable()
    if why:
        sys.exit(f"PostgreSQL: {why}")
    pg = Postgres()
    pg.start()
    rows = []
    try:
        url = pg.url("optuna", "postgresql+psycopg2")
        for rep in range(args.repeat):  # alternated, so drift on a busy machine hits both alike
            for sampler in ("tpe", "random"):
                row = {"sampler": sampler, "repeat": rep}
                for kind in ("optuna", "held"):
                    name = f"{sampler}-{kind}-{rep}"
                    backend = optuna.storages.RDBStorage(url)
                    storage = backend if kind == "optuna" else HeldStorage(backend, [name])
                    make = optuna.samplers.TPESampler if sampler == "tpe" else optuna.samplers.RandomSampler
                    row[kind] = cpu_ms_per_trial(storage, name, make(seed=rep), args.trials, args.in_flight)
                row["ratio"] = row["held"] / row["optuna"]
                rows.append(row)
                print(
                    f"{sampler:6s} Optuna's storage {row['optuna']:6.1f} CPU-ms a trial, HeldStorage "
                    f"{row['held']:6.1f} ({row['ratio']:.2f}x)",
                    flush=True,
                )
    finally:
        pg.remove()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"trials": args.trials, "in_flight": args.in_flight, "rows": rows}, indent=1)
    )
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
