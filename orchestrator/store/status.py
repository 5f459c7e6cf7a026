"""`grokscale status`: per-cell trial counts and the best trial, read from the Optuna storage."""

from __future__ import annotations

import json
from typing import TextIO

import optuna
from optuna.trial import TrialState

from orchestrator.store import names
from orchestrator.store.trials import read_storage
from orchestrator.study import Study, redact_url
from orchestrator.study.grid import Cell

MAX_PLAIN_WIDTH = 100_000  # the widest a table printed to a non-terminal may be (no terminal to fit)
COLUMNS = ("cell", "N", "D", "complete", "pruned", "running", "queued", "failed", "best value", "best params")


def cell_row(study: Study, cell: Cell, ostudy: optuna.Study | None) -> dict:
    """One cell's counts by trial state, and its best trial (None before one completed)."""
    row = {
        "cell": cell.key,
        "n_params": cell.n(study.grid.n_convention),
        "n_train": cell.n_train,
        "d_value": cell.d_value,
        "complete": 0,
        "pruned": 0,
        "running": 0,
        "queued": 0,
        "failed": 0,
        "best_value": None,
        "best_params": None,
    }
    if ostudy is None:
        return row
    trials = ostudy.get_trials(deepcopy=False)
    row["complete"] = sum(t.state == TrialState.COMPLETE for t in trials)
    row["pruned"] = sum(t.state == TrialState.PRUNED for t in trials)
    running = [t for t in trials if t.state == TrialState.RUNNING]
    # Asked ahead of its turn (phase stopping asks fastest-first) but no run started yet: queued.
    # A started run has its MLflow run id as a trial attribute (names.trial_run_id).
    row["queued"] = sum(not any(k.startswith(names.RUN_ID_PREFIX) for k in t.user_attrs) for t in running)
    row["running"] = len(running) - row["queued"]
    row["failed"] = sum(t.state == TrialState.FAIL for t in trials)
    if row["complete"]:
        best = ostudy.best_trials
        row["best_value"] = best[0].values if len(best[0].values) > 1 else best[0].value
        row["best_params"] = best[0].params
    return row


def study_status(study: Study, cells: list[Cell]) -> list[dict]:
    storage = read_storage(study.storage_url)  # read only: never created, repaired or unlocked
    existing = {s.study_name for s in optuna.get_all_study_summaries(storage)} if storage else set()
    rows = []
    for cell in cells:
        name = names.optuna_study_name(study.name, cell.key)
        ostudy = optuna.load_study(study_name=name, storage=storage) if name in existing else None
        rows.append(cell_row(study, cell, ostudy))
    return rows


def status_table(study: Study, rows: list[dict]):
    """The rows as a rich Table, titled with the study and its storage. A cell too long for its
    column folds onto the next line, never cut to an ellipsis (a cell key or best params cut
    short is a different cell or different values)."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"{study.name} ({redact_url(study.storage_url)})", title_justify="left")
    for col in COLUMNS:
        table.add_column(col, overflow="fold")
    for r in rows:
        cells = [
            r["cell"],
            _n(r),
            _d(r),
            str(r["complete"]),
            str(r["pruned"]),
            str(r["running"]),
            str(r["queued"]),
            str(r["failed"]),
            "" if r["best_value"] is None else f"{r['best_value']}",
            "" if r["best_params"] is None else json.dumps(r["best_params"]),
        ]
        table.add_row(*(Text(c) for c in cells))  # plain text: rich markup would eat N[d_model=16]'s brackets
    return table


def _n(row: dict) -> str:
    """N as a count; blank for a cell of the study's own trainer, whose runs report their N."""
    return f"{row['n_params']:,}" if row["n_params"] else ""


def _d(row: dict) -> str:
    """D as a count of examples; the grid's value where it is not one (a fraction, for a study's
    own trainer)."""
    return f"{row['n_train']:,}" if row["n_train"] else f"{row['d_value']:g}"


def print_status(study: Study, rows: list[dict], file: TextIO | None = None) -> None:
    """The table on `file` (stdout). A terminal gets it at the terminal's width; anything else
    (a pipe, a file, a CI log) at the table's own width, so no line wraps and a script or grep
    reads each cell's row whole (rich would otherwise assume 80 columns)."""
    from rich.console import Console
    from rich.measure import Measurement

    table = status_table(study, rows)
    console = Console(file=file)
    if not console.is_terminal:
        wide = console.options.update_width(MAX_PLAIN_WIDTH)
        width = Measurement.get(console, wide, table).maximum
        console = Console(file=file, width=max(width, len(table.title or "")))
    console.print(table)
