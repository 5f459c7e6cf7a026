"""One training run: an Optuna trial of a cell under one seed, as the driver tracks it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from orchestrator.store import names
from orchestrator.study import Study
from orchestrator.study.grid import Cell, spec_for
from orchestrator.sweep.stopping import RunInfo, StopRules, clock_group


@dataclass
class Unit:
    cell: Cell
    trial_number: int
    seed: int
    params: dict[str, Any]
    spec: Any  # its TrainSpec
    checkpoint_dir: str
    info: RunInfo  # what the stopping rule knows of it
    run_id: str = ""  # its MLflow run
    rules: StopRules = ()  # the stop rules last posted to its worker
    result: dict | None = None
    summary: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return names.run_key(self.cell.key, self.trial_number, self.seed)

    @property
    def budget(self) -> tuple[int, int]:
        """(steps, eval_every): where a step objective that never happened is censored."""
        return self.spec.train.steps, self.spec.train.eval_every


def run_info(study: Study, cell: Cell, trial_number: int, params: dict[str, Any], seed: int,
             spec: Any = None) -> RunInfo:
    """What the stopping rule knows of the run of this trial under `seed`."""
    spec = spec if spec is not None else spec_for(study, cell, params, seed)
    return RunInfo(names.run_key(cell.key, trial_number, seed), cell.key, clock_group(cell.n_index, params),
                   cell.d_value, spec.train, seed)
