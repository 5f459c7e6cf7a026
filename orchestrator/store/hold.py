"""One driver per study: a hold recorded in the study's own Optuna storage.

Two drivers on one study race each other on Optuna and MLflow (both asked trials, one told a
trial the other had finished: `UpdateFinishedTrialError`, both died). So a driver takes a hold
before it touches anything, and a second one refuses, naming the host and process that hold
the study and since when.

How, on any storage (journal file, PostgreSQL, shared by several machines): the holds are trials
of a dedicated Optuna study, `grokscale.hold/<study>`. Creating a trial is the one operation every
storage serializes, so trial numbers order the claims: a driver creates its claim (whole, in one
operation, so no rival reads it half-written), then looks at the live claims before its own, and
the lowest live one wins; a loser withdraws its claim.

Liveness is a heartbeat that moves: the holder advances its claim's `beat` counter every
`heartbeat_s` (a twelfth of the timeout). A claim is stale when another driver has watched its
counter stand still for the whole timeout on its own monotonic clock; no wall clock from another
machine is compared. A claim whose counter moves while it is watched is live, and the watcher
refuses. The one shortcut: a claim made on this machine's running kernel (same host, boot id
and pid namespace beside its pid) whose process is gone, or whose pid now names a process
started at another time, is stale at once. A pid from another boot or container (the same
hostname, another pid namespace) proves nothing and is left to its heartbeat.

A holder that was paused past the timeout (a machine asleep, a stopped process) may find its
claim expired by a driver that took the study over. It checks every tick (`check`, from the
driver's loop): once its claim is no longer RUNNING, or a beat finds it expired, `check` raises
HoldLost and the driver stops without another write. After a pause, `check` asks the storage
itself rather than wait for the heartbeat thread.

The timeout is STALE_S; `GROKSCALE_HOLD_TIMEOUT_S` sets another (for machines that pause longer).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

HOLD_STUDY_PREFIX = "grokscale.hold/"
# A claim whose heartbeat stood still this long, as a rival watched it, is stale: twelve missed
# beats, so a driver busy in a long MLflow call is never taken for dead.
STALE_S = 60.0
TIMEOUT_ENV = "GROKSCALE_HOLD_TIMEOUT_S"
BEATS_PER_TIMEOUT = 12


class StudyHeld(Exception):
    """Another live driver holds the study; the message says which and since when."""


class HoldLost(Exception):
    """Another driver took this driver's hold over; the message says what to do."""


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


BOOT_ID = _read("/proc/sys/kernel/random/boot_id")  # changes with every boot; "" where unknown
PID_NAMESPACE = _pid_namespace()  # e.g. "pid:[4026531836]": another in another container


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    started: float  # the process's start time (/proc), to tell a reused pid apart
    boot: str  # the boot id of its kernel
    pid_namespace: str
    since: float  # when it took the hold (epoch seconds, its own clock: shown, never compared)
    beat: int  # its heartbeat counter
    timeout_s: float  # its own timeout: it beats twelve times in it
    trial_id: int
    number: int

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        return f"host {self.host}, process {self.pid}, since {since} (by its clock)"

    def on_this_kernel(self) -> bool:
        """Whether its pid can be looked up here: same host, boot and pid namespace."""
        return bool(BOOT_ID and PID_NAMESPACE) and (self.host, self.boot, self.pid_namespace) == (
            socket.gethostname(),
            BOOT_ID,
            PID_NAMESPACE,
        )


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


def hold_timeout() -> float:
    return float(os.environ.get(TIMEOUT_ENV, STALE_S))


