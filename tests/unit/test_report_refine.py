"""The report shows what grid.refine added: the `refined` tag and refine.json read back from a
real MLflow store (orchestrator/store/results.py), the summary table's origin column, the hollow
diamonds in the emergence figures and the Refinement section (orchestrator/report/).

The refined study is planted: a metric that steps from chance (0.5) to 1.0 at N* = 300 at
D = 400, and is 1.0 everywhere at D = 4000; the grid's N are 30, 100, 1000, 10000. The real
refinement loop (orchestrator/sweep/refine.py) fits it with the report's own `critical_sizes`,
so the cells it adds are known by hand: bisection in log N of the bracket (100, 1000) gives
N = 316 (round 1, above N*: 1.0), then 178 (round 2, 0.5), then 237 (round 3, 0.5); the budget
of 3 is then spent, with the interval (237, 316) still 0.125 decades wide."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread
from mlflow.tracking import MlflowClient

from orchestrator.analysis import critical_sizes
from orchestrator.report import plots
from orchestrator.report.report import build_report
from orchestrator.store import names
from orchestrator.store.results import StudyResults, load_results
from orchestrator.study.schema import Refine
from orchestrator.sweep.refine import Split, refine

GRID_N, STARS = (30, 100, 1000, 10_000), {400: 300.0, 4000: 1.0}
CONFIG = {
    "name": "planted_refine",
    "task": {"name": "sparse_parity", "n_bits": 8, "k": 3},
    "grid": {"refine": {"axis": "n", "max_cells": 3, "width_decades": 0.1}},
    "objectives": [{"metric": "max_val_acc", "direction": "maximize"}],
    "train": {},
}


def metric(n: float, d: float, seed: int) -> float:
    return (1.0 if n >= STARS[d] else 0.5) - 0.01 * seed


def runs_table(cells: list[tuple[int, int]], added: dict[str, int]) -> pd.DataFrame:
    """Two seeds per cell, as results.py reads them back: an added cell's runs carry `round k`."""
    rows = []
    for n, d in cells:
        key = cell_key(n, d)
        for seed in (0, 1):
            rows.append(
                {
                    "run_id": f"{key}/{seed}",
                    "cell": key,
                    "status": "completed",
                    "trial_number": 0,
                    "seed": seed,
                    "n_params": float(n),
                    "n_train": float(d),
                    "d_value": float(d),
                    "max_val_acc": metric(n, d, seed),
                    "refined": names.refined_round(added[key]) if key in added else None,
                }
            )
    return pd.DataFrame(rows)


def cell_key(n: int, d: int) -> str:
    return f"N={n}_D={d}"


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """The planted study refined by the real loop, and the report built from it."""

    def measure(cells):
        runs = runs_table(cells, {})
        return list(critical_sizes(runs, chance=0.5, status_col=None, n_boot=40).n_star)

    def realize(split: Split, cells):
        n = round(split.midpoint)
        return (n, int(split.line)) if split.low < n < split.high else None

    cells, refinement = refine(
        [(n, d) for d in STARS for n in GRID_N],
        Refine(**CONFIG["grid"]["refine"]),
        run=lambda now, added: None,
        measure=measure,
        realize=realize,
        key=lambda c: cell_key(*c),
    )
    added = {a.key: a.round for a in refinement.added}
    res = StudyResults("parent", "0", CONFIG, runs_table(cells, added), pd.DataFrame(), refinement.to_dict())
    out = tmp_path_factory.mktemp("report")
    return res, build_report(res, out), out


def test_the_planted_refinement_adds_the_bisection_cells(planted):
    """The fixture's premise, checked: the cells added are the hand-computed bisection points."""
    res, _, _ = planted
    added = res.refine["added"]
    assert [(a["round"], a["key"]) for a in added] == [
        (1, "N=316_D=400"),
        (2, "N=178_D=400"),
        (3, "N=237_D=400"),
    ]
    assert [(a["low"], a["high"]) for a in added] == [(100, 1000), (100, 316), (178, 316)]


def test_summary_table_says_which_cells_were_added_and_in_which_round(planted):
    _, report, out = planted
    table = report.summary.set_index("cell")
    assert table.loc["N=316_D=400", "origin"] == "added (round 1)"
    assert table.loc["N=178_D=400", "origin"] == "added (round 2)"
    assert table.loc["N=237_D=400", "origin"] == "added (round 3)"
    assert (table.drop(["N=316_D=400", "N=178_D=400", "N=237_D=400"])["origin"] == "grid").all()
    assert len(table) == 8 + 3
    header = (out / "summary.csv").read_text().splitlines()[0]
    assert header.startswith("cell,N,D,origin,runs,completed")
    md = (out / "summary.md").read_text()
    assert "| N=178_D=400 | 178 | 400 | added (round 2) | 2 |" in md


def test_refinement_section_says_what_was_added_and_why_each_line_stopped(planted):
    res, report, out = planted
    assert report.results["refine"] == res.refine
    assert json.loads((out / "results.json").read_text())["refine"] == res.refine
    md = (out / "summary.md").read_text()
    section = md[md.index("## Refinement (grid.refine)") :]
    assert "3 cells added in 3 rounds (budget 3)" in section and "0 of 2 thresholds ended narrower" in section
    assert "| round | cell | N | at D | bracket split (N) |" in section
    assert "| 1 | N=316_D=400 | 316 | 400 | 100 to 1000 |" in section
    assert "| 3 | N=237_D=400 | 237 | 400 | 178 to 316 |" in section
    lines = {row.split(" | ")[0].strip("| "): row for row in section.splitlines() if row.startswith("| 4")}
    assert "the cell budget is spent (max_cells = 3)" in lines["400"]
    threshold = next(x for x in res.refine["lines"] if x["line"] == 400)["threshold"]
    assert 237 <= threshold <= 316 and f"| {threshold:.4g} |" in lines["400"]  # N* = 300, planted
    assert "| none |" in lines["4000"] and "no threshold" in lines["4000"]  # high at every N


