"""PostgreSQL at libpq's level: one multi-statement round trip, bounded in time; quoting; the driver.

psycopg's cursors cost about three times the client CPU of libpq's own
calls, which ``conn.pgconn`` gives; the store sends every statement through
``round_trip`` here, the set-up of the tables and the purge included, so
that no wait for the server is longer than the time it is given.
"""

from __future__ import annotations

import math
import select
import time

from ..extras import install_hint
from .base import StoreError, StoreOpenError

# libpq's PGRES_EMPTY_QUERY, PGRES_COMMAND_OK, PGRES_TUPLES_OK; CONNECTION_OK.
_SUCCESS = (0, 1, 2)
_CONNECTION_OK = 0
_SQLSTATE_FIELD = ord("C")  # PG_DIAG_SQLSTATE
_MESSAGE_FIELD = ord("M")  # PG_DIAG_MESSAGE_PRIMARY

UNDEFINED_TABLE = "42P01"
# Another host made the same table or index at the same moment.
ALREADY_MADE = ("42P07", "23505")


def quote(text: str) -> str:
    """A string as a standard SQL literal (keys are hex digests or networks; anything else is safe too).

    With standard_conforming_strings (on since PostgreSQL 9.1) backslashes
    are plain characters; a NUL cannot be sent at all.
    """
    if "\x00" in text:
        raise StoreError("a key with a NUL character cannot be stored in PostgreSQL")
    return "'" + text.replace("'", "''") + "'"


def load_psycopg():
    try:
        import psycopg
    except ImportError:
        raise StoreOpenError("the PostgreSQL store needs psycopg 3: "
                             f"{install_hint('postgres')}") from None
    return psycopg


def one_line(error: BaseException) -> str:
    """An error of the driver or the server as one line (the server's messages span several)."""
    return " ".join(str(error).split())


class RoundTripError(StoreError):
    """A statement failed, or the connection did; ``broken`` says which.

    ``sqlstate`` is the server's error code when a statement failed.
    """

    def __init__(self, message: str, broken: bool, timed_out: bool = False,
                 sqlstate: str = "") -> None:
        super().__init__(message)
        self.broken = broken
        self.timed_out = timed_out
        self.sqlstate = sqlstate


class ServerUnreachable(StoreError):
    """A connection failed (the server down or booting, the network, but also a refused
    login: libpq tells them apart only in words): it may succeed later."""


def round_trip(conn, query: str, timeout: float) -> list:
    """Send a multi-statement query and return its results, on libpq's level.

    psycopg's cursors cost about 100 us of CPU per round trip; libpq's own
    calls through ``conn.pgconn`` cost about 30 us, as much as psycopg2.  The
    wait for the answer is a ``poll`` on the socket, which lets the
    dispatcher's other threads run meanwhile and bounds the wait by
    ``timeout`` even when the network is gone without a word.
    """
    pgconn = conn.pgconn
    if timeout <= 0:
        raise RoundTripError("no time left to ask the server", broken=False, timed_out=True)
    try:
        pgconn.send_query(query.encode("utf-8"))
        waiter = select.poll()
        waiter.register(pgconn.socket, select.POLLIN)
        results = []
        deadline = time.monotonic() + timeout
        while True:
            while pgconn.is_busy():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not waiter.poll(remaining * 1000):
                    # In whole seconds: what is left of a message's timeout is a little less.
                    raise RoundTripError(f"no answer within {math.ceil(timeout):g} s", broken=True,
                                         timed_out=True)
                pgconn.consume_input()
            result = pgconn.get_result()
            if result is None:
                break
            results.append(result)
    except RoundTripError:
        raise
    except Exception as error:  # psycopg.OperationalError, OSError: the connection is gone
        raise RoundTripError(one_line(error), broken=True) from error
    for result in results:
        if result.status not in _SUCCESS:
            # The primary message: the whole one adds the statement and a caret under it.
            message = (result.error_field(_MESSAGE_FIELD) or result.error_message or b"").decode(
                "utf-8", "replace")
            sqlstate = (result.error_field(_SQLSTATE_FIELD) or b"").decode("ascii", "replace")
            raise RoundTripError(" ".join(message.split()) or f"status {result.status}",
                                 broken=pgconn.status != _CONNECTION_OK, sqlstate=sqlstate)
    return results


def value(result, row: int = 0, column: int = 0) -> str:
    """One field of a result as text (None for NULL)."""
    raw = result.get_value(row, column)
    return None if raw is None else raw.decode("utf-8", "surrogateescape")
