"""MLflow writes kept in order while the tracking server is away, and sent when it is back.

The driver must never stop for a tracking server that dropped out: a write that fails stays at
the head of the queue and everything after it waits behind it, so the store sees the writes in
the order they were made. A write the server refused (HTTP 4xx but 429) would fail for ever,
so it is dropped with a warning instead of blocking the rest.

Writes queued as data (`Op`) go out together: the ops queued one after another, up to GROUP_MAX,
are one call of the queue's `send_ops` (one database transaction for many runs' rows). When
that call is refused, one of them was: they go one at a time, and only that one is dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mlflow.exceptions import MlflowException

log = logging.getLogger(__name__)
RETRY_S = 2.0  # after a failed write, the next try waits this long: the driver's loop runs on
ANSWER_TIMEOUT_S = 90.0  # how long a call whose answer the driver needs (a new run's id) is retried


def refused(err: Exception) -> bool:
    """The server answered and refused (HTTP 4xx but 429): sending the same write again would fail
    again. Anything else (no connection, a timeout, 5xx, a locked SQLite file) may pass later."""
    if not isinstance(err, MlflowException):
        return False
    code = err.get_http_status_code()
    return 400 <= code < 500 and code != 429


GROUP_MAX = 200  # ops sent as one call, at most (each holds up to 1,000 metric points)


@dataclass(frozen=True)
class Op:
    """A write as data, for the queue's `send_ops`."""

    data: Any


class WriteQueue:
    def __init__(self, send_ops: Callable[[Sequence[Any]], None] | None = None) -> None:
        """`send_ops`: sends the data of several `Op`s at once (needed only if Ops are queued)."""
        self.pending: deque[Callable[[], None] | Op] = deque()  # writes waiting for the server
        self.retry_at = 0.0  # monotonic time before which waiting writes are not tried again
        self.send_ops = send_ops
        self.singly = 0  # writes at the head to send one at a time (a group one of which was refused)

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
            if n > 1 and refused(err):
                self.singly = n  # one of them was refused: which one, sent alone, will say
                return 0
            raise
        return n

    def put(self, fn: Callable[[], None] | Op) -> None:
        self.pending.append(fn)
        self.flush()

    def flush(self, force: bool = False) -> bool:
        """Send waiting writes in order; keep them if the server is away. True when all sent.
        After a failure nothing is tried for RETRY_S (unless `force`): new writes queue behind."""
        if self.pending and not force and time.monotonic() < self.retry_at:
            return False
        while self.pending:
            try:
                sent = self._send_head()
            except Exception as err:  # noqa: BLE001 - any transport error: keep the write, retry later
                if not refused(err):
                    self.retry_at = time.monotonic() + RETRY_S
                    return False
                # Retried, it would fail for ever and hold back every write behind it.
                log.warning("MLflow refused a write, dropped: %s", err)
                sent = 1
            for _ in range(sent):
                self.pending.popleft()
            self.singly = max(0, self.singly - sent)
        return True

    def drain(self, timeout_s: float = 120.0) -> bool:
        """Flush until every waiting write is sent; False if the server stays away `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while not self.flush(force=True):
            if time.monotonic() > deadline:
                return False
            time.sleep(1.0)
        return True


def answer(call: Callable[[], Any], timeout_s: float = ANSWER_TIMEOUT_S) -> Any:
    """A call whose result the driver needs now, retried while the server is away; after
    `timeout_s`, or when the server refuses it, its error is raised."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return call()
        except Exception as err:
            if refused(err) or time.monotonic() > deadline:
                raise
            time.sleep(1.0)


class WriteLane:
    """A WriteQueue with its own writer thread (once `start`ed) and a count of the writes put
    in it, so a caller can tell when all the writes it made before some moment are out."""

    def __init__(self, send_ops: Callable[[Sequence[Any]], None] | None = None, name: str = "mlflow-writer") -> None:
        self.queue = WriteQueue(send_ops)
        self.name = name
        self.written = 0  # writes put so far
        self.thread: threading.Thread | None = None
        self.wake = threading.Event()
        self.stopping = False

    def put(self, fn: Callable[[], None] | Op) -> None:
        self.written += 1
        if self.thread is None:
            self.queue.put(fn)
        else:  # the thread sends it, in order (a deque's append is atomic)
            self.queue.pending.append(fn)

    def sent_through(self, mark: int) -> bool:
        """Every write put before `mark` (a past `written`) has been sent, or refused and
        dropped: the queue only ever pops from its head."""
        return self.written - len(self.queue.pending) >= mark

    def start(self) -> None:
        self.thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stopping:
            self.wake.wait(0.05)
            self.wake.clear()
            self.queue.flush()

    def flush(self, force: bool = False) -> bool:
        """With the thread: wakes it (True when nothing waits). Without: sends what it can now."""
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