class StudyHold:
    """The hold of one driver on one study. `acquire` or raise StudyHeld; `check` each tick;
    `release` at the end."""

    def __init__(
        self, storage: optuna.storages.BaseStorage, study_name: str, stale_s: float | None = None
    ) -> None:
        self.storage, self.study_name = storage, study_name
        self.stale_s = hold_timeout() if stale_s is None else stale_s
        self.heartbeat_s = self.stale_s / BEATS_PER_TIMEOUT
        self.trial_id: int | None = None
        self.beat = 0
        self.lost = False  # set once another driver expired this hold
        self._confirmed = 0.0  # monotonic time of the last beat the storage took
        self._beating = threading.Lock()
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
        study_id = self._study_id()
        for t in self.storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            a = t.user_attrs
            if not {"host", "pid", "since"} <= a.keys():  # not a claim this module wrote
                continue
            trial_id = self.storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
            out.append(
                Holder(
                    a["host"],
                    int(a["pid"]),
                    float(a.get("started", 0.0)),
                    str(a.get("boot", "")),
                    str(a.get("pid_namespace", "")),
                    float(a["since"]),
                    int(a.get("beat", 0)),
                    float(a.get("timeout_s", STALE_S)),
                    trial_id,
                    t.number,
                )
            )
        return sorted(out, key=lambda h: h.number)

    def acquire(self) -> StudyHold:
        study_id = self._study_id()
        pid = os.getpid()
        # The claim is created whole, in one storage operation: a claim written attribute by
        # attribute could be read half-written by a rival, who would skip it and win beside it.
        claim = optuna.trial.create_trial(
            state=TrialState.RUNNING,
            user_attrs={
                "pid": pid,
                "started": _process_start(pid),
                "boot": BOOT_ID,
                "pid_namespace": PID_NAMESPACE,
                "since": time.time(),
                "beat": 0,
                "timeout_s": self.stale_s,
                "host": socket.gethostname(),
            },
        )
        self.trial_id = self.storage.create_new_trial(study_id, template_trial=claim)
        self._confirmed = time.monotonic()
        # It beats while it waits, so a third driver never takes a waiting claim for dead.
        self._thread = threading.Thread(target=self._beat, name="grokscale-hold", daemon=True)
        self._thread.start()
        try:
            self._wait_for_turn()
        except BaseException:
            self._stop_beating()
            self._end(self.trial_id, "withdrawn: the study was held", TrialState.FAIL)
            self.trial_id = None
            raise
        return self

    def _wait_for_turn(self) -> None:
        """Return once no live claim is before ours; StudyHeld when one is (its beat moved)."""
        number = self.storage.get_trial_number_from_id(self.trial_id)
        first_seen: dict[int, tuple[int, float]] = {}  # claim -> (its beat, when we first saw that beat)
        while True:
            ahead = [h for h in self.holders() if h.number < number]
            if not ahead:
                return
            now = time.monotonic()
            for h in ahead:
                if h.on_this_kernel() and not _alive_here(h.pid, h.started):
                    self._end(h.trial_id, "expired: its process was gone", TrialState.FAIL)
                    continue
                beat, since = first_seen.setdefault(h.trial_id, (h.beat, now))
                if h.beat != beat:
                    raise StudyHeld(
                        f"study {self.study_name!r} is already being run by another grokscale driver: "
                        f"{h.describe()}, its heartbeat moving. Wait for it to finish (`grokscale status` "
                        f"shows its progress), or stop it and run again to resume; a driver that was killed "
                        f"releases its hold at once on its own machine, and once its heartbeat has stood "
                        f"still for {self.stale_s:.0f} s anywhere else."
                    )
                if now - since >= max(self.stale_s, h.timeout_s):  # never before its own beats could miss
                    self._end(h.trial_id, f"expired: no heartbeat for {now - since:.0f} s", TrialState.FAIL)
            time.sleep(min(1.0, self.heartbeat_s / 2))

    def _end(self, trial_id: int, why: str, state: TrialState) -> None:
        try:
            self.storage.set_trial_user_attr(trial_id, "ended", why)
            values = [0.0] if state == TrialState.COMPLETE else None
            self.storage.set_trial_state_values(trial_id, state, values)
        except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
            pass  # another driver ended it first

    def _beat_once(self) -> None:
        """Advance the beat, if the claim is still ours (else `lost`)."""
        with self._beating:
            if self.lost:
                return
            try:
                if self.storage.get_trial(self.trial_id).state != TrialState.RUNNING:
                    self.lost = True
                    return
                self.storage.set_trial_user_attr(self.trial_id, "beat", self.beat + 1)
            except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
                self.lost = True  # expired between the read and the write
                return
            self.beat += 1
            self._confirmed = time.monotonic()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s) and not self.lost:
            try:
                self._beat_once()
            except Exception:  # noqa: BLE001 - a storage hiccup: the next beat tries again
                continue

    def check(self) -> None:
        """HoldLost when another driver took the study over. After a pause longer than two
        beats (this process stopped, its machine asleep), the storage is asked now."""
        if not self.lost and time.monotonic() - self._confirmed > 2 * self.heartbeat_s:
            with contextlib.suppress(Exception):  # a storage hiccup: asked again next tick
                self._beat_once()
        if self.lost:
            raise HoldLost(
                f"this driver lost its hold on study {self.study_name!r}: another driver saw its heartbeat "
                f"stand still for {self.stale_s:.0f} s (this process was paused, or its machine slept) and "
                "took the study over. It stopped without writing anything more to Optuna or MLflow. "
                "`grokscale status` shows the study; once no driver runs it, the same command resumes it."
            )

    def _stop_beating(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.heartbeat_s + 5)
        self._thread = None

    def release(self) -> None:
        self._stop_beating()
        if self.trial_id is not None and not self.lost:
            self._end(self.trial_id, "released", TrialState.COMPLETE)
        self.trial_id = None

    def __enter__(self) -> StudyHold:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
