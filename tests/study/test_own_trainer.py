"""A researcher's own trainer (trainers/protocol.py) run as a study: the example package in
examples/own_trainer through a real `grokscale run` on a local Ray, Optuna journal and MLflow
store in tmp_path; and the protocol's pieces (loading, signatures, N by group, the report log).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from orchestrator.store import names
from orchestrator.sweep.user_trainer import HISTORY_FILE, RESULT_FILE, ReportLog, result_of, run_user_trainer
from trainers.protocol import (
    RunConfig,
    TrainerError,
    UserSpec,
    call_trainer,
    count_params_by_group,
    grokscale_train,
    load_trainer,
)
from trainers.spec import TrainConfig

from support.cli import GROKSCALE, REPO, grokscale, sqlite_uri
from support.processes import kill_tree

EXAMPLE = REPO / "examples" / "own_trainer"
sys.path.insert(0, str(EXAMPLE))  # the example's package, as PYTHONPATH gives it to `grokscale run`

from mytrainer.train import AdditionMLP  # noqa: E402


# -- the protocol's pieces ------------------------------------------------------------------------
def test_count_params_by_group_by_hand_and_as_the_built_in_models():
    # p=23, d_embed=16, width=32: tok_emb 23*16 = 368 and unembed 32*23 + 23 = 759 are the
    # embedding group (1127); hidden 32*32 + 32 = 1056 the rest.
    assert count_params_by_group(AdditionMLP(23, 16, 32)) == {
        "embedding": 1127,
        "non_embedding": 1056,
        "total": 2183,
    }
    from trainers.models import build_model, count_params
    from trainers.spec import TransformerModel

    model = build_model(TransformerModel(d_model=16, n_layer=1, n_head=2), 25, 23, 4)
    assert count_params_by_group(model) == count_params(model).as_dict()


def test_a_module_that_fails_at_import_is_named(tmp_path, monkeypatch):
    (tmp_path / "broken_pkg.py").write_text("raise RuntimeError('no GPU here')\n")
    (tmp_path / "typo_pkg.py").write_text("def run(config, report, checkpoint_dir)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(TrainerError, match="cannot import 'broken_pkg'.*RuntimeError: no GPU here"):
        load_trainer("broken_pkg:run")
    with pytest.raises(TrainerError, match="cannot import 'typo_pkg'.*SyntaxError"):
        load_trainer("typo_pkg:run")


def test_a_trainer_taking_the_names_in_another_order_is_called_by_name(tmp_path, monkeypatch):
    (tmp_path / "named_pkg.py").write_text(
        "def run(*, checkpoint_dir, config, report):\n    return {'got': (config, report, checkpoint_dir)}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    fn = load_trainer("named_pkg:run")
    assert call_trainer(fn, "c", "r", "d") == {"got": ("c", "r", "d")}


def test_report_log_success_stop_events_and_a_retry_that_repeats_steps(tmp_path):
    cfg = TrainConfig(steps=100, eval_every=10, warmup_steps=0, val_threshold=0.9, success_stop_evals=2)
    log = ReportLog(cfg, None, tmp_path)
    assert not log({"step": 10, "train_acc": 1.0, "val_acc": 0.2, "note": "text is not a metric"})
    assert not log({"step": 20, "train_acc": 1.0, "val_acc": 0.95})
    # The worker dies here; its retry resumes from a checkpoint at step 10 and reports 20 again.
    retry = ReportLog(cfg, None, tmp_path)
    assert not retry({"step": 20, "train_acc": 1.0, "val_acc": 0.92})
    assert retry.resumed_from_step == 10
    assert retry({"step": 30, "train_acc": 1.0, "val_acc": 0.97})  # two evals >= 0.9: success-stop
    result = result_of(retry, {"n_params": {"embedding": 3, "non_embedding": 4}, "extra": 1.5}, 0.1)
    assert result["history"]["step"] == [10.0, 20.0, 30.0] and "note" not in result["history"]
    assert result["events"] == {"memorization_step": 10, "generalization_step": 20, "diverged_step": None}
    assert result["status"] == "completed" and "success-stop" in result["reason"]
    assert result["final"]["val_acc"] == 0.97 and result["final"]["extra"] == 1.5
    assert json.loads((tmp_path / HISTORY_FILE).read_text())[-1]["step"] == 30


def test_a_non_finite_report_ends_the_run_as_diverged():
    log = ReportLog(TrainConfig(warmup_steps=0), None, None)
    assert log({"step": 5, "train_loss": float("nan")})
    assert result_of(log, {}, 0.0)["status"] == "diverged"


def _user_spec(steps: int) -> UserSpec:
    train = {"steps": steps, "eval_every": 10}
    config = RunConfig(
        n={"width": 16}, d=0.5, seed=0, steps=steps, eval_every=10, task={"p": 11}, train=train
    )
    return UserSpec(trainer="mytrainer.train:run", config=config.to_dict(), train=grokscale_train(train))


def test_a_finished_run_is_returned_again_only_for_its_own_spec(tmp_path):
    first = run_user_trainer(_user_spec(20), None, str(tmp_path))
    trained = (tmp_path / "mytrainer.pt").stat().st_mtime_ns
    assert first["steps"] == 20 and first["checkpoint_note"] is None
    assert run_user_trainer(_user_spec(20), None, str(tmp_path)) == first  # kept: not trained again
    assert (tmp_path / "mytrainer.pt").stat().st_mtime_ns == trained
    # The study's budget changed since: the kept result is another spec's, so the run trains on
    # (the example resumes from its checkpoint at step 20) and says why.
    longer = run_user_trainer(_user_spec(30), None, str(tmp_path))
    assert longer["steps"] == 30 and longer["history"]["step"] == [10.0, 20.0, 30.0]
    assert "belongs to another spec" in longer["checkpoint_note"] and longer["resumed_from_step"] == 20


# -- through `grokscale run` ------------------------------------------------------------------------
def _study(tmp_path: Path, **train) -> Path:
    study = yaml.safe_load((EXAMPLE / "study.yaml").read_text())
    study["train"] = {**study["train"], "steps": 60, "eval_every": 20, **train}
    study["search"]["trials_per_cell"] = 1
    study["workdir"] = str(tmp_path / "runs")
    study["tracking"] = {"uri": sqlite_uri(tmp_path)}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


@pytest.fixture
def ray_tmp():
    """A short folder for Ray's session: its socket paths must stay under 107 bytes."""
    path = tempfile.mkdtemp(prefix="gs-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _env(ray_tmp: str) -> dict:
    return {**os.environ, "PYTHONPATH": f"{EXAMPLE}{os.pathsep}{REPO}", "RAY_TMPDIR": ray_tmp}


def _children(tmp_path: Path) -> list:
    client = MlflowClient(sqlite_uri(tmp_path))
    exp = client.get_experiment_by_name("own_trainer")
    runs = client.search_runs([exp.experiment_id])
    return [r for r in runs if names.PARENT_RUN in r.data.tags]


@pytest.mark.slow
def test_example_study_records_curves_and_n_and_its_report(tmp_path, ray_tmp):
    study = _study(tmp_path)
    out = grokscale("run", study, "--quiet", cwd=tmp_path, env=_env(ray_tmp), timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]

    client = MlflowClient(sqlite_uri(tmp_path))
    children = _children(tmp_path)
    assert len(children) == 4  # 2 widths x 2 fractions x 1 trial x 1 seed
    for run in children:
        assert run.data.tags[names.TAG_STATUS] == "completed", run.data.tags.get(names.TAG_REASON)
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
        assert steps == [20, 40, 60]
        width = json.loads(run.data.params[names.PARAM_SPEC_JSON])["config"]["n"]["width"]
        counts = count_params_by_group(AdditionMLP(23, 16, width))
        assert float(run.data.params[names.PARAM_N_PARAMS]) == counts["total"]
        assert float(run.data.params[names.PARAM_N_PARAMS_EMBEDDING]) == counts["embedding"]
        assert run.data.metrics[f"{names.FINAL_PREFIX}{names.N_PARAMS_METRIC_PREFIX}total"] == counts["total"]

    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "runs" / "optuna.journal"))
    )
    cells = [s.study_name for s in optuna.get_all_study_summaries(storage) if "N[width=" in s.study_name]
    trials = [t for name in cells for t in optuna.load_study(study_name=name, storage=storage).trials]
    assert len(cells) == 4 and [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 4

    report = grokscale("report", study, "--out", tmp_path / "report", cwd=tmp_path, env=_env(ray_tmp))
    assert report.returncode == 0, report.stderr[-3000:]
    assert list((tmp_path / "report").glob("*.png")), report.stdout

    # `grokscale reproduce` imports a record's code only when told to: refused unnamed; trusted,
    # it calls the function again from the run's record alone (its package's folder is in the
    # record: not on this PYTHONPATH) and gets every number bit for bit.
    run = children[0]
    args = ("reproduce", run.info.run_id, "--json", "--tracking-uri", sqlite_uri(tmp_path))
    out = grokscale(*args, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 2 and "trainer 'mytrainer.train:run'" in out.stderr, out.stderr[-3000:]
    out = grokscale(*args, "--trust-recorded-code", cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = {r["metric"]: r for r in json.loads(out.stdout)["metrics"]}
    assert set(rows) == set(run.data.metrics) and all(r["match"] for r in rows.values())
    for metric in ("train_loss", "train_acc", "val_loss", "val_acc"):
        assert rows[metric]["points"] == 3 and rows[metric]["max_abs_diff"] == 0.0
    assert {"final.val_acc", "final.n_train", "final.n_params_total", "final.steps"} <= set(rows)


@pytest.mark.slow
def test_driver_killed_and_rerun_retrains_no_completed_run(tmp_path, ray_tmp):
    study = _study(tmp_path, sleep_per_step=0.05)  # ~3 s a run: the kill lands mid-study
    driver = subprocess.Popen(
        [*GROKSCALE, "run", str(study), "--quiet"],
        cwd=tmp_path,
        env=_env(ray_tmp),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not list((tmp_path / "runs").rglob(RESULT_FILE)) and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(1.0)  # let the driver record it (or not: either way it must not train it again)
    finally:
        kill_tree(driver.pid)
        driver.wait(timeout=30)  # reaped: a zombie would still look like the study's holder
    done = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob(RESULT_FILE)}
    assert done, "no run finished before the kill"

    out = grokscale("run", study, "--quiet", cwd=tmp_path, env=_env(ray_tmp), timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in done} == done  # never called again
    client = MlflowClient(sqlite_uri(tmp_path))
    children = _children(tmp_path)
    assert len(children) == 4
    for run in children:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
        assert sorted(steps) == [20, 40, 60], steps  # whole, no step logged twice (in logging order)


# -- a trainer written from the README alone: losses only, no task: or model: sections -------------
REGRESSION = '''
import torch


def run(config, report, checkpoint_dir):
    """A teacher-student regression in plain PyTorch: it reports losses, nothing else."""
    torch.manual_seed(config.seed)
    teacher = torch.nn.Linear(8, 1)
    x, xv = torch.randn(int(config.d), 8), torch.randn(128, 8)
    y, yv = teacher(x).detach(), teacher(xv).detach()
    width = config.n["width"]
    model = torch.nn.Sequential(torch.nn.Linear(8, width), torch.nn.ReLU(), torch.nn.Linear(width, 1))
    opt = torch.optim.Adam(model.parameters(), lr=config.train["lr"])
    for step in range(1, config.steps + 1):
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % config.eval_every == 0:
            with torch.no_grad():
                val = torch.nn.functional.mse_loss(model(xv), yv).item()
            if report({"step": step, "train_loss": loss.item(), "val_loss": val}):
                break
    return {"val_loss": val}
'''


def test_a_trainer_that_reports_only_losses_runs_and_reports(tmp_path):
    """No `task:` or `model:` section, no accuracy, no N: every run trains, the study exits 0, and
    the report says per section what it could not do instead of a traceback."""
    (tmp_path / "regress.py").write_text(REGRESSION)
    study = {
        "name": "regress",
        "trainer": "regress:run",
        "train": {"steps": 60, "eval_every": 20, "lr": 0.01},
        "grid": {"n": [{"width": 8}, {"width": 32}], "d": [64, 256], "seeds": [0]},
        "search": {
            "trials_per_cell": 1,
            "space": {"train.lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True}},
        },
        "objectives": [{"metric": "min_val_loss", "direction": "minimize"}],
        "ray": {"num_cpus": 2},
    }
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    out = grokscale("run", "study.yaml", cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Traceback" not in out.stdout + out.stderr
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("report: ")]
    assert "report: grokking: skipped, the runs did not report train_acc, val_acc" in lines
    assert any(ln.startswith("report: scaling: skipped") for ln in lines)
    assert "4 completed" in out.stdout
    client = MlflowClient(sqlite_uri(tmp_path))
    parent = [
        r
        for r in client.search_runs([client.get_experiment_by_name("regress").experiment_id])
        if "mlflow.parentRunId" not in r.data.tags
    ][0]
    local = client.download_artifacts(parent.info.run_id, "report/results.json", str(tmp_path))
    results = json.loads(Path(local).read_text())
    assert {"emergence", "grokking", "scaling"} <= set(results["skipped"]) and results["section_errors"] == {}
