"""What runs on a Ray worker: one training run (`train_task`) or several packed into one batched
model (`packed_task`), each with a `Reporter` that streams its evaluations to the driver's inbox
and applies the stop rules the driver answers with."""

from __future__ import annotations

import json
import os
import time
import traceback

import ray

from orchestrator.store.names import RunStatus
from orchestrator.sweep.outcome import STOP_KIND
from orchestrator.sweep.stopping import RunState, StopRules, first_stop

USER_TRAINER_KEY = "trainer"  # a spec with it runs the study's own function, never packed
UNSET = "unset"  # the inbox's answer for a run whose rules the driver has not changed since launch


class Reporter:
    """A run's report hook on its worker: posts every evaluation to the inbox (fire and forget,
    so the trainer never waits), picks up the stop rules the driver answers with once they have
    arrived, and applies them to the run's own evaluations (orchestrator/sweep/stopping)."""

    def __init__(self, inbox, run_id: str, spec, rules: StopRules = ()) -> None:
        self.inbox, self.run_id, self.rules = inbox, run_id, rules
        self.state = RunState(spec.train.train_threshold, spec.train.val_threshold)
        self.pending: list = []
        self.fired: tuple[str, str] | None = None  # (stop kind, reason) of the rule that stopped the run

    def __call__(self, record: dict) -> bool:
        self._pick_up_answers()
        self.pending.append(self.inbox.put.remote((self.run_id, record)))
        self.state.see(record)
        step = int(record["step"])
        stop = first_stop(self.rules, self.state, step)
        if stop is not None:
            kind, why = stop
            self.fired = (kind.value, f"{why} (stopped at step {step})")
            return True
        return False

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
        self.pending = self.pending[self.pending.index(latest) + 1:]

    def finish(self, out: dict) -> dict:
        if out.get("status") == RunStatus.STOPPED and self.fired:
            out[STOP_KIND], out["reason"] = self.fired
        return out


def _where(**more) -> dict:
    return {"node_id": ray.get_runtime_context().get_node_id(), "worker_pid": os.getpid(), **more}


def _failed() -> dict:
    return {"status": RunStatus.FAILED.value, "reason": traceback.format_exc(limit=5)[-4000:]}


@ray.remote
def train_task(spec_json: str, checkpoint_dir: str, inbox, run_id: str, rules: StopRules = ()) -> dict:
    """One training run on a worker. Metrics go to the inbox as they happen (best effort: the
    result carries the whole history too); an error in training comes back as a failed result,
    so only a dead worker makes Ray retry."""
    from trainers import TrainSpec, train  # imported on the worker
    from trainers.protocol import UserSpec

    started = time.time()
    where = _where()
    try:
        if USER_TRAINER_KEY in json.loads(spec_json):  # the study's own trainer (trainers/protocol.py)
            from orchestrator.sweep.user_trainer import run_user_trainer

            spec = UserSpec.model_validate_json(spec_json)
            report = Reporter(inbox, run_id, spec, rules)
            out = report.finish(run_user_trainer(spec, report, checkpoint_dir))
        else:
            spec = TrainSpec.model_validate_json(spec_json)
            report = Reporter(inbox, run_id, spec, rules)
            out = report.finish(train(spec, report=report, checkpoint_dir=checkpoint_dir).to_dict())
    except Exception:  # noqa: BLE001 - a trial's failure is data, never a crashed sweep
        out = _failed()
    return {**out, **where, "started_at": started, "ended_at": time.time()}


@ray.remote
def packed_task(spec_jsons: list[str], checkpoint_dirs: list[str], inbox, run_ids: list[str],
                rules: list[StopRules]) -> list[dict]:
    """Several runs of one cell trained together as one batched model (trainers/packed.py), each
    streaming under its own run id and stopped by its own rules; the results come back in order,
    one per run."""
    from trainers import TrainSpec
    from trainers.packed import train_packed

    started = time.time()
    where = _where(packed=len(run_ids))
    try:
        specs = [TrainSpec.model_validate_json(s) for s in spec_jsons]
        reports = [Reporter(inbox, r, spec, rs) for r, spec, rs in zip(run_ids, specs, rules)]
        outs = [rep.finish(r.to_dict()) for rep, r in zip(reports, train_packed(specs, reports, checkpoint_dirs))]
    except Exception:  # noqa: BLE001 - the pack's failure is data: every run in it failed
        outs = [_failed()] * len(run_ids)
    ended = time.time()
    return [{**out, **where, "started_at": started, "ended_at": ended} for out in outs]
