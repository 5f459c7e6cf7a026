"""Gates: runs of a study that wait at steps the test names until the test opens them, so a
fault lands when an event the test controls has happened (a run waits at step k; its last
checkpoint is the one before), never after a guessed delay or in a race with training speed.

The run's side is a user trainer (trainers/protocol.py) whose `report` is `gated`: before it
reports step k, one of the study's `train.gate_steps`, the run writes `gate-k.reached` (its
step and pid, as JSON) beside its checkpoint and waits until the test writes `gate-k.open` there,
or `open` in the folder `train.gate_dir` (every gate, now and later). Both keys are the trainer's
own: grokscale passes them through. The protocol saves a checkpoint after each report, so a
run waiting at k has reported and saved through the evaluation before k, and a worker killed
there resumes from that checkpoint and reaches the gate at k again.

- `support.gates:run` is a stand-in for training: a deterministic curve, checkpointed as the
  protocol asks, for faults that need no real training (a server, a node, Ray going away).
- `support.gates:wrapped` runs the trainer named in `train.gated_trainer` with a gated report:
  the example's own trainer, say, whose own checkpoint is what a test proves.

The test's side is `Gates`. The trainer finds this module through PYTHONPATH (`TESTS`), as a
researcher's package would be found."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

from trainers.protocol import RunConfig, call_trainer, load_trainer

TESTS = str(Path(__file__).resolve().parents[1])  # the folder `support` imports from
CHECKPOINT = "gated.json"  # `run`'s checkpoint
WAIT_S = 900.0  # a gate no test opened: the run fails saying so, rather than hang the suite


# ------------------------------------------------------------------------------ the run's side


def _write(path: Path, text: str) -> None:
    """Whole or not at all: the reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _wait(step: int, folder: Path, gate_dir: Path) -> None:
    _write(folder / f"gate-{step}.reached", json.dumps({"step": step, "pid": os.getpid()}))
    opened = (folder / f"gate-{step}.open", gate_dir / "open")
    parent, deadline = os.getppid(), time.monotonic() + WAIT_S
    while not any(p.exists() for p in opened):
        if os.getppid() != parent:  # its raylet died: a worker left behind must not wait on
            os._exit(1)
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {step} in {folder} was never opened")
        time.sleep(0.05)


def gated(report: Callable[[dict], bool], config: RunConfig, checkpoint_dir: str) -> Callable[[dict], bool]:
    """`report`, waiting at the study's train.gate_steps before it reports them."""
    steps = {int(s) for s in config.train.get("gate_steps", ())}
    gate_dir = Path(config.train["gate_dir"]) if steps else None

    def report_at_gate(metrics: dict) -> bool:
        if int(metrics["step"]) in steps:
            _wait(int(metrics["step"]), Path(checkpoint_dir), gate_dir)
        return report(metrics)

    return report_at_gate


def curve(step: int, steps: int, weight_decay: float) -> dict[str, float]:
    """`run`'s evaluation at `step`: deterministic, rising with step, faster with weight decay."""
    progress = 1.0 - math.exp(-3.0 * weight_decay * step / steps)
    return {
        "step": step,
        "train_loss": round(1.0 - progress, 6),
        "train_acc": round(min(1.0, 1.2 * progress), 6),
        "val_acc": round(progress, 6),
    }


def run(config: RunConfig, report: Callable[[dict], bool], checkpoint_dir: str) -> dict:
    """`config.steps` steps of `curve`, an evaluation every eval_every steps, each reported and
    then checkpointed; a retry resumes from the checkpoint."""
    report = gated(report, config, checkpoint_dir)
    path = Path(checkpoint_dir) / CHECKPOINT
    step = json.loads(path.read_text())["step"] if path.exists() else 0
    weight_decay = float(config.train.get("weight_decay", 1.0))
    last = curve(step, config.steps, weight_decay)
    while step < config.steps:
        step = min(config.steps, (step // config.eval_every + 1) * config.eval_every)
        last = curve(step, config.steps, weight_decay)
        stop = report(last)
        _write(path, json.dumps({"step": step}))  # after its report, as the protocol asks
        if stop:
            break
    return {"val_acc": last["val_acc"]}


def wrapped(config: RunConfig, report: Callable[[dict], bool], checkpoint_dir: str) -> dict:
    """The trainer named in train.gated_trainer ('package.module:function'), its report gated."""
    fn = load_trainer(config.train["gated_trainer"])
    return call_trainer(fn, config, gated(report, config, checkpoint_dir), checkpoint_dir)


# ------------------------------------------------------------------------------ the test's side


class Gates:
    """The gates of a study's runs: `runs` is the study's checkpoints folder (a run's checkpoint
    folder is <cell>/trial=N/seed=S below it, its run key), `folder` its train.gate_dir."""

    def __init__(self, runs: Path, folder: Path) -> None:
        self.runs, self.folder = runs, folder
        folder.mkdir(parents=True, exist_ok=True)

    def train(self, *steps: int) -> dict:
        """The study's train keys that put these gates in every run."""
        return {"gate_dir": str(self.folder), "gate_steps": list(steps)}

    def waiting(self) -> dict[str, dict]:
        """Run key -> {step, pid} of every run waiting at a gate now."""
        if (self.folder / "open").exists():
            return {}
        found = {}
        for reached in self.runs.rglob("gate-*.reached"):
            if reached.with_suffix(".open").exists():
                continue
            try:
                found["/".join(reached.parent.relative_to(self.runs).parts)] = json.loads(reached.read_text())
            except (OSError, ValueError):  # replaced as we read (a retry reached it again): seen next look
                continue
        return found

    def open(self, key: str, step: int) -> None:
        """Let the run of `key` go on past its gate at `step` (now, or when it gets there)."""
        (self.runs / key / f"gate-{step}.open").touch()

    def open_all(self) -> None:
        """Every gate of every run, now and later."""
        (self.folder / "open").touch()

    def wait_for(
        self,
        what: str,
        ready: Callable[[], object],
        alive: Callable[[], bool] = lambda: True,
        timeout: float = 600,
        log: Path | None = None,
    ) -> object:
        """Poll until `ready()` returns something true, and return it; fail (saying what it
        waited for, with the end of `log`) if `alive()` turns false or after `timeout` s: the
        study got stuck, which no loaded machine explains."""
        deadline = time.monotonic() + timeout
        while True:
            got = ready()
            if got:
                return got
            if not alive() or time.monotonic() > deadline:
                tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
                why = "the driver exited" if not alive() else f"{timeout:.0f} s passed"
                raise AssertionError(f"never saw {what} ({why}); waiting at gates: {self.waiting()}\n{tail}")
            time.sleep(0.2)
