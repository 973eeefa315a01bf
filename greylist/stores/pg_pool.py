"""A few PostgreSQL connections, shared by whatever threads come and go.

courier-pythonfilter's dispatcher decides every message in a thread of its
own, so a connection cannot belong to a thread: it would be opened for one
message and never used again.  Here at most ``size`` connections are open
at once.  A thread takes one for a message (waiting, until the message's
deadline, while all are in use), and gives it back; a connection that is
broken, or was left in the middle of a transaction (a statement timed out),
is closed instead of kept, and the next thread connects anew.

Connecting happens in the thread that needs the connection, bounded by the
same deadline, so that a refused login fails the message at once with the
server's own words.  psycopg_pool connects in worker threads of its own: a
message then waits its whole timeout while the server refuses, and never
learns why; that is why this pool is ours.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, List, Tuple

from .base import StoreError

_IDLE_TIMEOUT = 300.0  # seconds a connection may sit unused before it is closed


class PoolExhausted(StoreError):
    """Every connection of the pool stayed in use until the deadline."""


def usable(conn) -> bool:
    """True when a connection can serve another message as it is: open, and between transactions."""
    return not conn.closed and not conn.broken and conn.pgconn.transaction_status == 0  # IDLE


class ConnectionPool:
    """At most ``size`` connections; ``connect(deadline)`` opens a new one."""

    def __init__(self, connect: Callable[[float], Any], size: int, name: str = "the server",
                 idle_timeout: float = _IDLE_TIMEOUT, clock: Callable[[], float] = time.monotonic) -> None:
        self.size = size
        self.name = name  # for messages
        self._connect = connect
        self._idle_timeout = idle_timeout
        self._clock = clock
        self._slots = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()
        self._idle: List[Tuple[Any, float]] = []  # (connection, given back at), the newest last
        self._closed = False

    def take(self, deadline: float):
        """A connection for the caller alone, until ``give_back``; raises StoreError."""
        if not self._slots.acquire(timeout=max(0.0, deadline - self._clock())):
            raise PoolExhausted(f"{self.name}: all {self.size} connections stayed busy")
        try:
            conn = self._newest_idle()
            return conn if conn is not None else self._connect(deadline)
        except BaseException:
            self._slots.release()
            raise

    def _newest_idle(self):
        now = self._clock()
        stale = []
        with self._lock:
            if self._closed:
                raise StoreError("the store is closed")
            # The oldest come first: those unused for long are closed (a server or a
            # firewall may drop them anyway), so that a quiet hour keeps one at most.
            while self._idle and now - self._idle[0][1] > self._idle_timeout and len(self._idle) > 1:
                stale.append(self._idle.pop(0)[0])
            conn = self._idle.pop()[0] if self._idle else None
        for old in stale:
            _close(old)
        return conn

    def give_back(self, conn) -> None:
        """The caller is done with ``conn``: kept for the next message, or closed."""
        try:
            if usable(conn):
                with self._lock:
                    if not self._closed:
                        self._idle.append((conn, self._clock()))
                        return
            _close(conn)
        finally:
            self._slots.release()

    def discard_idle(self) -> None:
        """Close every idle connection (the server restarted: they are all broken)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn, _ in idle:
            _close(conn)

    @property
    def idle(self) -> int:
        return len(self._idle)

    def close(self) -> None:
        """Close the idle connections; those in use are closed when given back."""
        with self._lock:
            self._closed = True
        self.discard_idle()


def _close(conn) -> None:
    try:
        conn.close()
    except Exception:  # closing a broken connection: nothing more to lose
        pass
