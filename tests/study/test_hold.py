"""One driver per study (orchestrator/store/hold.py), on a real journal storage shared by
processes: a second driver is refused with who holds the study and since when; a killed
driver's hold never blocks a resume; a claim is judged by whether its heartbeat moves while it is
watched, never by another machine's clock or a pid from another boot or container; a driver
paused past the timeout finds the study taken over and stops, writing nothing more."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from orchestrator.store.hold import (
    BOOT_ID,
    HOLD_STUDY_PREFIX,
    PID_NAMESPACE,
    TIMEOUT_ENV,
    StudyHeld,
    StudyHold,
)

from support.cli import GROKSCALE
from support.processes import kill_tree

FAST = {TIMEOUT_ENV: "1.2"}  # a holder in a subprocess beats every 0.1 s

HOLDER = """
import sys, time
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from orchestrator.store.hold import StudyHold
hold = StudyHold(JournalStorage(JournalFileBackend(sys.argv[1])), "demo").acquire()
print("held", flush=True)
time.sleep(600)
"""


def storage(path) -> JournalStorage:
    return JournalStorage(JournalFileBackend(str(path)))


def start_holder(journal) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(journal)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **FAST},
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_driver_is_refused_and_a_killed_one_never_blocks(tmp_path):
    journal = tmp_path / "optuna.journal"
    proc = start_holder(journal)
    try:
        with pytest.raises(StudyHeld) as err:
            StudyHold(storage(journal), "demo").acquire()
        text = str(err.value)
        assert f"process {proc.pid}" in text and "host " in text and "since " in text
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # Killed without releasing: its claim is stale at once on its own machine (same boot, same
    # pid namespace, its pid gone), long before the 60 s timeout.
    t0 = time.monotonic()
    hold = StudyHold(storage(journal), "demo", stale_s=1.2).acquire()
    assert time.monotonic() - t0 < 5
    try:
        with pytest.raises(StudyHeld):
            StudyHold(storage(journal), "demo").acquire()
    finally:
        hold.release()
    StudyHold(storage(journal), "demo").acquire().release()  # released: free again


def test_refused_claims_and_released_holds_leave_no_live_claim(tmp_path):
    journal = tmp_path / "optuna.journal"
    first = StudyHold(storage(journal), "demo", stale_s=1.2).acquire()
    for _ in range(3):
        with pytest.raises(StudyHeld):
            StudyHold(storage(journal), "demo").acquire()
    assert [h.pid for h in first.holders()] == [os.getpid()]  # only the holder is live
    first.release()
    assert StudyHold(storage(journal), "demo").holders() == []
    # Holds live in their own Optuna study, beside the cells' studies, not in them.
    names = [s.study_name for s in optuna.get_all_study_summaries(storage(journal))]
    assert names == [HOLD_STUDY_PREFIX + "demo"]


def claim(journal, host: str, pid: int, boot: str, beating: bool) -> threading.Event:
    """A claim as another driver writes it: its wall clock a day behind ours; its beat advanced
    every 0.1 s while `beating`. Set the returned event to stop the beat."""
    st = storage(journal)
    hold = StudyHold(st, "demo")
    trial_id = st.create_new_trial(
        hold._study_id(),
        template_trial=optuna.trial.create_trial(
            state=TrialState.RUNNING,
            user_attrs={
                "host": host,
                "pid": pid,
                "started": 0.0,
                "boot": boot,
                "pid_namespace": PID_NAMESPACE,
                "since": time.time() - 86400,
                "beat": 0,
                "timeout_s": 1.2,
            },
        ),
    )
    stop = threading.Event()

    def beat():
        n = 0
        while beating and not stop.wait(0.1):
            n += 1
            st.set_trial_user_attr(trial_id, "beat", n)

    threading.Thread(target=beat, daemon=True).start()
    return stop


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("who", ["another host", "this host, another boot or container"])
def test_a_claim_holds_while_its_heartbeat_moves_whatever_its_clock_or_pid(tmp_path, who):
    """A day-old wall clock, and a dead pid under this hostname but another boot id (a container
    sharing the hostname): neither makes a beating claim stale."""
    host, boot = (
        ("another-host.example", BOOT_ID) if who == "another host" else (socket.gethostname(), "other-boot")
    )
    journal = tmp_path / "optuna.journal"
    stop = claim(journal, host, dead_pid(), boot, beating=True)
    try:
        with pytest.raises(StudyHeld, match="heartbeat moving"):
            StudyHold(storage(journal), "demo", stale_s=1.2).acquire()
    finally:
        stop.set()


def test_a_silent_claim_expires_only_after_the_timeout_on_the_watchers_clock(tmp_path):
    journal = tmp_path / "optuna.journal"
    claim(journal, "another-host.example", 1, BOOT_ID, beating=False)
    t0 = time.monotonic()
    hold = StudyHold(storage(journal), "demo", stale_s=2.0).acquire()
    assert 2.0 <= time.monotonic() - t0 < 10
    assert [h.pid for h in hold.holders()] == [os.getpid()]
    expired = storage(journal).get_all_trials(hold._study_id(), states=(TrialState.FAIL,))
    assert [t.user_attrs["host"] for t in expired] == ["another-host.example"]
    assert expired[0].user_attrs["ended"].startswith("expired: no heartbeat")
    hold.release()


CLAIMANT = """
import sys, time
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from orchestrator.store.hold import StudyHeld, StudyHold
hold = StudyHold(JournalStorage(JournalFileBackend(sys.argv[1])), "demo")
hold._study_id()
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # all claim at the same instant
try:
    hold.acquire()
