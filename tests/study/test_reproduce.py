"""`grokscale reproduce`: a recorded run trained again equals its MLflow record bit for bit; a
record changed by one ulp is a MISMATCH; a run that does not exist is bad input."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from orchestrator.cli import main
from orchestrator.report.reproduce import compare, same_bits

from support.cli import grokscale
from support.studies import tiny_study

STUDY = tiny_study("repro", steps=60, eval_every=20, d=(0.5,), trials=1, sampler=None, seeds=(3,), num_cpus=1)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A 1 cell x 1 trial study run through the CLI: (directory, client, the child run)."""
    root = tmp_path_factory.mktemp("repro")
    (root / "study.yaml").write_text(yaml.safe_dump(STUDY))
    out = grokscale("run", "study.yaml", "--quiet", cwd=root)
    assert out.returncode == 0, out.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("repro")
    children = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 1
    return root, client, children[0]


def test_same_bits_is_bitwise():
    assert same_bits(0.1 + 0.2, 0.30000000000000004) and not same_bits(0.1 + 0.2, 0.3)
    assert same_bits(float("nan"), float("nan")) and not same_bits(0.0, -0.0)
    row = compare("val_acc", [(20, 0.5), (40, 0.75)], [(20, 0.5), (40, math.nextafter(0.75, 1))])
    assert not row.match and row.max_abs_diff == pytest.approx(1.1e-16, rel=0.1)
    assert not compare("val_acc", [(20, 0.5)], [(40, 0.5)]).match  # other steps


def test_recorded_run_reproduces_bitwise(study):
    root, client, run = study
    # The whole spec is the param (it fits MLflow's limit; a longer one also goes as spec.json:
    # tests/faults/test_faults.py), so the run has no artifact to download.
    assert json.loads(run.data.params["spec_json"])["train"] and client.list_artifacts(run.info.run_id) == []
    out = grokscale("reproduce", run.info.run_id, "--json", cwd=root)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads(out.stdout)
    assert report["verdict"] == "match (bitwise)" and report["match"] is True
    rows = {r["metric"]: r for r in report["metrics"]}
    # Every curve point (3 evaluations) and every final metric was compared, with no difference.
    for metric in ("train_loss", "train_acc", "val_loss", "val_acc", "weight_norm", "lr"):
        assert rows[metric]["points"] == 3 and rows[metric]["max_abs_diff"] == 0.0
    assert {"final.val_acc", "final.max_val_acc", "final.steps", "final.n_params_total"} <= set(rows)
    assert set(rows) == set(run.data.metrics)


def test_a_record_off_by_one_ulp_is_a_mismatch(study):
    root, client, run = study
    # A copy of the run whose val_loss differs from the record in the last bit at one step.
    copy = client.create_run(run.info.experiment_id, run_name="tampered").info.run_id
    client.log_param(copy, "spec_json", run.data.params["spec_json"])
    for key in run.data.metrics:
        for m in client.get_metric_history(run.info.run_id, key):
            value = math.nextafter(m.value, math.inf) if key == "val_loss" and m.step == 40 else m.value
            client.log_metric(copy, key, value, timestamp=m.timestamp, step=m.step)
    out = grokscale("reproduce", copy, "--json", cwd=root)
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads(out.stdout)
    assert report["verdict"] == "MISMATCH"
    bad = [r for r in report["metrics"] if not r["match"]]
    assert [r["metric"] for r in bad] == ["val_loss"] and 0 < bad[0]["max_abs_diff"] < 1e-12
    # The plain table says the same. (A separate process, as a user runs it: in-process, a study
    # an earlier test ran through `main` in this pytest process left state that changed the answer.)
    plain = grokscale("reproduce", copy, cwd=root)
    assert plain.returncode == 1, plain.stdout[-3000:] + plain.stderr[-3000:]
    table = plain.stdout
    assert "verdict: MISMATCH" in table and [
        line.split()[0] for line in table.splitlines() if "DIFF" in line
    ] == ["val_loss"]


def test_unknown_run_or_store_is_bad_input(study, tmp_path):
    root, client, run = study
    out = grokscale("reproduce", "0123456789abcdef0123456789abcdef", cwd=root)
    assert out.returncode == 2 and "no run '0123456789abcdef0123456789abcdef'" in out.stderr, out.stderr[
        -2000:
    ]
    parent = client.get_run(run.data.tags["mlflow.parentRunId"]).info.run_id
    out = grokscale("reproduce", parent, cwd=root)
    assert out.returncode == 2 and "no recorded spec" in out.stderr, out.stderr[-2000:]
    out = grokscale("reproduce", "abc", cwd=tmp_path)  # no store here, and none is created
    assert out.returncode == 2 and "no MLflow store" in out.stderr, out.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []


def test_a_user_trainer_that_cannot_be_imported_here_is_bad_input(tmp_path, capsys):
    """A run of a study's own trainer (trainers/protocol.py) whose package is not here: exit 2,
    naming the trainer and why, before anything trains. (A user trainer reproduced bit for bit:
    tests/study/test_own_trainer.py, on the example's runs.)"""
    from orchestrator.store import names
    from trainers.protocol import RunConfig, UserSpec, grokscale_train

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("own")).info.run_id
    spec = UserSpec(
        trainer="no_such_pkg.train:run",
        sys_path=[str(tmp_path / "gone")],
        config=RunConfig(n=64, d=0.5, seed=0, steps=10, eval_every=5).to_dict(),
        train=grokscale_train({"steps": 10, "eval_every": 5}),
    )
    client.log_param(run, names.PARAM_SPEC_JSON, spec.model_dump_json())
    assert main(["reproduce", run, "--tracking-uri", uri, "--trainer", "no_such_pkg.train:run"]) == 2
    err = capsys.readouterr().err
    assert "its trainer 'no_such_pkg.train:run' cannot be loaded here" in err and "PYTHONPATH" in err


