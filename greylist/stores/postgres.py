"""The shared store for several MX hosts: PostgreSQL, through psycopg 3.

Tables are the reference's (courier-pythonfilter's ``ttldb`` SQL store):
``greylist_Passed`` and ``greylist_NotPassed``, each ``id CHAR(64) PRIMARY
KEY, value BIGINT``, so that tables it created keep working here and the
other way round.

Race-free across hosts by the database's own means: a message's transaction
first takes a transaction-scoped advisory lock for each of its triplets (in
a fixed order, so two messages never wait for each other in a circle), then
reads, decides and writes with upserts, and commits.  Two hosts deciding the
same triplet at once therefore take turns, and only one of them sees it new.

Connections come from a small pool (``pg_pool.py``, at most ``pool_size``)
shared by the dispatcher's threads, one thread per message.  A message has
``timeout`` seconds in all, for a connection, connecting, and its two round
trips; a connection found broken (the server restarted) is replaced and the
transaction tried once more if nothing was read yet; a table someone
dropped is made again, with one log line.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Callable, Iterator, Mapping, Optional, Sequence, Tuple

from ..maillog import stderr_line
from . import pg_schema
from .base import (
    COUNTED_TABLES,
    OPTIONAL_TABLES,
    TABLES,
    Store,
    StoreError,
    StoreOpenError,
    Transaction,
)
from .pg_pool import ConnectionPool
from .pg_wire import (
    UNDEFINED_TABLE,
    RoundTripError,
    ServerUnreachable,
    load_psycopg,
    one_line,
    quote,
    round_trip,
    value,
)

_PURGE_LOCK = 0x67726579  # "grey": one host purges at a time
_PURGE_BATCH = 1000
_PAGE = 1000  # rows per round trip when a command reads a whole table
_LOCKS_PER_SELECT = 1000


class _PgTransaction(Transaction):
    """One message in two round trips to the server, within ``timeout`` from its start.

    The first sends BEGIN, the advisory locks of the message's triplets and
    the reads; the second sends the upserts and deletes with COMMIT.  Each
    is one multi-statement query (values go in as quoted literals), sent
    through libpq directly (see ``round_trip``).
    """

    def __init__(self, store: PostgresStore) -> None:
        self._store = store
        self._conn = None
        self._deadline = 0.0
        self._began = False
        self._cache: dict = {}
        self._writes: list = []

    def _left(self) -> float:
        return self._deadline - time.monotonic()

    def __enter__(self) -> _PgTransaction:
        self._deadline = time.monotonic() + self._store.timeout
        self._store.make_ready(self._deadline)
        self._conn = self._store.pool.take(self._deadline)
        return self

    def __exit__(self, kind, error, traceback) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:  # None: taking a new one for the second try failed
            try:
                if error is None and self._writes:
                    begin = [] if self._began else ["BEGIN"]
                    round_trip(conn, "; ".join(begin + self._writes + ["COMMIT"]), self._left())
                elif self._began:
                    round_trip(conn, "COMMIT" if error is None else "ROLLBACK", self._left())
            except RoundTripError as exit_error:
                if error is None:
                    raise StoreError(f"PostgreSQL: {exit_error}") from exit_error
            finally:
                self._store.pool.give_back(conn)  # closed there unless it is between transactions
        if isinstance(error, RoundTripError):
            raise StoreError(f"PostgreSQL: {error}") from error

    def lock_and_load(self, keys: Sequence[str], more: Mapping[str, Sequence[str]] = {}) -> None:  # noqa: B006
        """BEGIN, take the advisory locks of every key (triplets, networks, ...), then read them."""
        reads = {table: sorted(set(keys)) for table in TABLES} if keys else {}
        reads.update((table, sorted(set(listed))) for table, listed in more.items() if listed)
        started = time.monotonic()
        try:
            self._load(reads)
        except RoundTripError as error:
            missing_table = error.sqlstate == UNDEFINED_TABLE
            if self._writes or self._began or error.timed_out or not (missing_table or error.broken):
                raise  # a timeout already took all the time a message may wait
            # Nothing was read or written in this transaction yet: try once more, on
            # a new connection (the old one is closed: it died, or its BEGIN failed).
            conn, self._conn = self._conn, None
            self._store.pool.give_back(conn)
            if missing_table:
                self._store.make_tables_again(error, self._deadline)
            else:  # a connection that died while idle: the server restarted, so did the others
                self._store.pool.discard_idle()
            self._conn = self._store.pool.take(self._deadline)
            self._load(reads)
        finally:
            # The locks are taken and the keys read in one round trip: all of
            # it counts as the wait (a lock another host holds is what makes it long).
            self.waited = time.monotonic() - started

    def _load(self, reads: Mapping[str, Sequence[str]]) -> None:
        """``reads``: table -> keys to lock and read."""
        # Sorted: every host locks in the same order, so no two wait on each other.
        literals = [quote(key) for key in sorted({key for listed in reads.values() for key in listed})]
        # Separate statements: under READ COMMITTED each reads what was
        # committed when it began, so the reads must begin after the locks.
        statements = [] if self._began else ["BEGIN"]
        # In statements of at most _LOCKS_PER_SELECT: PostgreSQL refuses a
        # target list of more than 1,664 entries (a message of 2,000 recipients).
        for start in range(0, len(literals), _LOCKS_PER_SELECT):
            statements.append("SELECT " + ", ".join(
                f"pg_advisory_xact_lock(hashtextextended({literal}, 0))"
                for literal in literals[start : start + _LOCKS_PER_SELECT]))
        tables = list(reads)
        selects = [f"SELECT {which}, rtrim(id), value, {'passes' if table in COUNTED_TABLES else 0} "
                   f"FROM {table} WHERE id IN ({', '.join(quote(key) for key in reads[table])})"
                   for which, table in enumerate(tables)]
        if not selects:
            return
        statements.append(" UNION ALL ".join(selects))
        results = round_trip(self._conn, "; ".join(statements), self._left())
        self._began = True
        found: dict = {(table, key): None for table, listed in reads.items() for key in listed}
        rows = results[-1]  # the last result is the reads
        for row in range(rows.ntuples):
            table = tables[int(rows.get_value(row, 0))]
            key = value(rows, row, 1)
            stamp = int(rows.get_value(row, 2))
            if table in COUNTED_TABLES:
                found[(table, key)] = (float(stamp), int(rows.get_value(row, 3)))
            else:
                found[(table, key)] = stamp
        self._cache.update(found)

    def get(self, table: str, key: str) -> Optional[float]:
        if (table, key) not in self._cache:
            if table in TABLES:
                self.lock_and_load([key])
            else:
                self.lock_and_load((), {table: [key]})
        stored = self._cache.get((table, key))
        if isinstance(stored, tuple):  # a counted table's (time, count)
            return stored[0]
        return None if stored is None else float(stored)

    def get_counted(self, table: str, key: str) -> Optional[Tuple[float, int]]:
        if (table, key) not in self._cache:
            self.lock_and_load((), {table: [key]})
        return self._cache.get((table, key))

    def set_counted(self, table: str, key: str, timestamp: int, count: int) -> None:
        self._writes.append(
            f"INSERT INTO {table} (id, value, passes) "
            f"VALUES ({quote(key)}, {int(timestamp)}, {int(count)}) "
            f"ON CONFLICT (id) DO UPDATE SET value = EXCLUDED.value, passes = EXCLUDED.passes")
        self._cache[(table, key)] = (float(timestamp), int(count))

    def set(self, table: str, key: str, timestamp: int) -> None:
        self._writes.append(
            f"INSERT INTO {table} (id, value) VALUES ({quote(key)}, {int(timestamp)}) "
            f"ON CONFLICT (id) DO UPDATE SET value = EXCLUDED.value")
        self._cache[(table, key)] = int(timestamp)

    def delete(self, table: str, key: str) -> None:
        self._writes.append(f"DELETE FROM {table} WHERE id = {quote(key)}")
        self._cache[(table, key)] = None


class PostgresStore(Store):
    """The reference's tables, and ours when asked for, in a PostgreSQL database."""

    decisions_take_turns = False

    def __init__(
        self,
        host: Optional[str],
        port: Optional[int],
        dbname: Optional[str],
        user: Optional[str],
        password: Optional[str],
        timeout: float = 5.0,
        readonly: bool = False,
        tables: Sequence[str] = (),
        wait_for_server: bool = False,
        pool_size: int = 4,
        log: Callable[[str], None] = stderr_line,
    ) -> None:
        """Connect, look at the tables and make the reference's if missing.

        ``wait_for_server``: a server that does not answer is not an error here
        (``unreachable_at_start`` says why); every use tries again.
        """
        self._psycopg = load_psycopg()
        self.readonly = readonly
        self.timeout = timeout
        self.log = log
        milliseconds = int(timeout * 1000)
        self._params = {
            "host": host, "port": port, "dbname": dbname, "user": user, "password": password,
            # Keys go into statements as standard SQL literals (see quote).  The
            # server's own timeouts stop what the client gave up on.
            "options": f"-c statement_timeout={milliseconds} -c lock_timeout={milliseconds} "
                       f"-c standard_conforming_strings=on",
            "application_name": "courier-greylist",
        }
        self._params = {k: v for k, v in self._params.items() if v is not None}
        self.description = f"PostgreSQL database {dbname} on {host or 'localhost'}:{port or 5432}"
        self.pool = ConnectionPool(self._connect, pool_size, self.description)
        self.entries_after_purge = {}
        self._wanted = {table: table in tables for table in OPTIONAL_TABLES}
        self.tables = TABLES + tuple(table for table, wanted in self._wanted.items() if wanted)
        self._ready = False  # the tables were looked at (and made), on a first connection
        self._ready_lock = threading.Lock()
        self.unreachable_at_start: Optional[str] = None
        try:
            self.make_ready(time.monotonic() + timeout)
        except StoreError as error:
            if not (wait_for_server and isinstance(error, ServerUnreachable)):
                self.pool.close()
                raise StoreOpenError(str(error)) from None
            # The dispatcher starts all the same (an MX may boot before its database
            # host): each message follows on_store_error until the server answers.
            self.unreachable_at_start = str(error)

    # connections

    def _connect(self, deadline: float):
        # libpq counts whole seconds, and at least 2.
        seconds = max(1, math.ceil(deadline - time.monotonic()))
        try:
            return self._psycopg.connect(autocommit=True, connect_timeout=seconds, **self._params)
        except self._psycopg.OperationalError as error:
            raise ServerUnreachable(f"cannot connect to {self.description}: {one_line(error)}") from None
        except self._psycopg.Error as error:
            raise StoreError(f"cannot connect to {self.description}: {one_line(error)}") from None

    def _on_connection(self, job: Callable, deadline: float):
        """``job(conn, seconds left)`` on a connection of the pool; its errors as StoreError."""
        conn = self.pool.take(deadline)
        try:
            return job(conn, deadline - time.monotonic())
        except RoundTripError as error:
            # A server that stopped answering may answer again: as one that is down.
            kind = ServerUnreachable if error.broken else StoreError
            raise kind(f"cannot use {self.description}: {error}") from None
        finally:
            self.pool.give_back(conn)

    def make_ready(self, deadline: float) -> None:
        """On the first connection: which tables there are, and the reference's made if missing."""
        if self._ready:
            return
        # Bounded: a message never waits past its deadline for another's set-up.
        if not self._ready_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise StoreError(f"{self.description}: the tables are still being looked at")
        try:
            if not self._ready:
                self._on_connection(self._look_at_tables, deadline)
                self._ready = True
        finally:
            self._ready_lock.release()

    def _look_at_tables(self, conn, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        present = pg_schema.existing(conn, list(self._wanted), seconds)
        self.tables = TABLES + tuple(table for table, wanted in self._wanted.items()
                                     if wanted or present[table])
        if self.readonly:
            return
        pg_schema.create_tables(conn, self.tables, deadline - time.monotonic())
        try:
            pg_schema.create_indexes(conn, self.tables, deadline - time.monotonic())
        except RoundTripError:
            pass  # another host builds one right now, or it takes long: the purge works without it

    def make_tables_again(self, error: RoundTripError, deadline: float) -> None:
        """A statement found a table missing (someone dropped it): make the tables again."""
        if self.readonly:
            raise StoreError(f"PostgreSQL: {error}")
        self.log(f"greylist: {self.description}: {error}; making the tables again")
        self._on_connection(lambda conn, seconds: pg_schema.create_tables(conn, self.tables, seconds),
                            deadline)

    def missing_tables(self) -> list:
        """The tables this store uses that the database does not have (yet)."""
        present = self._on_connection(lambda conn, seconds: pg_schema.existing(conn, self.tables, seconds),
                                      time.monotonic() + self.timeout)
        return [table for table in self.tables if not present[table]]

    # the Store interface

    def transaction(self) -> _PgTransaction:
        if self.readonly:
            raise StoreError(f"{self.description} is open read-only")
        return _PgTransaction(self)

    def purge(
        self,
        table: str,
        older_than: float,
        progress: Optional[Callable[[int], None]] = None,
    ) -> int:
        """Delete in batches, one host at a time; each round trip bounded by ``timeout``."""
        if self.readonly:
            raise StoreError(f"{self.description} is open read-only; cannot purge")
        self.make_ready(time.monotonic() + self.timeout)
        conn = self.pool.take(time.monotonic() + self.timeout)
        held = False
        removed = 0
        try:
            held = value(round_trip(conn, f"SELECT pg_try_advisory_lock({_PURGE_LOCK})",
                                    self.timeout)[0]) == "t"
            if not held:
                return 0  # another host is purging
            while True:
                deleted = round_trip(conn, f"DELETE FROM {table} WHERE ctid = ANY(ARRAY("
                                           f"SELECT ctid FROM {table} WHERE value < {int(older_than)} "
                                           f"LIMIT {_PURGE_BATCH}))", self.timeout)[0]
                count = int(deleted.command_tuples or 0)
                removed += count
                if progress is not None:
                    progress(removed)
                if count < _PURGE_BATCH:
                    break
            # One scan per purge (hours apart), on the purge's own connection.
            self.entries_after_purge[table] = int(value(round_trip(
                conn, f"SELECT count(*) FROM {table}", self.timeout)[0]))
            return removed
        except RoundTripError as error:
            raise StoreError(f"purge of {table}: {error}") from error
        finally:
            # Let go here, not by closing: the server drops a closed session's
            # locks a moment later, and the next table's purge would find it held.
            if held:
                try:
                    round_trip(conn, f"SELECT pg_advisory_unlock({_PURGE_LOCK})", self.timeout)
                except RoundTripError:
                    conn.close()  # the server lets go of a closed session's locks
            self.pool.give_back(conn)

    def _pages(self, table: str, columns: str) -> Iterator[list]:
        """Every row of a table in pages of _PAGE, by key: no page waits longer than ``timeout``."""
        after = ""
        while True:
            def page(conn, seconds, after=after):
                result = round_trip(conn, f"SELECT rtrim(id), value, {columns} FROM {table} "
                                          f"WHERE id > {quote(after)} ORDER BY id LIMIT {_PAGE}", seconds)[0]
                return [[value(result, row, column) for column in range(result.nfields)]
                        for row in range(result.ntuples)]

            rows = self._on_connection(page, time.monotonic() + self.timeout)
            yield rows
            if len(rows) < _PAGE:
                return
            after = rows[-1][0]

    def items(self, table: str) -> Iterator[Tuple[str, Optional[float]]]:
        for rows in self._pages(table, "0"):
            for key, stamp, _ in rows:
                yield key, float(stamp)

    def counted_items(self, table: str) -> Iterator[Tuple[str, float, int]]:
        for rows in self._pages(table, "passes"):
            for key, stamp, passes in rows:
                yield key, float(stamp), int(passes)

    def close(self) -> None:
        self.pool.close()
