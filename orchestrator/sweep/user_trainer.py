"""One run of a researcher's own trainer (trainers/protocol.py), on a worker.

`run_user_trainer(spec, report, checkpoint_dir)` calls the function with a report callback that
keeps the run's history and grokking events, applies success-stop and the study's stopping rule
(the worker's Reporter, as for the built-in trainers) and answers True when the run should stop;
then it turns the function's final metrics and that history into the result the built-in
trainers return, so the driver, MLflow, Optuna, pruning and the report read it unchanged.

The history is kept beside the user's checkpoint, so a run Ray retries after its worker died
keeps the evaluations from before its checkpoint (those its resumed function reports again are
replaced, never doubled; `resumed_from_step` is the last one kept). A run that finished keeps its
whole result there, stop kind included, so running it again (a driver killed before it recorded
the run) returns it without training, as long as its function and RunConfig are the same.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from orchestrator.store import names
from trainers import machine
from trainers.core import (
    COMPLETED,
    DIVERGED,
    REASON_BUDGET,
    STOPPED,
    Events,
    reason_eval_not_finite,
    reason_report,
    reason_success_stop,
)
from trainers.protocol import UserSpec, call_trainer, load_trainer
from trainers.spec import TrainConfig
from trainers.world import World

HISTORY_FILE = "grokscale_history.json"  # the evaluations reported so far (a retry keeps them)
RESULT_FILE = "grokscale_result.json"  # the finished run's result (a rerun returns it)
N_GROUPS = ("total", "embedding", "non_embedding")


def _numeric(metrics: dict) -> dict[str, float]:
    """The numbers of a record (MLflow logs numbers only); bools count as 0/1."""
    return {str(k): float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


def _write_json(path: Path, data: Any) -> None:
    """Whole or not at all: a worker killed mid-write leaves the previous file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


class ReportLog:
    """The report callback the user's function gets: history, events, success-stop, divergence,
    then the study's stopping rule (`forward`, the worker's Reporter)."""

    def __init__(self, cfg: TrainConfig, forward: Callable[[dict], bool] | None, folder: Path | None) -> None:
        self.cfg, self.forward, self.folder = cfg, forward, folder
        self.records: list[dict[str, float]] = []
        self.outcome: tuple[str, str] | None = None
        self.resumed_from_step = 0
        self._fresh = True  # no record yet in this attempt
        if folder is not None and (folder / HISTORY_FILE).exists():
            try:
                self.records = json.loads((folder / HISTORY_FILE).read_text())
            except ValueError:
                self.records = []  # a history that cannot be read: the run's own reports rebuild it

    def __call__(self, metrics: dict) -> bool:
        if not isinstance(metrics, dict) or "step" not in metrics:
            raise TypeError(f"report() takes a dict with at least 'step', got {metrics!r}")
        record = _numeric(metrics)
        step = int(record["step"])
        if self._fresh and self.records:  # a retry: the steps after its checkpoint come again
            kept = [r for r in self.records if r["step"] < step]
            self.resumed_from_step = int(kept[-1]["step"]) if kept else 0
        self.records = [r for r in self.records if r["step"] < step] + [record]
        self._fresh = False
        if self.folder is not None:
            _write_json(self.folder / HISTORY_FILE, self.records)
        if self.outcome is None:
            self.outcome = self._judge(record, step)
        return self.outcome is not None

    def _judge(self, record: dict[str, float], step: int) -> tuple[str, str] | None:
        """How the run ends at this evaluation, if it does: the order of the built-in RunLog."""
        if not all(math.isfinite(v) for v in record.values()):
            return DIVERGED, reason_eval_not_finite(step)
        evals = self.cfg.success_stop_evals
        if (
            evals is not None
            and len(self.records) >= evals
            and all(r.get("val_acc", -1.0) >= self.cfg.val_threshold for r in self.records[-evals:])
        ):
            return COMPLETED, reason_success_stop(self.cfg.val_threshold, evals)
        if self.forward is not None and self.forward(record):
            return STOPPED, reason_report(step)
        return None

    def history(self) -> dict[str, list[float]]:
        """Columns of equal length, one entry per evaluation (NaN where a record lacked a key)."""
        keys = list(dict.fromkeys(k for r in self.records for k in r))
        return {k: [r.get(k, math.nan) for r in self.records] for k in keys}

    def events(self) -> Events:
        events, cfg = Events(), self.cfg
        for r in self.records:
            step = int(r["step"])
            if events.memorization_step is None and r.get("train_acc", -1.0) >= cfg.train_threshold:
                events.memorization_step = step
            if events.generalization_step is None and r.get("val_acc", -1.0) >= cfg.val_threshold:
                events.generalization_step = step
            if events.diverged_step is None and not all(math.isfinite(v) for v in r.values()):
                events.diverged_step = step
        return events


