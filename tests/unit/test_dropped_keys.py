"""MLflow's own checks before a write is queued (orchestrator/store/keys.py): a metric, param or
tag MLflow would refuse (a name it does not take, a value that is no number) is dropped alone,
counted, and shown on its run (`grokscale.dropped_keys`) and on the study (the parent run's tag,
SweepStats.dropped_keys); the rest of its batch arrives, and its trial is told as it went. On real
SQLite stores, through the real Tracker and the real driver (the benchmark's simulated cluster)."""

from __future__ import annotations

import json

import optuna
from mlflow.entities import Param, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils import validation
from optuna.trial import TrialState

from orchestrator.store import names
from orchestrator.store.hold import HOLD_STUDY_PREFIX
from orchestrator.store.keys import batches, key_problem
from orchestrator.store.tracker import Tracker, config_yaml
from orchestrator.study.grid import build_cells
from orchestrator.sweep.driver import Driver
from orchestrator.sweep.search import open_storage

from support.simulated import SimulatedCluster, small_study


def test_key_problem_is_mlflows_own_check():
    for key in ("val_acc", "final.max_val_acc", "param.train.lr", "val acc/seed 0", "mlflow.parentRunId"):
        assert key_problem("metric", key) is None and key_problem("tag", key) is None
    for key in ("val acc?", "../val_acc", "/val_acc", "a//b", "k" * 251):
        assert key_problem("metric", key) and key_problem("param", key) and key_problem("tag", key), key
    assert "250" in key_problem("metric", "k" * 251)  # MLflow's own message, with its limit
    assert "text" in key_problem("metric", 7)


def test_batches_keep_within_mlflows_limits_and_end_with_the_tags():
    metrics = [("m", float(i), 0, i) for i in range(2_500)]
    params = [Param(f"p{i}", "v") for i in range(120)]
    tags = [RunTag(f"t{i}", "v") for i in range(150)]
    out = batches(metrics, params, tags)
    for m, p, t in out:
        assert len(m) <= validation.MAX_METRICS_PER_BATCH and len(p) <= validation.MAX_PARAMS_TAGS_PER_BATCH
        assert len(t) <= validation.MAX_PARAMS_TAGS_PER_BATCH
        assert len(m) + len(p) + len(t) <= validation.MAX_ENTITIES_PER_BATCH
    assert [x for m, _, _ in out for x in m] == metrics  # every point, in order
    assert [x for _, p, _ in out for x in p] == params and [x for _, _, t in out for x in t] == tags
    last_points = max(i for i, (m, _, _) in enumerate(out) if m)
    assert out[last_points][2][:1] == tags[:1]  # the end tags come with the last points
    # A run's usual end: its last points, final metrics and end tags fit in one request.
    assert len(batches(metrics[:990], [], tags[:30])) == 2 and batches([], [], []) == []


def test_a_bad_entry_is_dropped_alone_and_shown_on_its_run(tmp_path):
    """Through a real Tracker on its writer thread into a SQLite store (plain SQL, which once
    took any name; MlflowClient refused the whole batch): bad names and values go, every other
    point, param and tag arrives, and the run and the study say what was dropped."""
    study = small_study(tmp_path, "keys")
    tracker = Tracker(study)
    tracker.open(config_yaml(study))
    tracker.start_writer()
    run_id = tracker.start_run("cell/trial=0/seed=0", "t0", {"lr": 0.1, "lr?": 1}, {"bad tag!": "x"})
    tracker.log_records(
        run_id,
        [
            {"step": 100, "val_acc": 0.25, "val acc?": 0.5, "note": "n/a", "loss": None},
            {"step": 200, "val_acc": 0.75, "val acc?": 0.5, "note": "n/a", "loss": 1.5},
        ],
    )
    tracker.finish_run(
        run_id,
        "completed",
        "budget",
        {"max_val_acc": 0.75, "bad final?": 1.0},
        {names.TAG_NODE_ID: "n1", "grokscale.flops.per token!": "3"},
    )
    tracker.finish_study()
    assert tracker.drain(timeout_s=60)
    client = MlflowClient(study.tracking.uri)
    run = client.get_run(run_id)
    curve = client.get_metric_history(run_id, "val_acc")
    assert [(m.step, m.value) for m in curve] == [(100, 0.25), (200, 0.75)]
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")] == [(200, 1.5)]
    assert run.data.metrics["final.max_val_acc"] == 0.75 and run.data.params["lr"] == "0.1"
    assert run.data.tags[names.TAG_STATUS] == "completed" and run.data.tags[names.TAG_NODE_ID] == "n1"
    assert run.info.status == "FINISHED"
    assert not {"val acc?", "note", "final.bad final?"} & set(run.data.metrics)
    dropped = json.loads(run.data.tags[names.TAG_DROPPED_KEYS])
    assert set(dropped) == {
        "param lr?",
        "tag bad tag!",
        "metric val acc?",
        "metric note",
        "metric loss",
        "metric final.bad final?",
        "tag grokscale.flops.per token!",
    }
    assert "Names may only contain" in dropped["metric val acc?"] and "not a number" in dropped["metric note"]
    parent = client.get_run(tracker.parent_id)
    assert json.loads(parent.data.tags[names.TAG_DROPPED_KEYS]) == {k: 1 for k in dropped}
    assert tracker.write_failure(run_id) is None  # nothing of it was refused: not a failed run


class BadKeysCluster(SimulatedCluster):
    """A trainer whose every evaluation reports a name MLflow refuses and a value that is no
    number, and whose FLOP accounting names a key MLflow refuses."""

    def records(self):
        return [(run_id, {**r, "val acc?": r["val_acc"], "note": "n/a"}) for run_id, r in super().records()]

    def poll(self, timeout_s):
        return [(unit, {**result, "flops": {"per token!": 3.0}}) for unit, result in super().poll(timeout_s)]


def test_a_study_with_bad_keys_completes_every_trial_and_counts_them(tmp_path):
    study = small_study(tmp_path, "badkeys")
    cells = build_cells(study)
    stats = Driver(study, cells, show=False, launcher=lambda s, c: BadKeysCluster(s, c, 2, 0.3)).run()
    assert stats.completed == 3 and stats.failed == 0 and stats.write_failures == 0
    assert stats.dropped_keys == 3 * 3  # three keys, in each of three runs
    client = MlflowClient(study.tracking.uri)
    exp = client.get_experiment_by_name("badkeys")
    runs = client.search_runs([exp.experiment_id], f"tags.`{names.PARENT_RUN}` = '{stats.parent_run_id}'")
    assert len(runs) == 3
    for r in runs:
        assert r.data.tags[names.TAG_STATUS] == "completed" and r.info.status == "FINISHED"
        curve = client.get_metric_history(r.info.run_id, "val_acc")
        assert [m.step for m in curve] == list(range(100, 1001, 100))
        assert set(json.loads(r.data.tags[names.TAG_DROPPED_KEYS])) == {
            "metric val acc?",
            "metric note",
            "tag grokscale.flops.per token!",
        }
    parent = client.get_run(stats.parent_run_id)
    assert json.loads(parent.data.tags[names.TAG_DROPPED_KEYS]) == {
        "metric val acc?": 3,
        "metric note": 3,
        "tag grokscale.flops.per token!": 3,
    }
    storage = open_storage(study.storage_url)
    cells = [
        s.study_name
        for s in optuna.get_all_study_summaries(storage)
        if not s.study_name.startswith(HOLD_STUDY_PREFIX)
    ]
    trials = [t for name in cells for t in optuna.load_study(study_name=name, storage=storage).get_trials()]
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
