"""A study's own sampler and stopping rule by import path, as an OptunaHub sampler installed as a
package would be named: checked at load, then used by a real `grokscale run`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import optuna
import pytest

from orchestrator.store.hold import HOLD_STUDY_PREFIX
from orchestrator.sweep.search import open_storage

from support import cli
from support.cli import grokscale

HUB = '''
import optuna

from orchestrator.sweep.stopping.base import StoppingRule
from orchestrator.sweep.stopping.rule import StopRule
from orchestrator.store.names import StopKind


class LowestSampler(optuna.samplers.RandomSampler):
    """An OptunaHub-style sampler class: every float at the bottom of its range."""

    def __init__(self, seed=None):
        super().__init__(seed=seed)

    def sample_independent(self, study, trial, name, distribution):
        return distribution.low


class StopAt100(StoppingRule):
    """A rule of the user's: every run stops at step 100 unless it has generalized."""

    def __init__(self, study):
        self.study = study

    def rules(self, run):
        return (StopRule(StopKind.OBJECTIVE, "the user's rule: step 100", min_step=100, event="val"),)


def not_a_sampler(seed=None):
    return 42
'''

STUDY = {
    "name": "plug",
    "task": {"name": "modular", "p": 23},
    "model": {"family": "transformer", "n_layer": 1, "n_head": 4, "d_model": 16, "layer_norm": False},
    "train": {"steps": 200, "eval_every": 50, "lr": 3e-3},
    "grid": {"n": [{"d_model": 16}], "d": [0.3], "seeds": [0]},
    "search": {
        "sampler": "hubpkg:LowestSampler",
        "trials_per_cell": 2,
        "space": {"train.weight_decay": {"type": "float", "low": 0.1, "high": 3.0, "log": True}},
    },
    "objectives": [{"metric": "max_val_acc", "direction": "maximize"}],
    "ray": {"num_cpus": 2},
}


@pytest.fixture
def hub(tmp_path):
    (tmp_path / "hubpkg.py").write_text(HUB)
    return {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


@pytest.mark.slow
def test_a_sampler_and_a_stopping_rule_by_import_path_run_a_study(tmp_path, hub):
    path = cli.write_study(tmp_path, {**STUDY, "prune": {"mode": "hubpkg:StopAt100"}})
    out = grokscale("run", str(path), "--quiet", "--json", "--no-report", cwd=tmp_path, env=hub)
    assert out.returncode == 0, out.stderr[-3000:]
    counts = json.loads(out.stdout.strip().splitlines()[-1])
    assert counts["stopped"] == 2  # the user's rule stopped both at step 100 (neither generalized by then)
    storage = open_storage(str(tmp_path / "runs" / "plug" / "optuna.journal"))
    [summary] = [
        s for s in optuna.get_all_study_summaries(storage) if not s.study_name.startswith(HOLD_STUDY_PREFIX)
    ]
    trials = optuna.load_study(study_name=summary.study_name, storage=storage).get_trials()
    assert [t.params["train.weight_decay"] for t in trials] == [0.1, 0.1]  # the user's sampler chose


@pytest.mark.parametrize(
    ("sampler", "mode", "message"),
    [
        (
            "hubpkg:not_a_sampler",
            "off",
            "search.sampler: hubpkg:not_a_sampler must return an optuna.samplers.BaseSampler",
        ),
        ("nopkg:Sampler", "off", "search.sampler: cannot import 'nopkg'"),
        ("tpe", "hubpkg:LowestSampler", "prune.mode: hubpkg:LowestSampler raised"),
        ("bogus", "off", "search.sampler: one of 'tpe', 'random'"),
        ("tpe", "bogus", "prune.mode: one of 'off', 'objective', 'phase'"),
    ],
)
def test_a_sampler_or_rule_that_cannot_be_used_exits_2_naming_the_field(
    tmp_path, hub, sampler, mode, message
):
    path = cli.write_study(
        tmp_path, {**STUDY, "search": {**STUDY["search"], "sampler": sampler}, "prune": {"mode": mode}}
    )
    out = grokscale("validate", str(path), cwd=tmp_path, env=hub)
    assert out.returncode == 2 and message in out.stderr, out.stderr[-2000:]
    assert not (Path(tmp_path) / "runs").exists()
