"""Security defaults: a study file cannot run code, no credential reaches MLflow, and every server
the project starts by default listens on the loopback interface only."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from orchestrator.store.tracker import config_yaml, scrub
from orchestrator.study import StudyError, load_study

from support.cli import GROKSCALE, REPO, grokscale, listing
from support.processes import tree
from support.studies import tiny_study

STUDY = tiny_study("secure", steps=50, eval_every=25, d=(0.5,), trials=1, sampler=None, num_cpus=1)


# -- YAML is data, never code --------------------------------------------------------------------
def test_python_tags_in_a_study_are_refused_and_run_nothing(tmp_path):
    text = (REPO / "tests" / "unit" / "broken_configs" / "_valid.yaml").read_text()
    tag = '!!python/object/apply:os.system ["touch pwned"]'
    (tmp_path / "study.yaml").write_text(text.replace("name: tiny", f"name: {tag}"))
    before = listing(tmp_path)
    out = grokscale(
        "run",
        "study.yaml",
        "--quiet",
        cwd=tmp_path,
        timeout=120,
        env={**os.environ, "RAY_TMPDIR": str(tmp_path)},
    )
    assert out.returncode == 2 and "not valid YAML" in out.stderr and "Traceback" not in out.stderr, (
        out.stderr
    )
    assert not (tmp_path / "pwned").exists()
    assert listing(tmp_path) == before  # no MLflow store, runs/, journal, checkpoints, Ray session


@pytest.mark.parametrize(
    "tag",
    [
        '!!python/object/apply:os.system ["touch pwned"]',
        "!!python/name:os.system",
        "!!python/module:os",
        '!!python/object/new:subprocess.Popen [["touch", "pwned"]]',
    ],
)
def test_every_python_tag_is_an_error(tag, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "study.yaml"
    path.write_text(f"name: tiny\ndescription: {tag}\n")
    with pytest.raises(StudyError, match="not valid YAML"):
        load_study(path)
    assert listing(tmp_path) == ["study.yaml"]


# -- no credential in MLflow ---------------------------------------------------------------------
def test_scrub_redacts_urls_credentials_and_environment_values(monkeypatch):
    token = secrets.token_hex(12)
    monkeypatch.setenv("GROKSCALE_API_KEY", token)
    out = scrub(
        {
            "storage": "postgresql://optuna:s3cretpw@db.lab:5432/optuna",
            "db_password": "hunter22",
            "note": f"the key is {token}",
            "list": ["https://bob:pw@example.com/x"],
            "task.n_train_tokens": 200_000,
            "val_token_acc": 0.5,
        }
    )
    assert out == {
        "storage": "postgresql://optuna:<redacted>@db.lab:5432/optuna",
        "db_password": "<redacted>",
        "note": "the key is <redacted>",
        "list": ["https://bob:<redacted>@example.com/x"],
        "task.n_train_tokens": 200_000,
        "val_token_acc": 0.5,
    }  # token counts are not tokens


def test_the_logged_config_has_no_database_password(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(STUDY))
    study = load_study(
        path,
        [
            "storage=postgresql://optuna:s3cret-pw@127.0.0.1:1/optuna",
            "tracking.uri=https://mlflow:tr4cking-pw@mlflow.lab:443",
        ],
    )
    text = config_yaml(study)
    assert "s3cret-pw" not in text and "tr4cking-pw" not in text
    logged = yaml.safe_load(text)
    assert logged["storage"] == "postgresql://optuna:<redacted>@127.0.0.1:1/optuna"
    assert logged["tracking"]["uri"] == "https://mlflow:<redacted>@mlflow.lab:443"


def test_no_secret_from_the_environment_reaches_mlflow(tmp_path):
    """A real study run with credentials in its environment and in its config: not one of them is
    in any param, tag or artifact of the study's runs, nor in the Optuna journal."""
    env_secrets = {
        name: secrets.token_hex(16)
        for name in ("MLFLOW_TRACKING_TOKEN", "AWS_SECRET_ACCESS_KEY", "GROKSCALE_API_KEY", "DB_PASSWORD")
    }
    url_password = secrets.token_hex(8)
    study = {
        **STUDY,
        "description": f"mirrored to https://bob:{url_password}@results.lab/x; "
        f"key {env_secrets['GROKSCALE_API_KEY']}",
    }
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    out = grokscale("run", "study.yaml", "--quiet", cwd=tmp_path, env={**os.environ, **env_secrets})
    assert out.returncode == 0, out.stderr[-3000:]
    forbidden = [*env_secrets.values(), url_password]

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("secure")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 2  # the study's run and one training run
    seen = []
    for run in runs:
        seen += [f"{k}={v}" for k, v in {**run.data.params, **run.data.tags}.items()]
        local = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / run.info.run_id)))
        for path in local.rglob("*"):  # every artifact, the report's included
            if path.is_file():
                seen.append(path.read_bytes().decode("utf-8", errors="replace"))
    seen.append((tmp_path / "runs" / "secure" / "optuna.journal").read_text())
    blob = "\n".join(seen)
    assert "https://bob:<redacted>@results.lab/x; key <redacted>" in blob  # the description, as logged
    assert "spec_json=" in blob and '"task"' in blob  # the child's params and its spec.json were read
    for value in forbidden:
        assert value not in blob


