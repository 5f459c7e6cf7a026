"""What the report's sections share: the Report they write into (plots, skipped analyses,
fitted numbers) and the Inputs they read (the study's config, runs, curves and axes; made by
store/inputs.py, which the refinement rounds read too)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from orchestrator.store import names
from orchestrator.store.inputs import Inputs, chance_level, is_language_model, read_inputs, with_thresholds

__all__ = ["Inputs", "Report", "chance_level", "is_language_model", "read_inputs", "with_thresholds"]


@dataclass
class Report:
    directory: Path
    plots: dict[str, Path] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # plot or analysis -> why it was not made
    summary: pd.DataFrame | None = None  # one row per cell
    metrics: dict[str, float] = field(default_factory=dict)  # fitted numbers, logged as MLflow metrics
    results: dict = field(default_factory=dict)  # everything, JSON-safe
    errors: dict[str, str] = field(default_factory=dict)  # section -> the traceback of its failure

    def draw(self, name: str, fn, *args, **kwargs) -> None:
        """Draw one plot; a table it cannot be drawn from is noted as skipped, not raised."""
        try:
            path = fn(*args, **kwargs)
        except (ValueError, KeyError) as err:
            path, why = None, f"{type(err).__name__}: {err}"
        else:
            why = "not enough distinct values to draw it"
        if path is None:
            self.skipped[name] = why
        else:
            self.plots[name] = Path(path)

    def metric(self, name: str, value: float) -> None:
        """A fitted number, logged to the parent run as `report/<name>`."""
        self.metrics[_key(names.REPORT_METRIC_PREFIX + name)] = float(value)


def _key(text: str) -> str:
    """An MLflow metric name: letters, digits, _ - . / : and spaces only."""
    return re.sub(r"[^\w.\-/: ]", "_", text)
