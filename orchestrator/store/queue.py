"""MLflow writes kept in order while the tracking store is away, and sent when it is back.

Guarantees, each checkable below:
- Order: a write that fails stays at the head of its queue and every write after it waits behind
  it, so the store sees the writes in the order they were made (`WriteQueue.flush`).
- Only a lost connection is retried (`transient`): connection refused or reset, a timeout, an
  HTTP 5xx or 429 answer, a database that went away (SQLAlchemy's OperationalError and
  DisconnectionError, psycopg2's OperationalError, a locked SQLite file). Every such failure is
  logged on one line (the write, the attempt, the next try), RETRY_S apart, for at most
  `retry_cap_s` (RETRY_CAP_S, or $GROKSCALE_WRITE_RETRY_S): past it `StoreUnreachable` is raised
  in the driver's thread, so a study whose store is gone stops and says why instead of waiting
  for ever; it resumes when run again.
- Any other error (the store refused the write, HTTP 4xx; or a TypeError from a changed library
  API) would fail on every retry: the write is dropped with its traceback logged, and
  `on_failure` is told, so the run it belonged to fails as data (the tracker marks it failed,
  with that traceback as its reason). It never blocks the writes behind it.

Writes queued as data (`Op`) go out together: the ops queued one after another, up to GROUP_MAX,
are one call of the queue's `send_ops` (one database transaction for many runs' rows). When
that call fails for good, one of them did: they go one at a time, and only that one is dropped.
"""

from __future__ import annotations

import functools
import logging
import os
import sqlite3
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mlflow.exceptions import MlflowException, RestException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, ErrorCode

log = logging.getLogger(__name__)
RETRY_S = 2.0  # after a failed write, the next try waits this long: the driver's loop runs on
ANSWER_TIMEOUT_S = 90.0  # how long a call whose answer the driver needs (a new run's id) is retried
# How long a write is retried while the store is away before the study stops (StoreUnreachable):
# long enough for a tracking server or database to restart, short enough that nobody waits on a
# study that silently stopped recording.
RETRY_CAP_S = 600.0
RETRY_CAP_ENV = "GROKSCALE_WRITE_RETRY_S"
GROUP_MAX = 200  # ops sent as one call, at most (each holds up to 1,000 metric points)


class StoreUnreachable(RuntimeError):
    """The store took no write for longer than the retry cap."""


def refused(err: BaseException) -> bool:
    """The server answered and refused (HTTP 4xx but 429): sending the same write again would fail
    again."""
    if not isinstance(err, MlflowException):
        return False
    code = err.get_http_status_code()
    return 400 <= code < 500 and code != 429


@functools.cache
def _transport_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean the connection to the store was lost, not that the write is bad;
    the libraries that are not installed add none."""
    found: list[type[BaseException]] = [ConnectionError, TimeoutError, sqlite3.OperationalError]
    try:
        import requests.exceptions as rq

        found += [rq.ConnectionError, rq.Timeout, rq.RetryError, rq.ChunkedEncodingError]
    except ImportError:
        pass
    try:
        import urllib3.exceptions as u3

        found += [u3.MaxRetryError, u3.ProtocolError, u3.NewConnectionError, u3.TimeoutError]
    except ImportError:
        pass
    try:
        import sqlalchemy.exc as sa

        found += [sa.OperationalError, sa.DisconnectionError]
    except ImportError:
        pass
    try:
        import psycopg2

        found += [psycopg2.OperationalError, psycopg2.InterfaceError]
    except ImportError:
        pass
    return tuple(found)


def _chain(err: BaseException) -> list[BaseException]:
    """The error and those it was raised from or while handling (MLflow's client re-raises a
    connection error as a bare MlflowException, inside its `except`)."""
    out: list[BaseException] = []
    while err is not None and err not in out and len(out) < 20:
        out.append(err)
        err = err.__cause__ or err.__context__
    return out


def _server_busy(err: MlflowException) -> bool:
    """An HTTP 5xx or 429 answer from the server (not an MlflowException MLflow's client raised
    around an error of its own, which also reads as 500)."""
    code = err.get_http_status_code()
    if code != 429 and code < 500:
        return False
    return (
        isinstance(err, RestException)
        or err.error_code != ErrorCode.Name(INTERNAL_ERROR)
        or "failed with error code" in err.message
    )


def transient(err: BaseException) -> bool:
    """A lost connection, a timeout, HTTP 5xx or 429, a database that went away: the same write may
    pass later. Anything else is a bug, a changed API, or a write the store refuses."""
    transport = _transport_errors()
    return any(
        isinstance(e, transport) or (isinstance(e, MlflowException) and _server_busy(e)) for e in _chain(err)
    )


def one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:300]}"


@dataclass(frozen=True)
class Op:
    """A write as data, for the queue's `send_ops`."""

    data: Any

    @property
    def run_id(self) -> str | None:
        return getattr(self.data, "run_id", None)

    @property
    def what(self) -> str:
        return f"{type(self.data).__name__} of run {self.run_id}"