LEAKY_TRAINER = """
def run(config, report, checkpoint_dir):
    report({"step": 1, "train_acc": 0.5, "val_acc": 0.5})
    if config.seed == 1:  # a failure whose message quotes a credential, as a login error may
        raise RuntimeError("the results server refused key " + config.task["api_key"])
    return {"val_acc": 0.5, "val_loss": 1.0}
"""


def test_no_planted_credential_reaches_any_store_or_output(tmp_path):
    """A real study of a user trainer whose config holds planted credentials (task.api_key, a
    password in the Optuna storage URL's query, a URL's password and ?token= in the description),
    one of whose runs fails quoting its key: not one of them is in any byte or file name of the
    MLflow store (database, write-ahead log, artifacts, the report), the Optuna storage, or what
    `grokscale run` and `status` print. The checkpoints folder is the trainer's own, and left out."""
    planted = {name: secrets.token_hex(12) for name in ("api_key", "storage_pw", "url_pw", "url_token")}
    (tmp_path / "leaky_trainer.py").write_text(LEAKY_TRAINER)
    study = {
        "name": "leaky",
        "trainer": "leaky_trainer:run",
        "description": f"https://bob:{planted['url_pw']}@results.lab/x?token={planted['url_token']}",
        "task": {"api_key": planted["api_key"]},
        "train": {"steps": 2, "eval_every": 1},
        "grid": {"n": [{"width": 8}], "d": [0.5], "seeds": [0, 1]},
        "search": {"sampler": "random", "trials_per_cell": 1},
        "storage": f"sqlite:///{tmp_path / 'optuna.db'}?password={planted['storage_pw']}",
        "ray": {"num_cpus": 1},
    }
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    run = grokscale("run", "study.yaml", "--quiet", cwd=tmp_path, env=env)
    assert run.returncode == 1, run.stderr[-3000:]  # the run of seed 1 failed, as planted
    status = grokscale("status", "study.yaml", cwd=tmp_path, env=env)
    assert status.returncode == 0, status.stderr[-3000:]

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("leaky").experiment_id])
    reasons = [r.data.tags.get("grokscale.reason", "") for r in runs]
    assert any("refused key <redacted>" in reason for reason in reasons), reasons  # the traceback, scrubbed
    assert "optuna.db?password=<redacted>" in status.stdout + run.stdout  # the storage URL, as printed
    seen = [run.stdout, run.stderr, status.stdout, status.stderr]
    for path in tmp_path.rglob("*"):
        where = path.relative_to(tmp_path)
        seen.append(str(where))
        if path.is_file() and "checkpoints" not in where.parts and path.name != "study.yaml":
            seen.append(path.read_bytes().decode("utf-8", errors="replace"))
    assert "optuna.db" in seen and "mlflow.db" in seen  # both stores were read
    blob = "\n".join(seen)
    for name, value in planted.items():
        assert value not in blob, f"the planted {name} leaked"


# -- servers listen on 127.0.0.1 -----------------------------------------------------------------
def test_mlflow_ui_commands_bind_loopback():
    from click import Context
    from mlflow.cli import cli

    ui = cli.get_command(Context(cli), "ui")
    host = next(p for p in ui.params if p.name == "host")
    assert host.default == "127.0.0.1"  # so a plain `mlflow ui` (README) is local only
    makefile = (REPO / "Makefile").read_text()
    recipe = re.search(r"^ui:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE).group(1)
    assert "mlflow ui --host 127.0.0.1" in recipe
    docs = makefile + (REPO / "README.md").read_text()
    commands = re.findall(r"mlflow (?:ui|server)[^\n`']*", docs)
    assert commands
    for command in commands:
        assert "--host" not in command or "--host 127.0.0.1" in command, command
    assert "0.0.0.0" not in docs


def _listening(pids: set[int]) -> dict[str, str]:
    """Listening TCP address -> process name, for the given processes (ss -ltnp)."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, timeout=30).stdout
    found = {}
    for line in out.splitlines():
        users = re.findall(r'\("([^"]+)",pid=(\d+)', line)
        if any(int(pid) in pids for _, pid in users):
            found[line.split()[3]] = users[0][0]
    return found


LOOPBACK = re.compile(r"^(127\.\d+\.\d+\.\d+|\[::1\]|\[::ffff:127\.\d+\.\d+\.\d+\]):\d+$")


@pytest.mark.skipif(
    shutil.which("ss") is None or not Path("/proc").is_dir(), reason="needs ss and /proc (Linux)"
)
def test_the_local_ray_of_a_study_listens_on_loopback_only(tmp_path):
    study = {**STUDY, "train": {**STUDY["train"], "steps": 1500, "eval_every": 500}, "ray": {"num_cpus": 1}}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    driver = subprocess.Popen(
        [*GROKSCALE, "run", "study.yaml", "--quiet"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: dict[str, str] = {}
    deadline = time.monotonic() + 240
    while driver.poll() is None and time.monotonic() < deadline:
        seen.update(_listening({driver.pid, *tree(driver.pid)}))
        time.sleep(0.5)
    _, err = driver.communicate(timeout=240)
    assert driver.returncode == 0, err[-3000:]
    assert {"gcs_server", "raylet"} <= set(seen.values()), f"Ray was never seen listening: {seen}"
    open_to_all = {addr: name for addr, name in seen.items() if not LOOPBACK.match(addr)}
    assert not open_to_all, f"listening beyond 127.0.0.1: {open_to_all}"
