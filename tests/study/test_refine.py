"""grid.refine end to end: a real `grokscale run` of a tiny sparse-parity study on a local Ray, an
Optuna journal and an MLflow SQLite store adds model sizes inside the bracket where the metric
leaves chance, tags their runs, and a second `grokscale run` of the same command derives the
same cells and trains nothing.

An MLP with one hidden unit cannot compute a 3-bit parity (val accuracy stays near chance, 0.5);
16 and 64 units learn it in 300 steps (1.0): the threshold in N is bracketed by the grid. Both
runs go through the CLI's `main` in this process, so Ray starts once (about half of the test's
time on a loaded 2-core machine is Ray starting).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import ray
from mlflow.tracking import MlflowClient

from orchestrator.cli import main
from orchestrator.report.report import build_report
from orchestrator.store import names
from orchestrator.store.results import load_results

from support.cli import sqlite_uri, write_study
from support.studies import refine_parity_study

pytestmark = pytest.mark.slow

STUDY = refine_parity_study("refine_parity", max_cells=3)


@pytest.fixture
def in_process(tmp_path, monkeypatch):
    """The study's folder as the working directory; Ray shut down afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # what `run` sets; restored after
    yield tmp_path
    if ray.is_initialized():
        ray.shutdown()


def grokscale_run(capsys) -> dict:
    code = main(["run", "study.yaml", "--quiet", "--json", "--no-report"])
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
    return json.loads(out.out.strip().splitlines()[-1])


def test_refine_adds_tagged_cells_and_a_rerun_trains_nothing(in_process, capsys):
    write_study(in_process, STUDY)
    first = grokscale_run(capsys)
    refined = first["refine"]
    added = refined["added"]
    assert 1 <= len(added) <= 3 and first["failed"] == 0
    assert first["completed"] == 3 + len(added)  # one trial, one seed per cell
    # N = 6 + 19 w for w hidden units: a 2 x 2 embedding, (8 x 2 + 1) w hidden, (2 w + 2) readout
    n_one_unit, n_top = 25, 1222  # w = 1 and w = 64
    for a in added:  # each inside the bracket it split, which lies within the grid
        assert n_one_unit <= a["low"] < a["high"] <= n_top and a["line"] == 400
    line = refined["lines"][0]
    assert line["threshold"] is not None and n_one_unit <= line["threshold"] <= n_top and line["stop"]

    client = MlflowClient(sqlite_uri(in_process))
    exp = client.get_experiment_by_name("refine_parity")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parent = next(r for r in runs if r.data.tags.get(names.TAG_ROLE) == names.ROLE_STUDY)
    children = [r for r in runs if names.PARENT_RUN in r.data.tags]
    assert len(children) == first["completed"]
    tags = {r.data.tags[names.TAG_CELL]: r.data.tags.get(names.TAG_REFINED) for r in children}
    assert {k: v for k, v in tags.items() if v} == {a["key"]: names.refined_round(a["round"]) for a in added}
    assert sum(v is None for v in tags.values()) == 3  # the grid's own cells are not marked
    assert parent.data.tags[names.TAG_REFINE_SUMMARY].startswith(f"refine (n): {len(added)} cells added")
    logged = json.loads(
        Path(client.download_artifacts(parent.info.run_id, names.ARTIFACT_REFINE)).read_text()
    )
    assert logged == refined
    for r in children:  # an added cell's N lies strictly inside its bracket
        a = next((a for a in added if a["key"] == r.data.tags[names.TAG_CELL]), None)
        if a is not None:
            n = float(r.data.params[names.PARAM_N_PARAMS])
            assert a["low"] < n < a["high"] and abs(math.log(n / math.sqrt(a["low"] * a["high"]))) < math.log(
                2
            )

    second = grokscale_run(capsys)  # the same command again: the same cells, nothing retrained
    assert second["completed"] == 0 and second["failed"] == 0 and second["refine"] == refined
    assert len(client.search_runs([exp.experiment_id], max_results=1000)) == len(runs)

    # The report read back from this store shows the added cells: origin column, section, figures.
    report = build_report(load_results(sqlite_uri(in_process), "refine_parity"), in_process / "report")
    origins = dict(zip(report.summary["cell"], report.summary["origin"]))
    assert {k: v for k, v in origins.items() if v != "grid"} == {
        a["key"]: f"added ({names.refined_round(a['round'])})" for a in added
    }
    assert report.results["refine"] == refined and {"emergence_heatmap", "metric_vs_n"} <= set(report.plots)
    section = (in_process / "report" / "summary.md").read_text().split("## Refinement (grid.refine)")[1]
    assert all(f"| {a['key']} |" in section for a in added) and line["stop"] in section
