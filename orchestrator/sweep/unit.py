"""One training run: an Optuna trial of a cell under one seed, as the driver tracks it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

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


def run_info(
    study: Study, cell: Cell, trial_number: int, params: dict[str, Any], seed: int, spec: Any = None
) -> RunInfo:
    """What the stopping rule knows of the run of this trial under `seed`."""
    spec = spec if spec is not None else spec_for(study, cell, params, seed)
    return RunInfo(
        names.run_key(cell.key, trial_number, seed),
        cell.key,
        clock_group(cell.n_index, params),
        cell.d_value,
        spec.train,
        seed,
    )


# Characters a folder name keeps as they are, with letters, digits and `_.-~`: every cell key of the
# built-in grid (`N[d_model=16,n_layer=2]_C=1e+15`), so the folders of existing studies do not move.
PATH_SAFE = "[]=,+"
MAX_PATH_PART = 200  # characters; most file systems allow 255 bytes a name


def path_part(text: str) -> str:
    """`text` as one folder name that stays one folder: every other character percent-quoted (a
    `/` cannot nest folders, and distinct texts stay distinct), and a name the file system reads
    specially ('', '.', '..') or too long for it replaced by a hash of the text."""
    quoted = quote(text, safe=PATH_SAFE)
    if quoted in ("", ".", "..") or len(quoted) > MAX_PATH_PART:
        return "sha256-" + hashlib.sha256(text.encode()).hexdigest()[:32]
    return quoted


def checkpoint_dir(study: Study, cell: Cell, trial_number: int, seed: int) -> Path:
    """Where the run of this trial under `seed` keeps its checkpoint, always under the study's
    checkpoints folder: a user trainer's shape value (`{width: ../../x}`) is part of the cell key."""
    return study.checkpoint_path / path_part(cell.key) / f"trial={trial_number}" / f"seed={seed}"
