"""Refine where the answer is: scales added inside a bracketed emergence threshold (`grid.refine`).

A hand-placed grid often puts a whole transition between two neighbouring scales; the threshold
is then known only to that bracket (analysis/emergence.py: `censored`). With `grid.refine` the
study runs its grid, fits the thresholds the report fits (over N at each D for `axis: n`, over D
at each N for `axis: d`), adds one cell at the geometric midpoint of each bracket whose interval
is still wider than `width_decades`, runs again, and so on. That is bisection in log scale: a
bracket w decades wide needs about log2(w / width_decades) added cells per line, where a uniform
grid fine enough for the same interval needs about w / width_decades scales over the whole axis
(benchmarks/bench_refine.py measures it).

A line stops when
  - its threshold's interval is narrower than `width_decades` (resolved);
  - the scales around its threshold are already closer than `width_decades`, yet its interval is
    wider: the spread between runs makes it so, and more seeds would narrow it, more scales not;
  - no model shape (or data size) lies between the two scales of its bracket;
  - it has no threshold (it never leaves chance, or is already high at the smallest scale);
and the whole refinement stops when `max_cells` cells have been added.

Resume is the same command again. The added cells are derived from completed results only, and
the analysis is deterministic (a seeded bootstrap), so a driver killed in round k re-derives
rounds 1..k from the same results; the driver never retrains a completed trial. The fits see
only the cells of the rounds so far, never runs of later rounds already in MLflow.

Each added cell's runs carry the MLflow tag `grokscale.refined = round k`, set once its round has
run (a run killed mid-round gets it when the round is resumed); the study's parent run carries a
summary tag and `refine.json` (what was added, and why each line stopped).
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from orchestrator.analysis.emergence import EmergenceFit
from orchestrator.analysis.estimate import jsonable
from orchestrator.study.schema import Refine

C = TypeVar("C")  # a cell: the loop never looks inside one


@dataclass(frozen=True)
class Split:
    """One bracket to split: at `line` (the other axis' value: D for axis n, N for axis d), the
    threshold lies between the measured scales `low` and `high`."""

    line: float
    low: float
    high: float
    interval_decades: float  # the threshold's interval now; inf when one side is unbounded

    @property
    def midpoint(self) -> float:
        return math.sqrt(self.low * self.high)

    @property
    def bracket_decades(self) -> float:
        return math.log10(self.high / self.low)


@dataclass(frozen=True)
class LineOutcome:
    """Where one line's threshold ended, and why nothing more was added on it."""

    line: float
    threshold: float | None
    low: float | None
    high: float | None
    interval_decades: float | None
    censored: bool
    stop: str


@dataclass(frozen=True)
class Added:
    round: int
    key: str
    line: float
    low: float  # the bracket it split
    high: float


@dataclass(frozen=True)
class Refinement:
    axis: str
    rounds: int
    max_cells: int
    width_decades: float
    added: tuple[Added, ...]
    lines: tuple[LineOutcome, ...]

    def to_dict(self) -> dict:
        return jsonable(asdict(self))

    def summary(self) -> str:
        resolved = sum(1 for line in self.lines if line.stop.startswith("resolved"))
        return (
            f"refine ({self.axis}): {len(self.added)} cells added in {self.rounds} rounds "
            f"(budget {self.max_cells}); {resolved} of {len(self.lines)} thresholds narrower than "
            f"{self.width_decades:g} decades"
        )


def interval_decades(fit: EmergenceFit) -> float:
    """The width of a threshold's interval in decades; inf when a side is unbounded."""
    if fit.low is None or fit.high is None:
        return math.inf
    return math.log10(fit.high / fit.low) if fit.low > 0 else math.inf


def plan(
    fits: Sequence[tuple[float, EmergenceFit]],
    width_decades: float,
    blocked: set[tuple[float, float, float]] = frozenset(),
) -> tuple[list[Split], dict[float, str]]:
    """The brackets to split, widest interval first, and why each other line is done. `blocked`:
    (line, low, high) brackets with no cell between their two scales."""
    splits, done = [], {}
    for line, fit in fits:
        if fit.threshold is None or fit.bracket is None:
            done[line] = f"no threshold: {fit.reason}"
            continue
        width, (low, high) = interval_decades(fit), fit.bracket
        if width < width_decades:
            done[line] = (
                f"resolved: its interval is {width:.3g} decades, under width_decades = {width_decades:g}"
            )
        elif math.log10(high / low) < width_decades:
            done[line] = (
                f"the scales around it ({low:.4g}, {high:.4g}) are closer than width_decades, yet its "
                f"interval is {width:.3g} decades: the spread between runs; more seeds narrow it, "
                f"more scales do not"
            )
        elif (line, low, high) in blocked:
            done[line] = (
                f"no cell lies between {low:.4g} and {high:.4g} (the finest model shape or data size)"
            )
        else:
            splits.append(Split(line, low, high, width))
    splits.sort(key=lambda s: (-s.interval_decades, -s.bracket_decades, s.line))
    return splits, done


def refine(
    cells: Sequence[C],
    config: Refine,
    *,
    run: Callable[[list[C], tuple[Added, ...]], None],
    measure: Callable[[list[C]], Sequence[tuple[float, EmergenceFit]]],
    realize: Callable[[Split, list[C]], C | None],
    key: Callable[[C], str],
    note: Callable[[str], None] = lambda _: None,
) -> tuple[list[C], Refinement]:
    """Run, fit, add a cell inside each bracket still too wide, run again, until every line
    stops or `max_cells` cells were added. `run(cells, added)` trains what is not trained yet,
    `measure(cells)` fits the thresholds over those cells' results, `realize(split, cells)` is
    the new cell (None when none lies between). Returns every cell and what was done."""
    cells, added, blocked, rounds = list(cells), [], set(), 0
    while True:
        run(cells, tuple(added))
        fits = list(measure(cells))
        splits, done = plan(fits, config.width_decades, blocked)
        new: list[tuple[Split, C]] = []
        for split in splits:
            if len(added) + len(new) >= config.max_cells:
                done[split.line] = f"the cell budget is spent (max_cells = {config.max_cells})"
                continue
            cell = realize(split, cells + [c for _, c in new])
            if cell is None:
                blocked.add((split.line, split.low, split.high))
                done[split.line] = (
                    f"no cell lies between {split.low:.4g} and {split.high:.4g} (the finest model "
                    f"shape or data size)"
                )
                continue
            new.append((split, cell))
        if not new:
            return cells, Refinement(
                config.axis,
                rounds,
                config.max_cells,
                config.width_decades,
                tuple(added),
                tuple(_outcome(line, fit, done.get(line, "")) for line, fit in fits),
            )
        rounds += 1
        note(
            f"refine: round {rounds}: "
            + "; ".join(f"{key(c)} between {s.low:.4g} and {s.high:.4g} at {s.line:g}" for s, c in new)
        )
        added += [Added(rounds, key(c), s.line, s.low, s.high) for s, c in new]
        cells += [c for _, c in new]


def _outcome(line: float, fit: EmergenceFit, stop: str) -> LineOutcome:
    width = interval_decades(fit) if fit.threshold is not None else None
    return LineOutcome(
        line,
        fit.threshold,
        fit.low,
        fit.high,
        None if width is None or math.isinf(width) else width,
        fit.censored,
        stop,
    )


# -- the study's own loop: the driver, MLflow and the report's analysis ------------------------------
def run_refined(study, cells: list, show: bool = True) -> tuple[Any, Refinement | None]:
    """Run the study; with `grid.refine`, refine it. Returns the driver's counts over every round
    (SweepStats) and the Refinement (None without grid.refine)."""
    from orchestrator.sweep.driver import run_study
    from orchestrator.sweep.stats import SweepStats

    if study.grid.refine is None:
        return run_study(study, cells, show=show), None
    total = SweepStats()

    def run(now: list, added: tuple[Added, ...]) -> None:
        _add_stats(total, run_study(study, now, show=show))
        if added:
            mark_added(study, added)

    _, refinement = refine(
        cells,
        study.grid.refine,
        run=run,
        measure=lambda now: study_fits(study, now),
        realize=lambda split, now: cell_for(study, split, now),
        key=lambda c: c.key,
        note=(lambda text: print(text, file=sys.stderr)) if show else (lambda _: None),
    )
    log_refinement(study, refinement)
    return total, refinement


def study_fits(study, cells: list) -> list[tuple[float, EmergenceFit]]:
    """The thresholds the report fits (orchestrator/report/sections.py: `critical_sizes` on the
    usable runs, its metric and chance level), over these cells' runs only: over N at each D
    (axis n) or over D at each N (axis d)."""
    import pandas as pd

    from orchestrator.analysis.emergence import critical_sizes
    from orchestrator.store.inputs import read_inputs
    from orchestrator.store.results import ResultsError, load_results

    try:
        inp = read_inputs(
            load_results(study.tracking.uri, study.experiment_name, with_curves=False), Path(".")
        )
    except ResultsError:
        return []
    by_key = {c.key: c for c in cells}
    usable = inp.usable[inp.usable["cell"].isin(list(by_key))]
    if usable.empty or inp.metric not in usable:
        return []
    conv = study.grid.n_convention
    # N and D from the cells themselves: exactly the values cell_for maps a bracket back with.
    table = pd.DataFrame(
        {
            "n": [float(by_key[k].n(conv)) for k in usable["cell"]],
            "d": [float(by_key[k].n_train) for k in usable["cell"]],
            "metric": usable[inp.metric].to_numpy(float),
        }
    )
    critical = critical_sizes(
        table, metric="metric", n_col="n", d_col="d", chance=inp.chance, status_col=None
    )
    return list(critical.n_star if study.grid.refine.axis == "n" else critical.d_star)


def cell_for(study, split: Split, cells: list):
    """The cell at the split's midpoint: between the two cells of its bracket on its line."""
    from orchestrator.study.grid import cell_between_d, cell_between_n

    conv = study.grid.n_convention
    if study.grid.refine.axis == "n":
        on_line = [c for c in cells if c.n_train == split.line]
        low = next((c for c in on_line if c.n(conv) == split.low), None)
        high = next((c for c in on_line if c.n(conv) == split.high), None)
        between = cell_between_n
    else:
        on_line = [c for c in cells if c.n(conv) == split.line]
        low = next((c for c in on_line if c.n_train == split.low), None)
        high = next((c for c in on_line if c.n_train == split.high), None)
        between = cell_between_d
    return None if low is None or high is None else between(study, low, high, cells)


def mark_added(study, added: Sequence[Added]) -> None:
    """Tag every run of each added cell `grokscale.refined = round k` (the driver has finished
    the round: this process is still the study's only writer)."""
    from mlflow.tracking import MlflowClient

    from orchestrator.store import names
    from orchestrator.store.results import all_runs, find_parent

    client = MlflowClient(tracking_uri=study.tracking.uri)
    experiment_id, parent_id = find_parent(client, study.experiment_name)
    for a in added:
        query = (
            f"{names.tag_equals(names.PARENT_RUN, parent_id)} and {names.tag_equals(names.TAG_CELL, a.key)}"
        )
        for run in all_runs(client, [experiment_id], query):
            if run.data.tags.get(names.TAG_REFINED) != names.refined_round(a.round):
                client.set_tag(run.info.run_id, names.TAG_REFINED, names.refined_round(a.round))


def log_refinement(study, refinement: Refinement) -> None:
    """The refinement's summary as a tag on the study's parent run, the whole of it as refine.json."""
    from mlflow.tracking import MlflowClient

    from orchestrator.store import names
    from orchestrator.store.results import find_parent

    client = MlflowClient(tracking_uri=study.tracking.uri)
    _, parent_id = find_parent(client, study.experiment_name)
    client.set_tag(parent_id, names.TAG_REFINE_SUMMARY, refinement.summary())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / names.ARTIFACT_REFINE
        path.write_text(json.dumps(refinement.to_dict(), indent=2))
        client.log_artifact(parent_id, str(path))


def _add_stats(total, part) -> None:
    """One round's SweepStats into the sum over rounds: counts and times add, lists join, the
    capacity is the largest, the first submission the earliest, the last record the latest."""
    for f in fields(total):
        a, b = getattr(total, f.name), getattr(part, f.name)
        if f.name == "capacity":
            value = max(a, b)
        elif f.name == "first_submit_at":
            value = min(v for v in (a, b) if v) if (a or b) else 0.0
        elif f.name == "last_recorded_at":
            value = max(a, b)
        elif isinstance(a, (int, float, list)) and not isinstance(a, bool):
            value = a + b
        else:  # a name (the parent run): the latest
            value = b or a
        setattr(total, f.name, value)
