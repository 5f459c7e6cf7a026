"""One driver per study (orchestrator/store/hold.py), on a real journal storage shared by
processes: a second driver is refused with who holds the study and since when; a killed
driver's hold never blocks a resume; a claim from another host expires by its heartbeat."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from orchestrator.store.hold import HOLD_STUDY_PREFIX, STALE_S, StudyHeld, StudyHold

from support.cli import GROKSCALE

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
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(journal)], stdout=subprocess.PIPE, text=True)
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
    # Killed without releasing: its claim is stale at once on its own host.
    hold = StudyHold(storage(journal), "demo").acquire()
    try:
        with pytest.raises(StudyHeld):
            StudyHold(storage(journal), "demo").acquire()
    finally:
        hold.release()
    StudyHold(storage(journal), "demo").acquire().release()  # released: free again


def test_refused_claims_and_released_holds_leave_no_live_claim(tmp_path):
    journal = tmp_path / "optuna.journal"
    first = StudyHold(storage(journal), "demo").acquire()
    for _ in range(3):
        with pytest.raises(StudyHeld):
            StudyHold(storage(journal), "demo").acquire()
    assert [h.pid for h in first.holders()] == [first.holders()[0].pid]  # only the holder is live
    first.release()
    assert StudyHold(storage(journal), "demo").holders() == []
    # Holds live in their own Optuna study, beside the cells' studies, not in them.
    names = [s.study_name for s in optuna.get_all_study_summaries(storage(journal))]
    assert names == [HOLD_STUDY_PREFIX + "demo"]


def claim_from_other_host(journal, heartbeat: float) -> None:
    """A claim as a driver on another machine sharing this storage writes it."""
    st = storage(journal)
    hold = StudyHold(st, "demo")
    trial_id = st.create_new_trial(hold._study_id())
    for key, value in {"host": "another-host.example", "pid": 1, "started": 0.0, "since": heartbeat,
                       "heartbeat": heartbeat}.items():
        st.set_trial_user_attr(trial_id, key, value)


def test_claim_from_another_host_holds_while_it_beats_and_expires_after(tmp_path):
    journal = tmp_path / "optuna.journal"
    claim_from_other_host(journal, time.time())
    with pytest.raises(StudyHeld, match="another-host.example"):
        StudyHold(storage(journal), "demo").acquire()

    journal2 = tmp_path / "stale.journal"
    claim_from_other_host(journal2, time.time() - STALE_S - 5)
    hold = StudyHold(storage(journal2), "demo").acquire()
    assert [h.host for h in hold.holders()] == [hold.holders()[0].host] and hold.holders()[0].host != \
        "another-host.example"
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
    procs = [subprocess.Popen([sys.executable, "-c", CLAIMANT, str(journal), str(at)], stdout=subprocess.PIPE,
                              text=True) for _ in range(6)]
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
