"""A bound, kept by this side, on how long one use of a PostgreSQL connection may take.

A server that stops answering without closing its connections (frozen, its host or disk
stalled, a network cut that sends no reset) raises no error: the kernel still acknowledges
what is sent, so TCP keepalives and the TCP user timeout see nothing wrong, and the server's
own statement_timeout cannot fire while it is stopped. `bounded(conn, seconds)` arms one
watchdog thread: when the block still runs after `seconds`, it shuts the connection's socket
down, the call blocked on it fails at once, and the block raises StoreUnavailableError. The
connection is then closed (its owner opens a new one next time).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from fisheye.monitoring.prediction_log.rows import StoreUnavailableError

STORE_TIMEOUT_S = 5.0  # how long a PostgreSQL store's use may wait (FISHEYE_STORE_TIMEOUT_S)
# A one-off reader (`fisheye monitor report`) may read every row of the retention period.
READONLY_TIMEOUT_S = 300.0

log = logging.getLogger(__name__)


class _Watchdog:
    """One thread that cuts the connections whose block outlived its deadline."""

    def __init__(self) -> None:
        self._wake = threading.Condition()
        self._armed: dict[int, tuple[float, Any]] = {}  # key: (deadline, connection)
        self._cut: set[int] = set()
        self._keys = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, conn: Any, seconds: float) -> int:
        with self._wake:
            key = next(self._keys)
            self._armed[key] = (time.monotonic() + seconds, conn)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="fisheye-pg-deadline", daemon=True
                )
                self._thread.start()
            self._wake.notify()
        return key

    def disarm(self, key: int) -> bool:
        """Stop watching; whether the connection was cut meanwhile."""
        with self._wake:
            self._armed.pop(key, None)
            if key in self._cut:
                self._cut.discard(key)
                return True
            return False

    def _run(self) -> None:
        with self._wake:
            while True:
                now = time.monotonic()
                for key in [k for k, (due, _) in self._armed.items() if due <= now]:
                    _, conn = self._armed.pop(key)
                    self._cut.add(key)
                    # Under the lock: the block cannot end (and its connection be closed,
                    # its descriptor reused) while its socket is shut down.
                    _shut_down(conn)
                next_due = min((due for due, _ in self._armed.values()), default=None)
                self._wake.wait(None if next_due is None else max(0.0, next_due - now))


def _shut_down(conn: Any) -> None:
    try:
        sock = socket.socket(fileno=os.dup(conn.fileno()))
    except Exception as exc:  # already closed: nothing waits on it
        log.debug("no socket to shut down: %s", exc)
        return
    with contextlib.suppress(OSError), sock:
        sock.shutdown(socket.SHUT_RDWR)


_WATCHDOG = _Watchdog()


@contextlib.contextmanager
def bounded(conn: Any, seconds: float, what: str) -> Iterator[Any]:
    """Run the block on `conn` for at most about `seconds`: past that its socket is shut
    down and StoreUnavailableError (naming `what`) raised; the connection is closed."""
    key = _WATCHDOG.arm(conn, seconds)
    cut = False
    try:
        yield conn
    except Exception as exc:
        cut = _WATCHDOG.disarm(key)
        if cut:
            raise StoreUnavailableError(
                f"{what} did not answer within {seconds:g} s (its connection was closed)"
            ) from exc
        raise
    finally:
        # Also when it was cut just as the block finished: its result stands, the socket not.
        if cut or _WATCHDOG.disarm(key):
            _close(conn)


def _close(conn: Any) -> None:
    with contextlib.suppress(Exception):
        conn.close()
