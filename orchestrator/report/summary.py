"""The report's per-cell summary table (runs by status, best metric, phases, best parameters
and their importance; in a study that grid.refine refined, each cell's origin), as CSV and
markdown, and the JSON encoding of its numbers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from orchestrator.analysis import CriticalSizes
from orchestrator.store.names import USABLE_STATUSES, RunStatus


def _count(part: pd.DataFrame, col: str) -> int | None:
    """A cell's N or D, None where its runs did not report it (a user trainer may not)."""
    if col not in part or part[col].isna().all():
        return None
    return int(part[col].dropna().iloc[0])


def summary_table(
    runs: pd.DataFrame,
    phases: pd.DataFrame,
    regs: list,
    metric: str,
    n_col: str,
    d_col: str,
    critical: CriticalSizes | None,
) -> pd.DataFrame:
    rows = []
    by_reg = {r.cell: r for r in regs}
    refined = "refined" in runs and bool(runs["refined"].notna().any())  # the column only in a refined study
    for cell, part in runs.groupby("cell", sort=False):
        usable = part[part["status"].isin(USABLE_STATUSES)]
        row = {
            "cell": cell,
            "N": _count(part, n_col),
            "D": _count(part, d_col),
            **({"origin": origin(part)} if refined else {}),
            "runs": len(part),
            **{
                s.value: int((part["status"] == s.value).sum())
                for s in (RunStatus.COMPLETED, RunStatus.DIVERGED, RunStatus.FAILED)
            },
            f"best {metric}": float(usable[metric].max()) if metric in usable and len(usable) else None,
        }
        if not phases.empty and "phase" in phases:
            counts = phases[phases["cell"] == cell]["phase"].value_counts()
            row["phases"] = ", ".join(f"{k} {v}" for k, v in counts.items())
        reg = by_reg.get(cell)
        if reg is not None:
            row["best params"] = json.dumps(reg.best_params, default=json_default)
            row["importance"] = (
                ""
                if reg.importances is None
                else ", ".join(f"{k.removeprefix('train.')} {v:.2f}" for k, v in reg.importances.items())
            )
        rows.append(row)
    table = pd.DataFrame(rows)
    return table.sort_values(["N", "D"], ignore_index=True) if not table.empty else table


def origin(part: pd.DataFrame) -> str:
    """Where a cell came from: "grid" (the study's own grid), or "added (round k)" by grid.refine
    (its runs' `refined` tag, orchestrator/sweep/refine.py)."""
    rounds = part["refined"].dropna() if "refined" in part else pd.Series(dtype=object)
    return f"added ({rounds.iloc[0]})" if len(rounds) else "grid"


def _cell(value) -> str:
    """A value as the markdown table shows it: blank if missing, floats to 4 significant digits."""
    if pd.isna(value):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown(table: pd.DataFrame) -> str:
    if table.empty:
        return "(no runs)\n"
    cols = list(table.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in table.iterrows():
        lines.append("| " + " | ".join(_cell(v) for v in r) + " |")
    return "\n".join(lines) + "\n"


def json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return None if not np.isfinite(value) else float(value)
    return str(value)