except StudyHeld:
    print("refused", flush=True)
    sys.exit(0)
print("held", flush=True)
time.sleep(5)
"""


@pytest.mark.parametrize("round_", range(2))
def test_concurrent_claims_have_exactly_one_winner(tmp_path, round_):
    """Six drivers claim within the same millisecond; a claim read half-written let 3 win (CI)."""
    journal = tmp_path / "optuna.journal"
    StudyHold(storage(journal), "demo")._study_id()
    at = time.time() + 6.0  # after every process has imported optuna
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMANT, str(journal), str(at)],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, **FAST},
        )
        for _ in range(6)
    ]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert sorted(outs) == ["held"] + ["refused"] * 5, outs


STUDY = """
name: twice
task: {name: modular, p: 23}
model: {family: transformer, n_layer: 1, n_head: 4, d_model: 16, layer_norm: false}
train: {steps: 1500, eval_every: 100, lr: 3.0e-3}
grid: {n: [{d_model: 16}], d: [0.3, 0.5], seeds: [0]}
search:
  sampler: tpe
  trials_per_cell: 2
  space: {train.weight_decay: {type: float, low: 0.1, high: 3.0, log: true}}
objectives: [{metric: max_val_acc, direction: maximize}]
ray: {num_cpus: 2}
"""


@pytest.mark.slow
def test_second_grokscale_run_of_a_live_study_exits_2_and_the_first_finishes(tmp_path):
    """As a new user does it: the same study submitted twice in the same folder."""
    (tmp_path / "study.yaml").write_text(STUDY)
    cmd = [*GROKSCALE, "run", "study.yaml", "--quiet", "--no-report"]
    first = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    journal = tmp_path / "runs" / "twice" / "optuna.journal"
    deadline = time.monotonic() + 300
    while not (journal.exists() and HOLD_STUDY_PREFIX.encode() in journal.read_bytes()):
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline, "the first driver never took its hold"
        time.sleep(0.5)
    second = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert second.returncode == 2, second.stderr[-2000:]
    assert f"process {first.pid}" in second.stderr and "already being run" in second.stderr
    assert "Traceback" not in second.stderr
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, (out + err)[-3000:]
    assert "4 completed" in out
    # Finished and released: running it again resumes (nothing left to train) and exits 0.
    third = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0 and "0 completed" in third.stdout, third.stderr[-2000:]


# Runs of a few seconds each, one at a time (not packed into one task): the driver is mid-study
# when it is paused.
PAUSED = (
    STUDY.replace("name: twice", "name: paused")
    .replace("trials_per_cell: 2", "trials_per_cell: 3")
    .replace("d: [0.3, 0.5]", "d: [0.5]")
    .replace("num_cpus: 2", "num_cpus: 1")
    + "pack: {mode: 'off'}\n"
)


def trials_of(tmp_path) -> list:
    """The study's cell's Optuna trials (number, state)."""
    journal = tmp_path / "runs" / "paused" / "optuna.journal"
    store = storage(journal) if journal.exists() else None
    return [
        (t.number, t.state)
        for s in (optuna.get_all_study_summaries(store) if store else [])
        if not s.study_name.startswith(HOLD_STUDY_PREFIX)
        for t in optuna.load_study(study_name=s.study_name, storage=store).get_trials()
    ]


def recorded(tmp_path, uri: str) -> tuple[list, list]:
    """What the study holds: its cell's Optuna trials (number, state) and MLflow runs (id, status).
    Read once the driver has made its MLflow store (a trial finished)."""
    from mlflow.tracking import MlflowClient

    trials = trials_of(tmp_path)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("paused")
    runs = [] if experiment is None else client.search_runs([experiment.experiment_id])
    return trials, sorted((r.info.run_id, r.info.status, r.data.tags.get("grokscale.status")) for r in runs)


def pause_outside_a_journal_write(pid: int, journal) -> None:
    """SIGSTOP, at a moment the process holds no lock on the journal (Optuna's lock file is
    absent): a process stopped mid-append is the journal's case (store/journal.py), not the hold's."""
    lock = journal.with_name(journal.name + ".lock")
    while True:
        os.kill(pid, signal.SIGSTOP)
        time.sleep(0.05)
        if not lock.exists():
            return
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.05)


@pytest.mark.slow
def test_a_driver_paused_past_the_timeout_stops_once_the_study_was_taken_over(tmp_path, monkeypatch):
    """A machine asleep, as SIGSTOP: another holder takes the study over after the timeout; the
    woken driver exits 1 saying so, and writes no trial and no run more."""
    from orchestrator.sweep.search import open_storage

    from support.driver import start_driver

    monkeypatch.setenv(TIMEOUT_ENV, "4")
    (tmp_path / "study.yaml").write_text(PAUSED)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    driver = start_driver(tmp_path / "study.yaml", uri, "--no-report")
    journal = tmp_path / "runs" / "paused" / "optuna.journal"
    hold = None
    try:
        deadline = time.monotonic() + 300
        while sum(state == TrialState.COMPLETE for _, state in trials_of(tmp_path)) < 1:
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no trial finished"
            time.sleep(0.5)
        pause_outside_a_journal_write(driver.pid, journal)  # its Ray workers train on
        t0 = time.monotonic()
        hold = StudyHold(open_storage(str(journal)), "paused", stale_s=4).acquire()
        assert time.monotonic() - t0 >= 4  # its beat was watched standing still for the whole timeout
        before = recorded(tmp_path, uri)
        time.sleep(3)  # the run it had in flight finishes meanwhile: a result it must not record
        os.kill(driver.pid, signal.SIGCONT)
        assert driver.wait(timeout=120) == 1
        log = (tmp_path / "driver.log").read_text()
        assert "lost its hold on study 'paused'" in log and "Traceback" not in log, log[-3000:]
        assert recorded(tmp_path, uri) == before
        assert [h.pid for h in hold.holders()] == [os.getpid()]
        hold.check()  # still ours
    finally:
        if driver.poll() is None:
            kill_tree(driver.pid)
            driver.wait()
        if hold is not None:
            hold.release()
