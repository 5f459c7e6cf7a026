"""search.scope: study: one Optuna study for every cell, each trial run in every cell and told once
all of its runs are in, its value the mean of the cells' values; resume after the driver lost its
cluster; and a real small study through the command line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from orchestrator.store import names
from orchestrator.store.hold import HOLD_STUDY_PREFIX
from orchestrator.study import Study
from orchestrator.study.grid import build_cells
from orchestrator.sweep.cell import TRIAL_CELL_VALUES
from orchestrator.sweep.driver import Driver
from orchestrator.sweep.launcher import ClusterLost
from orchestrator.sweep.search import SCOPE_STUDY_KEY, open_storage

from support import cli
from support.cli import grokscale

LR_AT = 1e-2  # the rule's value at n = 1e4: lr = LR_AT x (n / 1e4)^-0.5


def scope_study(tmp_path: Path, trials: int = 4, **sections) -> dict:
    return {
        "name": "scope",
        "task": {"name": "modular", "p": 23},
        "model": {"family": "transformer", "n_layer": 1, "n_head": 4, "layer_norm": False},
        "train": {
            "steps": 60,
            "eval_every": 30,
            "warmup_steps": 0,
            "lr": {"rule": "power", "value": LR_AT, "at": {"n": 1e4}, "exponent": {"n": -0.5}},
        },
        "grid": {"n": [{"d_model": 8}, {"d_model": 16}, {"d_model": 32}], "d": [0.5], "seeds": [0]},
        "search": {
            "sampler": "random",
            "scope": "study",
            "trials_per_cell": trials,
            "space": {"train.lr.value": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True}},
        },
        "objectives": [{"metric": "min_val_loss", "direction": "minimize"}],
        "pack": {"mode": "off"},
        "ray": {"num_cpus": 2},
        "tracking": {"uri": cli.sqlite_uri(tmp_path)},
        "workdir": str(tmp_path / "runs" / "scope"),
        **sections,
    }


def fake_loss(unit) -> float:
    """A loss whose best rate is 3e-3 x (n / 1e4)^-0.5 in every cell: the rule's form, another value."""
    best = 3e-3 * (unit.cell.n("total") / 1e4) ** -0.5
    return 1.0 + math.log(unit.spec.train.lr / best) ** 2 + 1e4 / unit.cell.n("total")


class FakeLauncher:
    """The launcher's methods, in this process: each run ends at the next poll with fake_loss;
    `lose_after` polls that returned runs, the cluster is lost (ClusterLost), runs left in flight."""

    capacity = 2

    def __init__(self, lose_after: int | None = None) -> None:
        self.pending, self.submitted, self.lose_after, self.polls = [], [], lose_after, 0

    def wait_warm(self) -> None: ...
    def close(self) -> None: ...
    def post_rules(self, run_id, rules) -> None: ...
    def records(self) -> list:
        return []

    def running(self):
        yield from self.pending

    def __len__(self) -> int:
        return len(self.pending)

    def submit(self, units: list) -> None:
        self.pending += units
        self.submitted += [(u.cell.key, u.trial_number, u.spec.train.lr) for u in units]

    def poll(self, timeout_s: float) -> list:
        if self.lose_after is not None and self.polls >= self.lose_after:
            raise ClusterLost(RuntimeError("the raylet died"))
        self.polls += 1
        done, self.pending = self.pending[:1], self.pending[1:]  # one at a time: trials overlap
        return [
            (
                u,
                {
                    "status": "completed",
                    "reason": "",
                    "steps": u.spec.train.steps,
                    "final": {"val_loss": fake_loss(u)},
                    "history": {"step": [u.spec.train.steps], "val_loss": [fake_loss(u)]},
                    "events": {},
                },
            )
            for u in done
        ]


def shared_trials(study: Study) -> tuple[list[str], list[optuna.trial.FrozenTrial]]:
    storage = open_storage(study.storage_url)
    studies = [
        s.study_name
        for s in optuna.get_all_study_summaries(storage)
        if not s.study_name.startswith(HOLD_STUDY_PREFIX)
    ]
    name = names.optuna_study_name(study.name, SCOPE_STUDY_KEY)
    return studies, optuna.load_study(study_name=name, storage=storage).get_trials()


