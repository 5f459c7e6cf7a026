"""A damaged Optuna journal (orchestrator/store/journal.py), on real journal files written by
Optuna: a cut-short last record is set aside by the next driver's append, under Optuna's lock, and
the study goes on with every whole record; a damaged record elsewhere is a clear error that
changes nothing; `grokscale status` never writes, so a driver appending meanwhile loses nothing."""

from __future__ import annotations

import subprocess
import sys

import optuna
import pytest
import yaml
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from orchestrator.cli import main
from orchestrator.store import names
from orchestrator.store.journal import JournalCorrupt, journal_tail, repair_tail
from orchestrator.sweep.search import open_storage

from support.cli import grokscale, listing
from support.studies import tiny_study


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
    assert journal_tail(path) == b"" and repair_tail(path) is None and path.read_bytes() == data
    assert journal_tail(tmp_path / "absent.journal") == b""


def test_cut_short_last_record_is_set_aside_by_the_next_append(tmp_path, capsys):
    path = tmp_path / "optuna.journal"
    data = write_study(path)
    path.write_bytes(data[:-30])  # the last tell, cut mid-write
    assert data[:-30].endswith(journal_tail(path)) and path.read_bytes() == data[:-30]  # read, not changed
    study = optuna.load_study(storage=open_storage(str(path)), study_name="cell")
    assert path.read_bytes() == data[:-30]  # opening writes nothing
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.RUNNING]
    # Without the repair this append would be glued to the partial line and break every later read.
    trial = study.ask()
    study.tell(trial, 2.0)
    assert "cut short" in capsys.readouterr().err
    aside = list(tmp_path.glob("optuna.journal.partial-*"))
    assert len(aside) == 1 and data[:-30].endswith(aside[0].read_bytes())  # kept, not lost
    assert len(load(path).trials) == 4 and journal_tail(path) == b""


def test_last_record_without_its_newline_is_completed(tmp_path):
    path = tmp_path / "optuna.journal"
    data = write_study(path)
    path.write_bytes(data[:-1])
    assert repair_tail(path) is None
    assert path.read_bytes() == data


def test_damaged_record_in_the_middle_is_an_error_and_nothing_changes(tmp_path):
    path = tmp_path / "optuna.journal"
    lines = write_study(path).split(b"\n")
    lines[2] = lines[2][: len(lines[2]) // 2]
    damaged = b"\n".join(lines)
    path.write_bytes(damaged)
    with pytest.raises(JournalCorrupt, match=r"line 3 of \d+ is not a valid journal record"):
        journal_tail(path)
    with pytest.raises(JournalCorrupt):
        open_storage(str(path))
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


# -------------------------------------------------------------------------- status only reads
def status_study(tmp_path):
    """A one-cell study whose journal is tmp_path/runs/optuna.journal; (its path, the cell's
    Optuna study name)."""
    data = tiny_study("reading", d=(0.3,), trials=1, workdir=str(tmp_path / "runs"))
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data))
    from orchestrator.study import load_study
    from orchestrator.study.grid import build_cells

    study = load_study(str(path))
    return path, study, build_cells(study)


def test_status_on_a_torn_journal_reads_what_it_can_and_changes_nothing(tmp_path, capsys):
    path, study, cells = status_study(tmp_path)
    journal = tmp_path / "runs" / "optuna.journal"
    journal.parent.mkdir()
    store = JournalStorage(JournalFileBackend(str(journal)))
    cell = optuna.create_study(storage=store, study_name=names.optuna_study_name(study.name, cells[0].key))
    for value in (0.5, 0.7):
        cell.tell(cell.ask(), value)
    torn = journal.read_bytes()[:-30]  # the last tell, cut mid-write
    journal.write_bytes(torn)
    before = listing(tmp_path)
    assert main(["status", str(path), "--json"]) == 0
    out = capsys.readouterr()
    assert "its last record is incomplete" in out.err and "nothing was changed" in out.err
    row = yaml.safe_load(out.out)[0]
    assert (row["complete"], row["running"] + row["queued"]) == (1, 1)  # the torn tell is not read
    assert journal.read_bytes() == torn and listing(tmp_path) == before  # byte-identical, no file added


APPENDER = """
import json, sys, time
import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

path, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
lock = JournalFileOpenLock(path)  # the lock a grokscale driver takes

class SlowDisk(JournalFileBackend):
    # Optuna's append on a slow disk: under the lock, each batch of records lands in two writes.
    def append_logs(self, logs):
        data = "".join(json.dumps(log, separators=(",", ":")) + "\\n" for log in logs).encode()
        lock.acquire()
        try:
            with open(path, "ab") as f:
                f.write(data[: len(data) // 2])
                f.flush()
                time.sleep(0.01)
                f.write(data[len(data) // 2:])
                f.flush()
        finally:
            lock.release()

study = optuna.create_study(storage=JournalStorage(SlowDisk(path, lock_obj=lock)), study_name=name,
                            load_if_exists=True)
print("started", flush=True)
for i in range(n):
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    study.tell(trial, float(i))
"""


def test_status_while_a_driver_appends_loses_no_trial(tmp_path, capsys):
    """`status` over and over while another process appends under Optuna's lock, each record
    in two writes: status sees incomplete last records, and must leave them be."""
    from orchestrator.store.status import study_status

    path, study, cells = status_study(tmp_path)
    journal = tmp_path / "runs" / "optuna.journal"
    journal.parent.mkdir()
    name, n = names.optuna_study_name(study.name, cells[0].key), 80
    writer = subprocess.Popen(
        [sys.executable, "-c", APPENDER, str(journal), name, str(n)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout.readline().strip() == "started"
        reads = 0
        while writer.poll() is None:
            rows = study_status(study, cells)
            assert rows[0]["complete"] <= n
            reads += 1
        assert writer.wait() == 0
    finally:
        writer.kill()
    torn_seen = capsys.readouterr().err.count("its last record is incomplete")
    cell = optuna.load_study(study_name=name, storage=JournalStorage(JournalFileBackend(str(journal))))
    trials = cell.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * n
    assert [t.value for t in trials] == list(range(n))
    assert not list(journal.parent.glob("*.partial-*")) and journal_tail(journal) == b""
    assert torn_seen > 0, f"status never read during a write in {reads} reads: the test proves nothing"
    print(f"\n{reads} status reads, {torn_seen} during a write")
