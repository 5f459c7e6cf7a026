"""The study's grid: one cell per (N, D), with the model shape resolved and the actual N and D."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from orchestrator.study.errors import StudyError, format_errors
from orchestrator.study.schema import Study
from trainers.models import ParamCounts, resolve_shape, shape_counts
from trainers.spec import TrainSpec
from trainers.tasks import make_task


@dataclass(frozen=True)
class Cell:
    n_index: int
    d_index: int
    shape: dict[str, Any]  # model fields this cell sets (a resolved width for a target N)
    d_value: float  # the grid value (a fraction or a count)
    n_params: ParamCounts
    n_train: int  # D as a count of examples (tokens for the LM)
    target_n: int | None

    @property
    def key(self) -> str:
        """Stable across edits of the grid's order: an Optuna study and MLflow tag name."""
        shape = ",".join(f"{k}={v}" for k, v in sorted(self.shape.items()))
        return f"N[{shape}]_D={self.d_value:g}"

    def n(self, convention: str) -> int:
        return getattr(self.n_params, convention)


def spec_for(study: Study, cell: Cell, params: dict[str, Any], seed: int) -> TrainSpec:
    """One run's spec; a cell given GPUs (resources) trains on CUDA, and its spec says so."""
    data = study.trial_data(cell.shape, cell.d_value, params, seed)
    if study.resources.for_n(cell.n(study.grid.n_convention))[1] > 0:
        data["device"] = "cuda"
    return TrainSpec.model_validate(data)


def build_cells(study: Study) -> list[Cell]:
    """Every cell of the grid, N-major; a target N that no width reaches is a StudyError."""
    cells, problems = [], []
    for i, entry in enumerate(study.grid.n):
        for j, d in enumerate(study.grid.d):
            try:
                base = TrainSpec.model_validate(study.trial_data(entry if isinstance(entry, dict) else {}, d, {}, 0))
                data = make_task(base.task, 0)
                args = (data.vocab_size, data.n_out, data.seq_len)
                if isinstance(entry, dict):
                    shape, target, counts = dict(entry), None, shape_counts(base.model, *args)
                else:
                    r = resolve_shape(base.model, entry, *args, convention=study.grid.n_convention)
                    width = "d_model" if r.model.family == "transformer" else "d_hidden"
                    shape = {width: getattr(r.model, width)}
                    if r.model.family == "transformer" and base.model.d_mlp is not None:
                        shape["d_mlp"] = r.model.d_mlp
                    target, counts = entry, r.n_params
            except ValueError as err:  # the resolver, or a task that cannot hold this D
                problems.append(f"grid.n[{i}] x grid.d[{j}]: {err}")
                continue
            except ValidationError as err:
                problems += [f"grid.n[{i}] x grid.d[{j}]: {line}" for line in format_errors(err, model=TrainSpec)]
                continue
            cells.append(Cell(i, j, shape, d, counts, data.n_train, target))
    if problems:
        raise StudyError(list(dict.fromkeys(problems)))
    keys = [c.key for c in cells]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise StudyError([f"grid.n: two entries resolve to the same shape ({', '.join(dupes)}); "
                          f"make them distinct"])
    return cells