def test_a_study_without_refinement_has_no_origin_column_nor_section(planted, tmp_path):
    res, _, _ = planted
    plain = StudyResults("parent", "0", CONFIG, res.runs.assign(refined=None), pd.DataFrame(), None)
    report = build_report(plain, tmp_path)
    assert "origin" not in report.summary and report.results["refine"] is None
    assert "Refinement" not in (tmp_path / "summary.md").read_text()


def test_emergence_figures_mark_the_added_cells(planted, tmp_path):
    """The added scales are the refined runs' (N, D); the figures draw them (a magenta hollow
    diamond on the heatmap, the line's colour on metric_vs_n) and only when there are some."""
    res, report, out = planted
    assert plots.refined_scales(res.runs, "n_params", "n_train") == {
        (316.0, 400.0),
        (178.0, 400.0),
        (237.0, 400.0),
    }
    assert plots.refined_scales(res.runs.drop(columns="refined"), "n_params", "n_train") == set()
    assert {"emergence_heatmap", "metric_vs_n"} <= set(report.plots)
    plain = res.runs.assign(refined=None)
    for name, fn in (
        ("emergence_heatmap", plots.plot_emergence_heatmap),
        ("metric_vs_n", plots.plot_metric_vs_scale),
    ):
        marked = imread(fn(res.runs, tmp_path / f"{name}_marked.png"))
        unmarked = imread(fn(plain, tmp_path / f"{name}.png"))
        assert marked.shape != unmarked.shape or not np.array_equal(marked, unmarked), name
    magenta = [int(plots.REFINED_COLOR[i : i + 2], 16) / 255 for i in (1, 3, 5)]

    def has_magenta(img) -> bool:
        return bool((np.abs(img[..., :3] - magenta).max(axis=-1) < 0.05).any())

    assert has_magenta(imread(out / "emergence_heatmap.png"))
    assert not has_magenta(imread(tmp_path / "emergence_heatmap.png"))


def test_results_reads_the_refined_tag_and_refine_json_from_mlflow(tmp_path):
    """A real MLflow store: a parent run with refine.json, one grid run and one run of an added
    cell; a second study without refine.json; a third whose refine.json is not JSON."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    logged = {
        "axis": "n",
        "rounds": 1,
        "max_cells": 2,
        "width_decades": 0.1,
        "added": [{"round": 1, "key": "N=316_D=400", "line": 400.0, "low": 100.0, "high": 1000.0}],
        "lines": [
            {
                "line": 400.0,
                "threshold": 300.0,
                "low": 200.0,
                "high": 400.0,
                "interval_decades": 0.3,
                "censored": True,
                "stop": "the cell budget is spent (max_cells = 2)",
            }
        ],
    }
    for experiment, artifact in (("refined", json.dumps(logged)), ("plain", None), ("broken", "{not json")):
        exp = client.create_experiment(experiment)
        parent = client.create_run(exp, tags={names.TAG_ROLE: names.ROLE_STUDY}).info.run_id
        if artifact is not None:
            path = tmp_path / experiment / names.ARTIFACT_REFINE
            path.parent.mkdir()
            path.write_text(artifact)
            client.log_artifact(parent, str(path))
        for n, tag in ((100, None), (316, names.refined_round(1))):
            key = cell_key(n, 400)
            tags = {
                names.PARENT_RUN: parent,
                names.TAG_CELL: key,
                names.TAG_STATUS: "completed",
                **({names.TAG_REFINED: tag} if tag else {}),
            }
            run = client.create_run(exp, tags=tags).info.run_id
            for param, value in (
                (names.PARAM_CELL, key),
                (names.PARAM_N_PARAMS, n),
                (names.PARAM_N_TRAIN, 400),
                (names.PARAM_SEED, 0),
                (names.PARAM_TRIAL_NUMBER, 0),
            ):
                client.log_param(run, param, value)
            client.log_metric(run, names.FINAL_PREFIX + "max_val_acc", 1.0 if n > 300 else 0.5)
    res = load_results(uri, "refined", with_curves=False)
    refined = dict(zip(res.runs["cell"], res.runs["refined"]))
    assert pd.isna(refined["N=100_D=400"]) and refined["N=316_D=400"] == "round 1"
    assert res.refine == logged
    assert load_results(uri, "plain", with_curves=False).refine is None
    broken = load_results(uri, "broken", with_curves=False).refine
    assert broken["error"].startswith(f"{names.ARTIFACT_REFINE} could not be read: JSONDecodeError")


def test_heatmap_contour_bridges_a_refined_column_only_between_measured_cells():
    """N = 316 was added at D = 400 only: at D = 4000 its cell was never run. For the contour it
    takes the value between its measured neighbours N = 100 (0.5) and 1000 (1.0) of that D, in
    log N: 0.5 + 0.5 * log10(3.16) = 0.75; a cell outside every measured pair stays NaN."""
    ns, ds = np.array([100.0, 316.0, 1000.0, 3000.0]), np.array([400.0, 4000.0])
    values = np.array([[0.5, 0.5], [1.0, np.nan], [1.0, 1.0], [1.0, np.nan]])  # rows N, columns D
    filled = plots._between(ns, ds, values)
    assert filled[1, 1] == pytest.approx(0.5 + 0.5 * np.log10(3.16))
    assert np.isnan(filled[3, 1])  # beyond the largest measured N at D = 4000: no contour there
    assert np.array_equal(
        filled[np.isfinite(values)], values[np.isfinite(values)]
    )  # measured cells untouched