# ------------------------------------------------------------------ code a record names, never run unasked
# A package that, once imported, leaves a file behind: the proof that a record's code ran.
PLANTED = """
import pathlib
pathlib.Path({marker!r}).write_text("imported")

def run(config, report, checkpoint_dir):
    report({{"step": 1, "val_acc": 0.5}})
    return {{}}
"""


def _planted(tmp_path, kind: str) -> tuple[str, str]:
    """A run (tracking URI, run id) whose record names code in tmp_path/planted/evil_pkg: its
    trainer (kind "trainer", with that folder as the recorded sys.path), or its task class."""
    from orchestrator.store import names
    from trainers import TrainSpec
    from trainers.protocol import RunConfig, UserSpec, grokscale_train

    folder = tmp_path / "planted" / "evil_pkg"
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text(PLANTED.format(marker=str(tmp_path / "ran")))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("planted")).info.run_id
    if kind == "trainer":
        text = UserSpec(
            trainer="evil_pkg:run",
            sys_path=[str(tmp_path / "planted")],
            config=RunConfig(n=64, d=0.5, seed=0, steps=1, eval_every=1).to_dict(),
            train=grokscale_train({"steps": 1, "eval_every": 1}),
        ).model_dump_json()
    else:
        data = TrainSpec().model_dump(mode="json")
        data["task"] = {"name": "evil_pkg:Task"}
        text = json.dumps(data)
    client.log_param(run, names.PARAM_SPEC_JSON, text)
    return uri, run


def test_a_recorded_trainer_runs_only_when_named_or_trusted(tmp_path, capsys):
    uri, run = _planted(tmp_path, "trainer")
    assert main(["reproduce", run, "--tracking-uri", uri]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "trainer 'evil_pkg:run'" in err and str(tmp_path / "planted") in err, err
    assert "--trainer evil_pkg:run" in err and "--trust-recorded-code" in err
    assert not (tmp_path / "ran").exists()
    # Another trainer named: still refused, saying which was named.
    assert main(["reproduce", run, "--tracking-uri", uri, "--trainer", "mine:run"]) == 2
    assert "you named 'mine:run'" in capsys.readouterr().err
    # Named: imported from the user's own path, not from the folder the record names.
    assert main(["reproduce", run, "--tracking-uri", uri, "--trainer", "evil_pkg:run"]) == 2
    assert "cannot be loaded here" in capsys.readouterr().err
    assert not (tmp_path / "ran").exists()
    # Trusted (in a process of its own: it imports the package): what it imports is printed,
    # then it runs; nothing was recorded, so it is a mismatch.
    out = grokscale("reproduce", run, "--tracking-uri", uri, "--trust-recorded-code", cwd=tmp_path)
    assert out.returncode == 1 and "verdict: MISMATCH" in out.stdout, out.stderr[-2000:]
    assert f"sys.path entry first: {tmp_path / 'planted'}" in out.stderr
    assert f"package at {tmp_path / 'planted' / 'evil_pkg' / '__init__.py'}" in out.stderr
    assert (tmp_path / "ran").read_text() == "imported"


def test_a_recorded_task_class_is_refused_before_it_is_imported(tmp_path, monkeypatch, capsys):
    """Validating a TrainSpec imports its own task class: the record is read as data first."""
    uri, run = _planted(tmp_path, "task")
    monkeypatch.syspath_prepend(str(tmp_path / "planted"))  # importable here, as a colleague's package
    assert main(["reproduce", run, "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert "task.name 'evil_pkg:Task'" in err and "--study STUDY.yaml" in err and "--trainer" not in err
    assert not (tmp_path / "ran").exists()


def test_the_study_file_names_the_trainer(tmp_path):
    """`--study` with the example's study file: its trainer runs, from the user's PYTHONPATH."""
    from orchestrator.store import names
    from trainers.protocol import RunConfig, UserSpec, grokscale_train

    example = Path(__file__).resolve().parents[2] / "examples" / "own_trainer"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("own")).info.run_id
    spec = UserSpec(
        trainer="mytrainer.train:run",
        sys_path=[str(tmp_path / "elsewhere")],
        config=RunConfig(
            n={"width": 8}, d=0.5, seed=0, steps=10, eval_every=5, task={"p": 23}, model={"d_embed": 4}
        ).to_dict(),
        train=grokscale_train({"steps": 10, "eval_every": 5}),
    )
    client.log_param(run, names.PARAM_SPEC_JSON, spec.model_dump_json())
    env = {**os.environ, "PYTHONPATH": f"{example}{os.pathsep}{example.parents[1]}"}
    out = grokscale(
        "reproduce", run, "--tracking-uri", uri, "--study", example / "study.yaml", cwd=tmp_path, env=env
    )
    assert out.returncode == 1 and "verdict: MISMATCH" in out.stdout, out.stderr[-2000:]  # none recorded
    assert "val_acc" in out.stdout