@dataclass(frozen=True)
class Call:
    """A write as a call, named for the log, with the run it belongs to (None: the study's)."""

    fn: Callable[[], None]
    what: str
    run_id: str | None = None

    def __call__(self) -> None:
        self.fn()


def describe(write: Any) -> str:
    """A write in a few words, for the log: what it is, and of which run."""
    if isinstance(write, Call):
        return f"{write.what} of run {write.run_id}" if write.run_id else write.what
    if isinstance(write, Op):
        return write.what
    return getattr(write, "__qualname__", None) or repr(write)


class WriteQueue:
    def __init__(
        self,
        send_ops: Callable[[Sequence[Any]], None] | None = None,
        on_failure: Callable[[Any, BaseException], None] | None = None,
        retry_cap_s: float | None = None,
    ) -> None:
        """`send_ops`: sends the data of several `Op`s at once (needed only if Ops are queued).
        `on_failure(write, error)`: told of each write dropped for good (see the module)."""
        self.pending: deque[Callable[[], None] | Op] = deque()  # writes waiting for the server
        self.retry_at = 0.0  # monotonic time before which waiting writes are not tried again
        self.send_ops = send_ops
        self.on_failure = on_failure
        if retry_cap_s is None:
            retry_cap_s = float(os.environ.get(RETRY_CAP_ENV, RETRY_CAP_S))
        self.retry_cap_s = retry_cap_s
        self.singly = 0  # writes at the head to send one at a time (a group one of which failed)
        self.attempts = 0  # failed tries of the write at the head, in a row
        self.failing_since: float | None = None  # when the first of them failed
        self.moved_at = time.monotonic()  # when a write last went out, or the queue was last empty
        self.dropped = 0  # writes dropped for good

    def _send_head(self) -> int:
        """The write at the head, or the Ops queued from it on, sent; how many were."""
        head = self.pending[0]
        if not isinstance(head, Op):
            head()
            return 1
        n = 1
        if self.singly == 0:  # indexing, not iterating: the driver's thread may append meanwhile
            while n < min(len(self.pending), GROUP_MAX) and isinstance(self.pending[n], Op):
                n += 1
        try:
            self.send_ops([self.pending[i].data for i in range(n)])
        except Exception as err:
            if n > 1 and not transient(err):
                self.singly = n  # one of them failed for good: which one, sent alone, will say
                return 0
            raise
        return n

    def put(self, fn: Callable[[], None] | Op) -> None:
        self.pending.append(fn)
        self.flush()

    def flush(self, force: bool = False) -> bool:
        """Send waiting writes in order; keep them while the store is away. True when all sent.
        After a failure nothing is tried for RETRY_S (unless `force`): new writes queue behind.
        Raises StoreUnreachable once the write at the head has failed for retry_cap_s."""
        if not self.pending:
            self.moved_at = time.monotonic()
            return True
        if not force and time.monotonic() < self.retry_at:
            return False
        while self.pending:
            try:
                sent = self._send_head()
            except Exception as err:  # noqa: BLE001 - sorted: retried, or dropped and told
                if transient(err):
                    self._retry_later(err)
                    return False
                sent = self._drop_head(err)
            for _ in range(sent):
                self.pending.popleft()
            self.singly = max(0, self.singly - sent)
            self.attempts, self.failing_since, self.moved_at = 0, None, time.monotonic()
        return True

    def _retry_later(self, err: BaseException) -> None:
        now = time.monotonic()
        self.attempts += 1
        if self.failing_since is None:
            self.failing_since = now
        waited = now - self.failing_since
        what = describe(self.pending[0])
        if waited >= self.retry_cap_s:
            raise StoreUnreachable(
                f"the MLflow store took no write for {waited:.0f} s ({self.attempts} tries of {what}; last: "
                f"{one_line(err)}); {len(self.pending)} writes wait. The study stops: run the same command "
                f"again to resume once the store is back (${RETRY_CAP_ENV} sets how long to wait)"
            ) from err
        self.retry_at = now + RETRY_S
        log.warning(
            "MLflow write failed, kept: %s, attempt %d, next try in %.0f s (gives up in %.0f s): %s",
            what,
            self.attempts,
            RETRY_S,
            self.retry_cap_s - waited,
            one_line(err),
        )

    def _drop_head(self, err: BaseException) -> int:
        """The write at the head, which failed for good, dropped and reported; 1."""
        head = self.pending[0]
        self.dropped += 1
        if refused(err):
            log.warning("MLflow refused a write, dropped: %s: %s", describe(head), one_line(err))
        else:
            log.error(
                "MLflow write failed with an error that is not a lost connection, dropped: %s\n%s",
                describe(head),
                "".join(traceback.format_exception(err)).rstrip(),
            )
        if self.on_failure is not None:
            try:
                self.on_failure(head, err)
            except Exception:  # noqa: BLE001 - a broken report must not stop the writes behind
                log.exception("reporting a failed write failed")
        return 1

    def drain(self, timeout_s: float = 120.0) -> bool:
        """Flush until every waiting write is sent; False if the store stays away `timeout_s` (or
        past the retry cap)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if self.flush(force=True):
                    return True
            except StoreUnreachable as err:
                log.error("%s", err)
                return False
            if time.monotonic() > deadline:
                return False
            time.sleep(1.0)

    def idle_s(self) -> float:
        """How long writes have waited with none going out (0 when none waits)."""
        return time.monotonic() - self.moved_at if self.pending else 0.0


def answer(call: Callable[[], Any], timeout_s: float = ANSWER_TIMEOUT_S, what: str = "") -> Any:
    """A call whose result the driver needs now, retried while the store is away (`transient`,
    each failure logged); after `timeout_s`, or at once for any other error, its error is raised."""
    deadline = time.monotonic() + timeout_s
    attempt = 0
    while True:
        try:
            return call()
        except Exception as err:
            attempt += 1
            if not transient(err) or time.monotonic() > deadline:
                raise
            log.warning(
                "MLflow call failed: %s, attempt %d, next try in 1 s (gives up in %.0f s): %s",
                what or describe(call),
                attempt,
                deadline - time.monotonic(),
                one_line(err),
            )
            time.sleep(1.0)


class WriteLane:
    """A WriteQueue with its own writer thread (once `start`ed) and a count of the writes put
    in it, so a caller can tell when all the writes it made before some moment are out."""

    def __init__(
        self,
        send_ops: Callable[[Sequence[Any]], None] | None = None,
        name: str = "mlflow-writer",
        on_failure: Callable[[Any, BaseException], None] | None = None,
    ) -> None:
        self.queue = WriteQueue(send_ops, on_failure)
        self.name = name
        self.written = 0  # writes put so far
        self.thread: threading.Thread | None = None
        self.wake = threading.Event()
        self.stopping = False
        self.error: StoreUnreachable | None = None  # why the writer thread stopped on its own

    def put(self, fn: Callable[[], None] | Op) -> None:
        self.written += 1
        if self.thread is None:
            self.queue.put(fn)
        else:  # the thread sends it, in order (a deque's append is atomic)
            self.queue.pending.append(fn)

    def sent_through(self, mark: int) -> bool:
        """Every write put before `mark` (a past `written`) has been sent, or dropped for good:
        the queue only ever pops from its head. A write a failure adds (`Tracker._write_failed`)
        counts until it is sent, so this errs late, never early."""
        return self.written - len(self.queue.pending) >= mark

    def start(self) -> None:
        self.thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stopping:
            self.wake.wait(0.05)
            self.wake.clear()
            try:
                self.queue.flush()
            except StoreUnreachable as err:  # raised in the driver's thread at its next flush
                self.error = err
                return

    def flush(self, force: bool = False) -> bool:
        """With the thread: wakes it (True when nothing waits). Without: sends what it can now.
        StoreUnreachable when the store took no write for the retry cap."""
        if self.error is not None:
            raise self.error
        if self.thread is not None:
            self.wake.set()
            return not self.queue.pending
        return self.queue.flush(force)

    def drain(self, timeout_s: float) -> bool:
        """The thread stopped; what is left sent from here (False if the store stays away)."""
        if self.thread is not None:
            self.stopping = True
            self.wake.set()
            self.thread.join()
            self.thread = None
        return self.queue.drain(timeout_s)
