"""A damaged Optuna journal (orchestrator/store/journal.py), on real journal files written by
Optuna: a cut-short last record is set aside and the study goes on with every whole record; a
damaged record elsewhere is a clear error that changes nothing."""

from __future__ import annotations

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from orchestrator.store.journal import JournalCorrupt, check_journal

from support.cli import grokscale


def write_study(path, n: int = 3) -> bytes:
    study = optuna.create_study(storage=JournalStorage(JournalFileBackend(str(path))), study_name="cell")
    for _ in range(n):
        trial = study.ask()
        trial.suggest_float("x", 0, 1)
        study.tell(trial, 1.0)
    return path.read_bytes()


def load(path) -> optuna.Study:
    return optuna.load_study(storage=JournalStorage(JournalFileBackend(str(path))), study_name="cell")


def test_whole_journal_is_left_alone(tmp_path):
    path = tmp_path / "optuna.journal"
    data = write_study(path)
    assert check_journal(path) is None and path.read_bytes() == data
    assert check_journal(tmp_path / "absent.journal") is None


def test_cut_short_last_record_is_set_aside_and_the_study_goes_on(tmp_path):
    path = tmp_path / "optuna.journal"
    data = write_study(path)
    path.write_bytes(data[:-30])  # the last tell, cut mid-write
    note = check_journal(path)
    assert note is not None and "cut short" in note
    aside = list(tmp_path.glob("optuna.journal.partial-*"))
    assert len(aside) == 1 and data[:-30].endswith(aside[0].read_bytes())  # kept, not lost
    study = load(path)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.RUNNING]
    # Without the check this append would be glued to the partial line and break every later read.
    trial = study.ask()
    study.tell(trial, 2.0)
    assert len(load(path).trials) == 4 and check_journal(path) is None


def test_last_record_without_its_newline_is_completed(tmp_path):
    path = tmp_path / "optuna.journal"
    data = write_study(path)
    path.write_bytes(data[:-1])
    assert check_journal(path) is None
    assert path.read_bytes() == data


def test_damaged_record_in_the_middle_is_an_error_and_nothing_changes(tmp_path):
    path = tmp_path / "optuna.journal"
    lines = write_study(path).split(b"\n")
    lines[2] = lines[2][: len(lines[2]) // 2]
    damaged = b"\n".join(lines)
    path.write_bytes(damaged)
    with pytest.raises(JournalCorrupt, match=r"line 3 of \d+ is not a valid journal record"):
        check_journal(path)
    assert path.read_bytes() == damaged and not list(tmp_path.glob("*.partial-*"))



STUDY = """
name: damaged
task: {name: modular, p: 23}
model: {family: transformer, n_layer: 1, n_head: 4, d_model: 16, layer_norm: false}
train: {steps: 100, eval_every: 50}
grid: {n: [{d_model: 16}], d: [0.3], seeds: [0]}
search: {trials_per_cell: 1, space: {train.weight_decay: {type: float, low: 0.1, high: 3.0, log: true}}}
ray: {num_cpus: 1}
"""


def test_status_and_run_refuse_a_damaged_journal_with_exit_2(tmp_path):
    (tmp_path / "study.yaml").write_text(STUDY)
    journal = tmp_path / "runs" / "damaged" / "optuna.journal"
    journal.parent.mkdir(parents=True)
    lines = write_study(journal).split(b"\n")
    lines[1] = b"{not json"
    journal.write_bytes(b"\n".join(lines))
    for command in ("status", "run"):
        out = grokscale(command, "study.yaml", cwd=tmp_path)
        assert out.returncode == 2, (command, out.stderr[-2000:])
        assert "line 2 of" in out.stderr and "not a valid journal record" in out.stderr
        assert "Traceback" not in out.stderr
    assert not (tmp_path / "mlflow.db").exists()  # nothing was started


def ask_within(storage, seconds: float) -> float:
    """Ask and tell one trial in a thread; how long it took (fails past `seconds`)."""
    import threading
    import time

    done = threading.Event()

    def work():
        study = optuna.create_study(storage=storage, study_name="cell", load_if_exists=True)
        trial = study.ask()
        study.tell(trial, 1.0)
        done.set()

    t0 = time.monotonic()
    threading.Thread(target=work, daemon=True).start()
    assert done.wait(seconds), f"the journal stayed locked for {seconds} s"
    return time.monotonic() - t0


def test_a_killed_drivers_symlink_lock_does_not_block_the_next(tmp_path, monkeypatch):
    """The lock Optuna's default leaves when its writer is killed mid-write, for a journal named
    by a relative path (the default, runs/<study>/optuna.journal): a symlink to that relative path,
    which dangles. Optuna's grace period never breaks it (it stats the missing target), so the
    next driver waited forever at full CPU (found by `make soak`)."""
    from orchestrator.sweep.search import open_storage

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "s").mkdir(parents=True)
    write_study(tmp_path / "runs" / "s" / "optuna.journal")
    (tmp_path / "runs" / "s" / "optuna.journal.lock").symlink_to("runs/s/optuna.journal")
    assert ask_within(open_storage("runs/s/optuna.journal"), 20) < 20
    assert not (tmp_path / "runs" / "s" / "optuna.journal.lock").is_symlink()


def test_a_killed_drivers_lock_file_is_broken_after_the_grace_period(tmp_path):
    """grokscale's own lock (a plain file) left by a driver killed mid-write: broken once it has not
    changed for the grace period, not waited on forever."""
    from orchestrator.sweep.search import JOURNAL_LOCK_GRACE_S, open_storage

    path = tmp_path / "optuna.journal"
    write_study(path)
    (tmp_path / "optuna.journal.lock").touch()
    took = ask_within(open_storage(str(path)), JOURNAL_LOCK_GRACE_S + 30)
    assert took > JOURNAL_LOCK_GRACE_S - 1
