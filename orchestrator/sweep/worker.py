"""What runs on a Ray worker: one training run (`train_task`) or several packed into one batched
model (`packed_task`), each with a `Reporter` that streams its evaluations to the driver's inbox
and applies the stop rules the driver answers with."""

from __future__ import annotations

import json
import os
import time
import traceback
from pathlib import Path

import ray

from orchestrator.store.names import RunStatus
from orchestrator.sweep.outcome import STOP_KIND
from orchestrator.sweep.stopping import RunState, StopRules, first_stop

STOP_FILE = (
    "grokscale_stop.json"  # beside a run's checkpoint: [stop kind, reason] of the rule that stopped it
)
UNSET = "unset"  # the inbox's answer for a run whose rules the driver has not changed since launch


class Reporter:
    """A run's report hook on its worker: posts every evaluation to the inbox (fire and forget,
    so the trainer never waits), picks up the stop rules the driver answers with once they have
    arrived, and applies them to the run's own evaluations (orchestrator/sweep/stopping).

    The rule that stopped the run is kept in its checkpoint folder too: a run asked again after
    it ended (its driver died before recording it) returns its finished result without a single
    report, and its stop kind and reason come from there."""

    def __init__(
        self, inbox, run_id: str, spec, rules: StopRules = (), checkpoint_dir: str | None = None
    ) -> None:
        self.inbox, self.run_id, self.rules = inbox, run_id, rules
        self.state = RunState(spec.train.train_threshold, spec.train.val_threshold)
        self.pending: list = []
        self.fired: tuple[str, str] | None = None  # (stop kind, reason) of the rule that stopped the run
        self.stop_file = Path(checkpoint_dir) / STOP_FILE if checkpoint_dir else None

    def __call__(self, record: dict) -> bool:
        self._pick_up_answers()
        self.pending.append(self.inbox.put.remote((self.run_id, record)))
        self.state.see(record)
        step = int(record["step"])
        stop = first_stop(self.rules, self.state, step)
        if stop is not None:
            kind, why = stop
            self.fired = (kind.value, f"{why} (stopped at step {step})")
            self._keep()
            return True
        return False

    def _keep(self) -> None:
        """The fired rule beside the run's checkpoint, whole or not at all."""
        if self.stop_file is None:
            return
        self.stop_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.stop_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.fired))
        os.replace(tmp, self.stop_file)

    def _kept(self) -> tuple[str, str] | None:
        if self.stop_file is None:
            return None
        try:
            kind, reason = json.loads(self.stop_file.read_text())
        except (OSError, ValueError, TypeError):  # none kept, or not whole
            return None
        return kind, reason

    def _pick_up_answers(self) -> None:
        """The newest answer that has arrived wins (an empty tuple included); never waits."""
        if not self.pending:
            return
        ready, _ = ray.wait(self.pending, num_returns=len(self.pending), timeout=0)
        if not ready:
            return
        done = set(ready)
        latest = [ref for ref in self.pending if ref in done][-1]
        answer = ray.get(latest)
        if answer != UNSET:
            self.rules = answer
        self.pending = self.pending[self.pending.index(latest) + 1 :]

    def finish(self, out: dict) -> dict:
        """The stop kind and the rule's reason of a stopped run: fired in this attempt, else kept
        by the attempt that stopped it (this one only returned its finished result)."""
        if out.get("status") == RunStatus.STOPPED and not out.get(STOP_KIND):
            fired = self.fired or self._kept()
            if fired:
                out[STOP_KIND], out["reason"] = fired
        return out


def where(**more) -> dict:
    return {"node_id": ray.get_runtime_context().get_node_id(), "worker_pid": os.getpid(), **more}


def failed_result() -> dict:
    return {"status": RunStatus.FAILED.value, "reason": traceback.format_exc(limit=5)[-4000:]}


@ray.remote
def train_task(spec_json: str, checkpoint_dir: str, inbox, run_id: str, rules: StopRules = ()) -> dict:
    """One training run on a worker. Metrics go to the inbox as they happen (best effort: the
    result carries the whole history too); an error in training comes back as a failed result,
    so only a dead worker makes Ray retry."""
    from trainers import TrainSpec, train  # imported on the worker
    from trainers.protocol import UserSpec, is_user_spec

    started = time.time()
    place = where()
    try:
        if is_user_spec(spec_json):  # the study's own trainer (trainers/protocol.py), never packed
            from orchestrator.sweep.user_trainer import run_user_trainer

            spec = UserSpec.model_validate_json(spec_json)
            report = Reporter(inbox, run_id, spec, rules, checkpoint_dir)
            out = run_user_trainer(spec, report, checkpoint_dir, finish=report.finish)
        else:
            spec = TrainSpec.model_validate_json(spec_json)
            report = Reporter(inbox, run_id, spec, rules, checkpoint_dir)
            out = report.finish(train(spec, report=report, checkpoint_dir=checkpoint_dir).to_dict())
    except Exception:  # noqa: BLE001 - a trial's failure is data, never a crashed sweep
        out = failed_result()
    return {**out, **place, "started_at": started, "ended_at": time.time()}


@ray.remote
def packed_task(
    spec_jsons: list[str], checkpoint_dirs: list[str], inbox, run_ids: list[str], rules: list[StopRules]
) -> list[dict]:
    """Several runs of one cell trained together as one batched model (trainers/packed.py), each
    streaming under its own run id and stopped by its own rules; the results come back in order,
    one per run."""
    from trainers import TrainSpec
    from trainers.packed import train_packed

    started = time.time()
    place = where(packed=len(run_ids))
    try:
        specs = [TrainSpec.model_validate_json(s) for s in spec_jsons]
        reports = [
            Reporter(inbox, r, spec, rs, d) for r, spec, rs, d in zip(run_ids, specs, rules, checkpoint_dirs)
        ]
        outs = [
            rep.finish(r.to_dict()) for rep, r in zip(reports, train_packed(specs, reports, checkpoint_dirs))
        ]
    except Exception:  # noqa: BLE001 - the pack's failure is data: every run in it failed
        outs = [failed_result()] * len(run_ids)
    ended = time.time()
    return [{**out, **place, "started_at": started, "ended_at": ended} for out in outs]
