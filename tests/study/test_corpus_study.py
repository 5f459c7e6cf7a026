"""A real corpus as a study's task (trainers/corpus, `task: {name: corpus, ...}`): a generated
folder of text through a real `grokscale run` on a local Ray, Optuna journal and MLflow store in
tmp_path. The corpus is tokenized once for the study, every run reads it by absolute path, D
counts training tokens and one epoch is the default length."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from orchestrator.store import names

from support.cli import REPO, grokscale, listing, sqlite_uri

WORDS = [
    "the",
    "model",
    "reads",
    "a",
    "token",
    "and",
    "predicts",
    "next",
    "one",
    "while",
    "loss",
    "falls",
    "as",
    "data",
    "grows",
    "small",
    "networks",
    "learn",
    "simple",
    "patterns",
    "before",
    "rare",
    "ones",
]


def write_text_folder(root: Path, n_files: int = 40, seed: int = 0) -> Path:
    """n_files documents of lines drawn from a small vocabulary: BPE finds merges, a model finds
    structure, and the same seed writes the same bytes."""
    rng = random.Random(seed)
    (root / "sub").mkdir(parents=True)
    for i in range(n_files):
        lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))) for _ in range(60)]
        (root / ("sub" if i % 3 == 0 else "") / f"doc{i:02d}.txt").write_text("\n".join(lines) + "\n")
    return root


def corpus_study(where: Path, source: str) -> dict:
    return {
        "name": "corpus_tiny",
        "task": {
            "name": "corpus",
            "source": source,
            "tokenizer": "bpe",
            "vocab_size": 300,
            "seq_len": 32,
            "n_val_tokens": 2048,
        },
        "model": {"family": "transformer", "n_layer": 1, "n_head": 2},
        "train": {"batch_size": 16, "eval_every": 10, "lr": 1e-2, "weight_decay": 0.0, "warmup_steps": 2},
        "grid": {"n": [{"d_model": 16}], "d": [8000, 16000], "seeds": [0]},
        "search": {"trials_per_cell": 1},
        "objectives": [{"metric": "min_val_loss", "direction": "minimize"}],
        "workdir": str(where / "runs"),
        "tracking": {"uri": sqlite_uri(where)},
        "ray": {"num_cpus": 2},
    }


@pytest.fixture
def ray_tmp():
    """A short folder for Ray's session: its socket paths must stay under 107 bytes."""
    path = tempfile.mkdtemp(prefix="gs-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
def test_corpus_study_tokenizes_once_and_trains_one_epoch_of_d_tokens(tmp_path, ray_tmp):
    text = write_text_folder(tmp_path / "text")
    (tmp_path / "study").mkdir()
    study = tmp_path / "study" / "study.yaml"
    # Relative to the study file's folder, not to the directory grokscale runs in (tmp_path/elsewhere).
    study.write_text(yaml.safe_dump(corpus_study(tmp_path, "../text")))
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_TMPDIR": ray_tmp}
    out = grokscale("run", study, "--quiet", "--no-report", cwd=cwd, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]

    builds = [p for p in (tmp_path / "runs" / "corpus").iterdir() if p.is_dir()]
    assert len(builds) == 1 and (builds[0] / "meta.json").is_file()  # one build, shared by both runs
    meta = json.loads((builds[0] / "meta.json").read_text())
    assert meta["source"] == str(text) and meta["tokenizer"] == "bpe" and meta["vocab_size"] <= 300

    client = MlflowClient(sqlite_uri(tmp_path))
    exp = client.get_experiment_by_name("corpus_tiny")
    children = [r for r in client.search_runs([exp.experiment_id]) if names.PARENT_RUN in r.data.tags]
    assert len(children) == 2
    for run in children:
        assert run.data.tags[names.TAG_STATUS] == "completed", run.data.tags.get(names.TAG_REASON)
        spec = json.loads(run.data.params[names.PARAM_SPEC_JSON])
        d = spec["task"]["n_train_tokens"]
        assert spec["task"]["source"] == str(text)  # absolute: every worker reads the same folder
        assert spec["task"]["cache_dir"] == str(tmp_path / "runs" / "corpus")
        assert int(run.data.params[names.PARAM_N_TRAIN]) == d  # D counts tokens
        # One epoch by default: every non-overlapping window of 32 tokens once, 16 a step.
        windows = (d - 1) // 32
        steps = math.ceil(windows / 16)
        assert run.data.metrics["final.steps"] == steps
        assert run.data.metrics["tokens"] == steps * 16 * 32
        assert 1.0 <= run.data.metrics["epochs"] < 1 + 16 / windows
        curve = client.get_metric_history(run.info.run_id, "val_loss")
        assert [m.step for m in curve] == [*range(10, steps, 10), steps]
        # Held-out loss in nats per token, from ln(vocab) at the start to well below it.
        assert curve[-1].value < math.log(meta["vocab_size"]) - 1.0, [m.value for m in curve]


def test_missing_source_exits_2_naming_task_source_and_a_set_path_is_relative_to_cwd(tmp_path):
    (tmp_path / "study").mkdir()
    study = tmp_path / "study" / "study.yaml"
    study.write_text(yaml.safe_dump(corpus_study(tmp_path, "no_such_folder")))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = grokscale("validate", study, cwd=tmp_path, env=env)
    assert out.returncode == 2
    assert f"error: task.source: {tmp_path / 'study' / 'no_such_folder'} does not exist" in out.stderr, (
        out.stderr
    )
    assert listing(tmp_path) == ["study", "study/study.yaml"]  # no cache, runs/ or store

    write_text_folder(tmp_path / "text")
    out = grokscale("validate", study, "--set", "task.source=text", cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "D = 8,000" in out.stdout and (tmp_path / "runs" / "corpus").is_dir()