def n_params_of(value: Any) -> dict[str, int]:
    """The N the function returned: a dict by group (count_params_by_group) or one count."""
    if value is None:
        return {}
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {"total": int(value)}
    if isinstance(value, dict):
        return {k: int(v) for k, v in value.items() if k in N_GROUPS and isinstance(v, (int, float))}
    raise TypeError(f"n_params must be a count or a dict by group {N_GROUPS}, got {value!r}")


def result_of(log: ReportLog, returned: Any, wall_time_s: float) -> dict:
    """The built-in trainers' result shape (trainers/core.py TrainResult) for a user run."""
    if returned is None:
        returned = {}
    if not isinstance(returned, dict):
        raise TypeError(f"the trainer must return a dict of final metrics, got a {type(returned).__name__}")
    n_params = n_params_of(returned.get("n_params"))
    history = log.history()
    final = {k: v[-1] for k, v in history.items()}
    final.update(_numeric({k: v for k, v in returned.items() if k != "n_params"}))
    steps = int(final.get("step", 0))
    status, reason = log.outcome or (COMPLETED, REASON_BUDGET)
    return {
        "status": status,
        "reason": reason,
        "steps": steps,
        "final": final,
        "history": history,
        "events": asdict(log.events()),
        "n_params": n_params,
        "n_train": int(returned.get("n_train", 0)),
        "wall_time_s": wall_time_s,
        "eval_time_s": 0.0,
        "resumed_from_step": log.resumed_from_step,
        "task_info": {},
        "flops": {},
        "checkpoint_note": None,
        "runtime": {"machine": machine.facts(torch.get_num_threads())},
    }


def run_user_trainer(
    spec: UserSpec,
    report: Callable[[dict], bool] | None,
    checkpoint_dir: str | None,
    finish: Callable[[dict], dict] | None = None,
) -> dict:
    """One run of the study's trainer, as a result dict like TrainResult.to_dict(). `finish`
    (the worker's Reporter.finish: which stopping rule fired, its StopKind) completes the result
    before it is kept, so a run asked again after it ended returns it whole, its stop kind with it."""
    folder = Path(checkpoint_dir) if checkpoint_dir else None
    note = None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        done, note = finished_result(folder, spec)
        if done is not None:  # it finished before: never train a finished run again
            return done
    for root in reversed(spec.sys_path):  # where the driver imported the trainer's package from
        if root not in sys.path:
            sys.path.insert(0, root)
    fn = load_trainer(spec.trainer)
    started = time.time()
    world = World.current()
    # Rank 0 keeps the history and asks the stopping rule; every rank gets its answer.
    log = ReportLog(spec.train, report if world.is_main else None, folder if world.is_main else None)
    config = replace(spec.run_config(), world=world.as_dict())

    def agreed(metrics: dict) -> bool:
        return world.agree(log(metrics))

    returned = call_trainer(fn, config, log if world.size == 1 else agreed, str(folder) if folder else "")
    result = result_of(log, returned, time.time() - started)
    result["checkpoint_note"] = note
    if finish is not None:
        result = finish(result)
    if folder is not None and world.is_main:
        _write_json(folder / RESULT_FILE, {"spec_digest": spec_digest(spec), "result": result})
    return result


def spec_digest(spec: UserSpec) -> str:
    """What makes a run this run: its function and its RunConfig (not where its package was found)."""
    text = json.dumps({"trainer": spec.trainer, "config": spec.config}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def finished_result(folder: Path, spec: UserSpec) -> tuple[dict | None, str | None]:
    """The result a finished run kept in its folder, if it is this spec's; else None, and why
    when there was one (the study changed since: the run trains again, as a built-in run whose
    checkpoint belongs to another spec starts over)."""
    path = folder / RESULT_FILE
    if not path.exists():
        return None, None
    try:
        saved = json.loads(path.read_text())
    except ValueError:
        return None, f"the finished run's result {path} could not be read; trained again"
    if not isinstance(saved, dict) or saved.get("spec_digest") != spec_digest(spec) or "result" not in saved:
        return None, f"the finished run's result {path} belongs to another spec; trained again"
    return saved["result"], None


# The MLflow params of a run's N, by the group each holds (the report reads these).
N_PARAMS = {
    names.PARAM_N_PARAMS: "total",
    names.PARAM_N_PARAMS_NON_EMBEDDING: "non_embedding",
    names.PARAM_N_PARAMS_EMBEDDING: "embedding",
}


def reported_n_params(result: dict, target_n: int | None) -> dict[str, int]:
    """The N params of a user trainer's run: what it reported by group, else the grid's target."""
    counts = dict(result.get("n_params") or {})
    if "total" not in counts and {"embedding", "non_embedding"} <= set(counts):
        counts["total"] = counts["embedding"] + counts["non_embedding"]
    if not counts and target_n is not None:
        counts = {"total": target_n}
    return {param: int(counts[group]) for param, group in N_PARAMS.items() if group in counts}
