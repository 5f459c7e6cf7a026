"""MLflow writes kept in order while the tracking server is away, and sent when it is back.

The driver must never stop for a tracking server that dropped out: a write that fails stays at
the head of the queue and everything after it waits behind it, so the store sees the writes in
the order they were made. A write the server refused (HTTP 4xx but 429) would fail for ever,
so it is dropped with a warning instead of blocking the rest.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
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


class WriteQueue:
    def __init__(self) -> None:
        self.pending: deque[Callable[[], None]] = deque()  # writes waiting for the server
        self.retry_at = 0.0  # monotonic time before which waiting writes are not tried again

    def put(self, fn: Callable[[], None]) -> None:
        self.pending.append(fn)
        self.flush()

    def flush(self, force: bool = False) -> bool:
        """Send waiting writes in order; keep them if the server is away. True when all sent.
        After a failure nothing is tried for RETRY_S (unless `force`): new writes queue behind."""
        if self.pending and not force and time.monotonic() < self.retry_at:
            return False
        while self.pending:
            try:
                self.pending[0]()
            except Exception as err:  # noqa: BLE001 - any transport error: keep the write, retry later
                if not refused(err):
                    self.retry_at = time.monotonic() + RETRY_S
                    return False
                # Retried, it would fail for ever and hold back every write behind it.
                log.warning("MLflow refused a write, dropped: %s", err)
            self.pending.popleft()
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
