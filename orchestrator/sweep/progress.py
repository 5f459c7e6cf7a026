"""The live view of a running study: trials done, running (or queued on Ray behind a busy slot)
and failed per cell, the elapsed time and an ETA; the MLflow writes waiting, and a warning once
none has gone out for STALL_S (the tracking store down: the driver retries for a while, then
stops, queue.py)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, Self

from optuna.trial import TrialState
from rich.console import Console
from rich.live import Live
from rich.table import Table

from orchestrator.study import Study

STALL_S = 60.0  # writes waiting this long with none going out: the view warns


def _fmt(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def writes_note(backlog: int, idle_s: float) -> str:
    """The write queue in one line: how many writes wait; a warning once none has gone out for
    STALL_S (`idle_s`: how long they have waited so)."""
    if backlog and idle_s >= STALL_S:
        return (
            f"WARNING: no MLflow write has gone out for {_fmt(idle_s)}; {backlog:,} waiting "
            f"(the tracking store is away; see the log)"
        )
    return f"MLflow writes waiting: {backlog:,}" if backlog else ""


class Progress:
    """A rich table redrawn in place on a terminal; one line per change elsewhere (job logs)."""

    def __init__(self, study: Study, states: list[Any], show: bool = True, writes: Any = None):
        """`writes`: the tracker (its `backlog` and `idle_s()`), for the write queue's line."""
        self.study = study
        self.states = states
        self.writes = writes
        self.warned = False  # the stall warning printed (line output), until writes move again
        self.console = Console(stderr=True)
        self.show = show
        self.live: Live | None = None
        self.last_line = ""
        self.last_draw = 0.0

    def __enter__(self) -> Self:
        if self.show and self.console.is_terminal:
            self.live = Live(console=self.console, refresh_per_second=4, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)

    def counts(self, state: Any, running_units: list) -> dict[str, Any]:
        trials = state.optuna.get_trials(deepcopy=False)
        done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)  # pruned: answered
        failed = sum(t.state == TrialState.FAIL for t in trials)
        running = len({u.trial_number for u in running_units if u.cell is state.cell})
        return {
            "done": done,
            "failed": failed,
            "running": running,
            "total": self.study.search.trials_per_cell,
            "best": self.best(trials),
        }

    def best(self, trials: list) -> float | None:
        """The cell's best objective value over its COMPLETE trials; None before the first one.

        Not Optuna's `Study.best_value`: it raises "No trials are completed yet" for a cell
        whose answered trials were all PRUNED (the phase rule can stop a cell's first run), and
        that exception killed the driver on a terminal. Single objective only (several have a
        Pareto front, not one best)."""
        if len(self.study.objectives) != 1:
            return None
        values = [t.values[0] for t in trials if t.state == TrialState.COMPLETE and t.values]
        if not values:
            return None
        return max(values) if self.study.objectives[0].direction == "maximize" else min(values)

    def update(self, in_flight: Iterable[Any], elapsed: float) -> None:
        if not self.show or time.monotonic() - self.last_draw < 0.25:
            return
        self.last_draw = time.monotonic()
        running_units = list(in_flight)
        rows = [(s, self.counts(s, running_units)) for s in self.states]
        finished = sum(c["done"] + c["failed"] for _, c in rows)
        total = sum(max(c["total"], c["done"] + c["failed"]) for _, c in rows)
        eta = elapsed / finished * (total - finished) if finished else None
        title = f"{self.study.name}: {finished}/{total} trials  elapsed {_fmt(elapsed)}  ETA {_fmt(eta)}"
        note = "" if self.writes is None else writes_note(self.writes.backlog, self.writes.idle_s())
        if self.live is not None:
            table = Table(title=title, title_justify="left", caption=note or None, caption_justify="left")
            for col in ("cell", "N", "D", "done", "running/queued", "failed", "best"):
                table.add_column(col, justify="right" if col != "cell" else "left")
            for s, c in rows:
                best = "" if c["best"] is None else f"{c['best']:.4g}"
                table.add_row(
                    s.cell.key,
                    f"{s.cell.n(self.study.grid.n_convention):,}",
                    f"{s.cell.n_train:,}",
                    str(c["done"]),
                    str(c["running"]),
                    str(c["failed"]),
                    best,
                )
            self.live.update(table)
        else:
            line = (
                f"{title}  running/queued {sum(c['running'] for _, c in rows)}  "
                f"failed {sum(c['failed'] for _, c in rows)}"
            )
            if line.split("  elapsed")[0] != self.last_line.split("  elapsed")[0]:
                self.console.print(line, highlight=False)
            self.last_line = line
            stalled = note.startswith("WARNING")
            if stalled and not self.warned:
                self.console.print(note, highlight=False)
            self.warned = stalled
