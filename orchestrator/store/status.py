"""`grokscale status`: per-cell trial counts and the best trial, read from the Optuna storage."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import TrialState

from orchestrator.study import Study
from orchestrator.study.grid import Cell
from orchestrator.sweep.search import open_storage


def study_status(study: Study, cells: list[Cell]) -> list[dict]:
    url = study.storage_url
    storage = open_storage(url) if "://" in url or Path(url).exists() else None  # never create one
    names = {s.study_name for s in optuna.get_all_study_summaries(storage)} if storage else set()
    rows = []
    for cell in cells:
        row = {"cell": cell.key, "n_params": cell.n(study.grid.n_convention), "n_train": cell.n_train,
               "complete": 0, "pruned": 0, "running": 0, "queued": 0, "failed": 0, "best_value": None, "best_params": None}
        name = f"{study.name}/{cell.key}"
        if name in names:
            ostudy = optuna.load_study(study_name=name, storage=storage)
            trials = ostudy.get_trials(deepcopy=False)
            row["complete"] = sum(t.state == TrialState.COMPLETE for t in trials)
            row["pruned"] = sum(t.state == TrialState.PRUNED for t in trials)
            running = [t for t in trials if t.state == TrialState.RUNNING]
            # Asked ahead of its turn (run.py, phase pruning) but no run started yet: queued.
            row["queued"] = sum(not any(k.startswith("run_id.") for k in t.user_attrs) for t in running)
            row["running"] = len(running) - row["queued"]
            row["failed"] = sum(t.state == TrialState.FAIL for t in trials)
            if row["complete"]:
                best = ostudy.best_trials
                row["best_value"] = best[0].values if len(best[0].values) > 1 else best[0].value
                row["best_params"] = best[0].params
        rows.append(row)
    return rows
