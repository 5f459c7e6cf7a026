"""One driver per study: a hold recorded in the study's own Optuna storage.

Two drivers on one study race each other on Optuna and MLflow (both asked trials, one told a
trial the other had finished: `UpdateFinishedTrialError`, both died). So a driver takes a hold
before it touches anything, and a second one refuses, naming the host and process that hold
the study and since when.

How, on any storage (journal file, PostgreSQL, shared by several machines): the holds are trials
of a dedicated Optuna study, `grokscale.hold/<study>`. Creating a trial is the one operation every
storage serializes, so trial numbers order the claims: a driver creates its claim (whole, in one
operation, so no rival reads it half-written), then reads the live claims, and the lowest number
wins; a loser withdraws its claim. A claim stays live while its driver beats (a `heartbeat`
attribute every HEARTBEAT_S). It is stale, and never blocks a resume, when its process is gone
(same host: the pid is dead, or reused by another process) or, seen from another host, when its
heartbeat is older than STALE_S.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

HOLD_STUDY_PREFIX = "grokscale.hold/"
HEARTBEAT_S = 10.0
# A claim from another host is stale after this long without a heartbeat: six missed beats,
# so a driver busy in a long MLflow call is never taken for dead (clocks must agree to ~1 min).
STALE_S = 60.0


class StudyHeld(Exception):
    """Another live driver holds the study; the message says which and since when."""


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    started: float  # the process's start time (/proc), to tell a reused pid apart
    since: float  # when it took the hold (epoch seconds)
    heartbeat: float
    trial_id: int
    number: int

    def describe(self, now: float) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        return (f"host {self.host}, process {self.pid}, since {since} "
                f"(last heartbeat {max(0.0, now - self.heartbeat):.0f} s ago)")


def _process_start(pid: int) -> float:
    """The process's start time in clock ticks since boot (0.0 where /proc cannot tell)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return float(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return 0.0


def _alive_here(pid: int, started: float) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    return not started or _process_start(pid) == started


class StudyHold:
    """The hold of one driver on one study. `acquire` or raise StudyHeld; `release` at the end."""

    def __init__(self, storage: optuna.storages.BaseStorage, study_name: str) -> None:
        self.storage, self.study_name = storage, study_name
        self.trial_id: int | None = None
        self.lost = False  # set when another driver expired this hold (a suspended machine)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _study_id(self) -> int:
        name = HOLD_STUDY_PREFIX + self.study_name
        try:
            return self.storage.get_study_id_from_name(name)
        except KeyError:
            try:
                return self.storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], name)
            except optuna.exceptions.DuplicatedStudyError:  # another driver made it just now
                return self.storage.get_study_id_from_name(name)

    def holders(self) -> list[Holder]:
        """The claims still RUNNING, in claim order."""
        out = []
        for t in self.storage.get_all_trials(self._study_id(), deepcopy=False, states=(TrialState.RUNNING,)):
            a = t.user_attrs
            if not {"host", "pid", "since"} <= a.keys():  # not a claim this module wrote
                continue
            out.append(Holder(a["host"], int(a["pid"]), float(a.get("started", 0.0)), float(a["since"]),
                              float(a.get("heartbeat", a["since"])), self._trial_id(t.number), t.number))
        return sorted(out, key=lambda h: h.number)

    def _trial_id(self, number: int) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(self._study_id(), number)

    def is_stale(self, h: Holder, now: float) -> bool:
        if h.host == socket.gethostname():
            return not _alive_here(h.pid, h.started)
        return now - h.heartbeat > STALE_S

    def acquire(self) -> StudyHold:
        study_id = self._study_id()
        now = time.time()
        pid = os.getpid()
        # The claim is created whole, in one storage operation: a claim written attribute by
        # attribute could be read half-written by a rival, who would skip it and win beside it.
        claim = optuna.trial.create_trial(state=TrialState.RUNNING, user_attrs={
            "pid": pid, "started": _process_start(pid), "since": now, "heartbeat": now,
            "host": socket.gethostname()})
        trial_id = self.storage.create_new_trial(study_id, template_trial=claim)
        for h in self.holders():
            if h.trial_id == trial_id:
                break  # no live claim before ours: the study is ours
            if self.is_stale(h, time.time()):
                self._expire(h.trial_id)
                continue
            self._withdraw(trial_id)
            raise StudyHeld(f"study {self.study_name!r} is already being run by another grokscale driver: "
                            f"{h.describe(time.time())}. Wait for it to finish (`grokscale status` shows its "
                            f"progress), or stop it and run again to resume; a driver that was killed releases "
                            f"its hold at once on its own host, and after {STALE_S:.0f} s without a heartbeat "
                            "from anywhere else.")
        self.trial_id = trial_id
        self._thread = threading.Thread(target=self._beat, name="grokscale-hold", daemon=True)
        self._thread.start()
        return self

    def _expire(self, trial_id: int) -> None:
        try:
            self.storage.set_trial_user_attr(trial_id, "ended", "expired: its driver was gone")
            self.storage.set_trial_state_values(trial_id, TrialState.FAIL)
        except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
            pass  # another driver expired it first, or it was released just now

    def _withdraw(self, trial_id: int) -> None:
        self.storage.set_trial_user_attr(trial_id, "ended", "withdrawn: the study was held")
        self.storage.set_trial_state_values(trial_id, TrialState.FAIL)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self.storage.set_trial_user_attr(self.trial_id, "heartbeat", time.time())
            except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
                self.lost = True  # expired by another driver while this one was not beating
                return
            except Exception:  # noqa: BLE001 - a storage hiccup: the next beat tries again
                continue

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=HEARTBEAT_S)
        if self.trial_id is not None and not self.lost:
            try:
                self.storage.set_trial_user_attr(self.trial_id, "ended", "released")
                self.storage.set_trial_state_values(self.trial_id, TrialState.COMPLETE, [0.0])
            except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
                pass
        self.trial_id = None

    def __enter__(self) -> StudyHold:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