def test_one_study_serves_every_cell_and_resumes(tmp_path):
    study = Study.model_validate(scope_study(tmp_path, trials=4))
    cells = build_cells(study)
    lost = FakeLauncher(lose_after=5)  # 5 of 12 runs in, a trial or two told, others in flight
    with pytest.raises(ClusterLost):
        Driver(study, cells, show=False, launcher=lambda s, c: lost).run()
    studies, before = shared_trials(study)
    told = {t.number for t in before if t.state == TrialState.COMPLETE}
    assert studies == [f"scope/{SCOPE_STUDY_KEY}"]  # one Optuna study, not one per cell
    assert 1 <= len(told) < 4 and any(t.state == TrialState.RUNNING for t in before)

    again = FakeLauncher()
    stats = Driver(study, cells, show=False, launcher=lambda s, c: again).run()
    _, trials = shared_trials(study)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4  # no new trial past trials_per_cell
    assert {n for _, n, _ in again.submitted} == {t.number for t in trials} - told  # told ones never rerun
    assert stats.completed == 3 * (4 - len(told))
    lrs = {(key, n): lr for key, n, lr in lost.submitted + again.submitted}
    for t in trials:
        per_cell = t.user_attrs[TRIAL_CELL_VALUES]
        assert sorted(per_cell) == sorted(c.key for c in cells)  # every cell ran the trial
        assert t.value == pytest.approx(sum(v[0] for v in per_cell.values()) / 3)  # the mean over cells
        for cell in cells:  # one constant, resolved per cell by the rule
            lr = t.params["train.lr.value"] * (cell.n("total") / 1e4) ** -0.5
            assert lrs[(cell.key, t.number)] == pytest.approx(lr)

    # Each cell's runs: one per trial, in MLflow once (the reruns reopened theirs).
    client = MlflowClient(study.tracking.uri)
    exp = client.get_experiment_by_name("scope")
    found = client.search_runs([exp.experiment_id], f"tags.`{names.TAG_CELL}` != ''", max_results=100)
    keys = [r.data.tags[names.TAG_RUN_KEY] for r in found]
    assert len(keys) == len(set(keys)) == 12


def test_a_value_one_cell_refuses_fails_the_trial_once_for_all(tmp_path):
    """warmup_steps = value x (N / N_large)^-1: a value of 40 fits the large cell's 60 steps but not
    the small one's (about 4 x 40 steps of warmup). The large cell (the costliest, first) starts it;
    the small one refuses it: the trial fails once, naming the cell, and the large cell's run of it
    ends untold. The other value runs in both cells."""
    large = build_cells(Study.model_validate(scope_study(tmp_path)))[-1].n("total")
    data = scope_study(
        tmp_path, trials=2, grid={"n": [{"d_model": 8}, {"d_model": 32}], "d": [0.5], "seeds": [0]}
    )
    data["train"]["warmup_steps"] = {"rule": "power", "value": 5, "at": {"n": large}, "exponent": {"n": -1}}
    data["search"] = {
        **data["search"],
        "sampler": "grid",
        "space": {"train.warmup_steps.value": {"type": "categorical", "choices": [5, 40]}},
    }
    study = Study.model_validate(data)
    cells = build_cells(study)
    launcher = FakeLauncher()
    stats = Driver(study, cells, show=False, launcher=lambda s, c: launcher).run()
    _, trials = shared_trials(study)
    by_value = {t.params["train.warmup_steps.value"]: t for t in trials}
    assert by_value[5].state == TrialState.COMPLETE and len(by_value[5].user_attrs[TRIAL_CELL_VALUES]) == 2
    assert by_value[40].state == TrialState.FAIL and stats.failed == 1
    reason = by_value[40].user_attrs[names.TRIAL_REASON]
    assert reason.startswith(cells[0].key) and "warmup_steps" in reason
    assert (cells[1].key, by_value[40].number) in {(k, n) for k, n, _ in launcher.submitted}
    assert stats.completed == len(launcher.submitted) == 3


def test_a_real_study_searches_the_rule_constant_once(tmp_path):
    """Through the command line, on Ray: 3 cells x 3 trials, one Optuna study, the resolved rate
    in each run's recorded spec."""
    data = scope_study(tmp_path, trials=3)
    data.pop("tracking"), data.pop("workdir")
    path = cli.write_study(tmp_path, data)
    out = grokscale("run", str(path), "--quiet", "--json", "--no-report", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1])["completed"] == 9
    study = Study.model_validate({**data, "workdir": str(tmp_path / "runs" / "scope")})
    studies, trials = shared_trials(study)
    assert studies == [f"scope/{SCOPE_STUDY_KEY}"] and [t.state for t in trials] == [TrialState.COMPLETE] * 3
    client = MlflowClient(cli.sqlite_uri(tmp_path))
    runs = client.search_runs(
        [client.get_experiment_by_name("scope").experiment_id], f"tags.`{names.TAG_CELL}` != ''"
    )
    assert len(runs) == 9
    by_trial = {t.number: t for t in trials}
    for run in runs:
        t = by_trial[int(run.data.params[names.PARAM_TRIAL_NUMBER])]
        n = float(run.data.params[names.PARAM_N_PARAMS])
        spec = json.loads(run.data.params[names.PARAM_SPEC_JSON])
        assert spec["train"]["lr"] == pytest.approx(t.params["train.lr.value"] * (n / 1e4) ** -0.5)
        assert float(run.data.params["param.train.lr.value"]) == pytest.approx(t.params["train.lr.value"])
    for t in trials:
        values = t.user_attrs[TRIAL_CELL_VALUES]
        assert len(values) == 3 and t.value == pytest.approx(sum(v[0] for v in values.values()) / 3)
