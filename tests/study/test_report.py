"""The report of the quickstart study, made at the end of `grokscale run` and again on demand
with `grokscale report`, read back through MLflow's API: every plot, the summary table, the
fitted numbers and the JSON are on the study's parent run."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from support import cli
from support.cli import REPO

PLOTS = {
    "emergence_heatmap.png",
    "metric_vs_n.png",
    "grokking_curves.png",
    "phase_wd_x_d.png",
    "phase_wd_x_lr.png",
    "mirage.png",
}
# The quickstart's L(N, D) fit does not describe its data (its losses are set by which runs
# grokked, not by N and D): it is rejected, so it is neither drawn nor logged as metrics.
# The quickstart as shipped, shrunk to one trial per cell and a short budget so it runs in about
# a minute; the grid (3 N x 3 D) and the searched space are the quickstart's own.
SHRINK = ["--set", "train.steps=600", "--set", "search.trials_per_cell=1", "--set", "ray.num_cpus=2"]


# The quickstart's run takes minutes on a loaded 2-core machine.
grokscale = functools.partial(cli.grokscale, timeout=600)


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("quickstart")
    shutil.copy(REPO / "sweeps" / "quickstart.yaml", tmp / "quickstart.yaml")
    out = grokscale("run", "quickstart.yaml", "--quiet", *SHRINK, cwd=tmp)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    # One line per report section; the rejected fit's reasons in a few words (all of them in results.json).
    assert "report: 6 plots" in out.stdout and "no scaling_fit (fit rejected: " in out.stdout, out.stdout[
        -2000:
    ]
    predictions = next(line for line in out.stdout.splitlines() if line.startswith("report: predictions: "))
    assert "D*" in predictions and "generalization step" in predictions, predictions  # what, not "done"
    return tmp


def parent_run(tmp: Path):
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    exp = client.get_experiment_by_name("quickstart")
    runs = client.search_runs([exp.experiment_id], "tags.`grokscale.role` = 'study'")
    assert len(runs) == 1
    return client, runs[0]


def test_parent_run_holds_every_plot_table_fit_and_json(quickstart):
    client, parent = parent_run(quickstart)
    files = {a.path.removeprefix("report/") for a in client.list_artifacts(parent.info.run_id, "report")}
    assert files >= PLOTS
    assert {"summary.csv", "summary.md", "results.json"} <= files
    local = Path(client.download_artifacts(parent.info.run_id, "report"))
    for name in PLOTS:
        png = (local / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000, (
            name
        )  # a real picture, not an empty canvas
    results = json.loads((local / "results.json").read_text())
    assert results["metric"] == "max_val_acc" and results["chance"] == pytest.approx(1 / 59)
    assert results["usable_runs"] == 9 and sorted(results["plots"]) == sorted(
        p.removesuffix(".png") for p in PLOTS
    )
    law = results["scaling_law"]
    assert law["n_inits"] == 4500 and law["convention"] == "total"
    # The rejected law is on record in the JSON with its reasons, but no number of it is a metric.
    assert law["check"]["accepted"] is False and law["check"]["reasons"]
    metrics = parent.data.metrics
    assert not any(k.startswith("report/scaling_law/") for k in metrics)
    assert results["skipped"]["scaling_fit"].startswith("fit rejected: ")
    # One trial per cell: three learning rates at each N, but one at each (N, D), so no optimum
    # can be located and the transfer check says so instead of fitting values drawn across D.
    assert "within one cell" in results["skipped"]["transfer"]
    # The mirage verdicts rest on 3 scales: insufficient data, not a confident word.
    assert {c["verdict"] for c in results["mirage"]} <= {"insufficient data", "not emergent"}
    for line in results["critical_sizes"]["d_star"]:
        key = f"report/D_star/N_{line['n']:g}"
        assert (key in metrics) == (line["threshold"] is not None)
    summary = (local / "summary.csv").read_text().splitlines()
    assert len(summary) == 1 + 9 and summary[0].startswith("cell,N,D,runs,completed")


def test_report_on_demand_reads_mlflow_alone(quickstart, tmp_path):
    # From another folder, with only the tracking URI: no study file, no Optuna journal.
    uri = f"sqlite:///{quickstart / 'mlflow.db'}"
    out = grokscale(
        "report", "quickstart", "--tracking-uri", uri, "--out", str(tmp_path / "r"), "--json", cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr[-3000:]
    made = json.loads(out.stdout.strip().splitlines()[-1])
    assert {f"{p}.png" for p in made["plots"]} == PLOTS
    assert {p.name for p in (tmp_path / "r").iterdir()} >= PLOTS
    assert not (tmp_path / "runs").exists()


def test_report_of_an_unknown_study_is_a_clear_error(quickstart, tmp_path):
    out = grokscale(
        "report", "no_such_study", "--tracking-uri", f"sqlite:///{quickstart / 'mlflow.db'}", cwd=tmp_path
    )
    assert (
        out.returncode == 2 and "no experiment 'no_such_study'" in out.stderr and "quickstart" in out.stderr
    )


# -- the report's phases agree with the events the runs recorded ---------------
THRESHOLD_STUDY = {
    "name": "thresholds",
    "task": {"name": "modular", "p": 23},
    "model": {"family": "transformer", "n_layer": 1, "n_head": 4, "layer_norm": False},
    "train": {"steps": 400, "eval_every": 20, "lr": 3e-3, "val_threshold": 0.9},
    "grid": {"n": [{"d_model": 16}], "d": [0.5], "seeds": [0]},
    "search": {
        "trials_per_cell": 1,
        "space": {"train.weight_decay": {"type": "float", "low": 0.1, "high": 3.0, "log": True}},
    },
}


def test_report_phases_use_the_study_thresholds(tmp_path, monkeypatch):
    """A study with `train.val_threshold: 0.9` whose run memorized at step 20 and reached 0.92
    validation accuracy at step 400: its trainer recorded generalization at 400 (grokking, 20x
    later). Under the default 0.95 the report called it memorization, contradicting the run."""
    import yaml

    from orchestrator.report.report import build_report
    from orchestrator.store import names
    from orchestrator.store.results import load_results
    from orchestrator.store.tracker import Tracker, config_yaml
    from orchestrator.study import load_study
    from orchestrator.study.grid import build_cells, spec_for

    monkeypatch.chdir(tmp_path)
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(THRESHOLD_STUDY))
    study = load_study(tmp_path / "study.yaml", [f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"])
    cell = build_cells(study)[0]
    spec = spec_for(study, cell, {"train.weight_decay": 1.0}, 0)
    assert spec.train.val_threshold == 0.9
    tracker = Tracker(study)  # the driver's own writer, into a real SQLite store
    tracker.open(config_yaml(study))
    params = {
        names.PARAM_CELL: cell.key,
        names.PARAM_N_PARAMS: cell.n_params.total,
        names.PARAM_N_TRAIN: cell.n_train,
        names.PARAM_SEED: 0,
        names.PARAM_TRIAL_NUMBER: 0,
        names.PARAM_SPEC_JSON: spec.model_dump_json(),
        f"{names.PARAM_SEARCHED_PREFIX}train.weight_decay": 1.0,
    }
    run_id = tracker.start_run(names.run_key(cell.key, 0, 0), "t0", params, {names.TAG_CELL: cell.key})
    steps = list(range(20, 401, 20))
    tracker.log_records(
        run_id,
        [
            {
                "step": s,
                "train_acc": 1.0,
                "val_acc": 0.92 if s == 400 else 0.3,
                "train_loss": 0.01,
                "val_loss": 2.0,
            }
            for s in steps
        ],
    )
    final = {"memorization_step": 20, "generalization_step": 400, "max_val_acc": 0.92, "steps": 400}
    tracker.finish_run(run_id, names.RunStatus.COMPLETED, "budget", final, {})
    assert tracker.drain(timeout_s=30)

    res = load_results(study.tracking.uri, "thresholds")
    assert res.runs.loc[0, "val_threshold"] == 0.9  # read back from the run's own spec
    report = build_report(res, tmp_path / "report")
    assert report.results["phases"] == {"grokking": 1}
    assert report.summary.loc[0, "phases"] == "grokking 1"
