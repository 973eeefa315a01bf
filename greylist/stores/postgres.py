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

Each thread of the dispatcher has its own connection.  A connection found
broken (the server restarted, the network dropped) is replaced, and a
transaction that failed before writing anything is tried once more on the
new connection.  Every statement is bounded by ``timeout`` seconds, as is
connecting, so an outage never holds mail longer than that.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Callable, Iterator, Optional, Sequence, Tuple

from . import AUTO_WHITELIST_TABLE, MESSAGE_ID_TABLE, TABLES, Store, StoreError, StoreOpenError, Transaction
from .pg_wire import RoundTripError, ServerUnreachable, load_psycopg, quote, round_trip

_PURGE_LOCK = 0x67726579  # "grey": one host purges at a time
_PURGE_BATCH = 1000
_LOCKS_PER_SELECT = 1000


class _PgTransaction(Transaction):
    """One message in two round trips to the server.

    The first sends BEGIN, the advisory locks of the message's triplets and
    the reads; the second sends the upserts and deletes with COMMIT.  Each
    is one multi-statement query (values go in as quoted literals), sent
    through libpq directly (see ``round_trip``).
    """

    def __init__(self, store: PostgresStore) -> None:
        self._store = store
        self._conn = None
        self._began = False
        self._cache: dict = {}
        self._writes: list = []

    def __enter__(self) -> _PgTransaction:
        self._conn = self._store._connection()
        return self

    def __exit__(self, kind, error, traceback) -> None:
        conn = self._conn
        try:
            if error is None and self._writes:
                begin = [] if self._began else ["BEGIN"]
                round_trip(conn, "; ".join(begin + self._writes + ["COMMIT"]), self._store.timeout)
            elif self._began:
                round_trip(conn, "COMMIT" if error is None else "ROLLBACK", self._store.timeout)
        except RoundTripError as exit_error:
            self._store._forget(conn)
            if error is None:
                raise StoreError(f"PostgreSQL: {exit_error}") from exit_error
        if isinstance(error, (RoundTripError, self._store._psycopg.Error)):
            self._store._forget(conn)
            raise StoreError(f"PostgreSQL: {' '.join(str(error).split())}") from error

    def lock_and_load(self, keys: Sequence[str], counted_keys: Sequence[str] = (),
                      message_keys: Sequence[str] = ()) -> None:
        """BEGIN, take the advisory locks of the triplets (networks, messages), then read them."""
        unique, counted = sorted(set(keys)), sorted(set(counted_keys))
        messages = sorted(set(message_keys))
        started = time.monotonic()
        try:
            self._load(unique, counted, messages)
        except RoundTripError as error:
            if self._writes or not error.broken or error.timed_out:
                raise  # a timeout already took all the time a message may wait
            # A connection that died while idle (a server restart): nothing was
            # read or written in this transaction yet, so try once more.
            self._store._forget(self._conn)
            self._conn = self._store._connection()
            self._began = False
            self._load(unique, counted, messages)
        finally:
            # The locks are taken and the keys read in one round trip: all of
            # it counts as the wait (a lock another host holds is what makes it long).
            self.waited = time.monotonic() - started

    def _load(self, keys: Sequence[str], counted: Sequence[str], messages: Sequence[str] = ()) -> None:
        # Sorted: every host locks in the same order, so no two wait on each other.
        literals = [quote(key) for key in sorted(set(keys) | set(counted) | set(messages))]
        # Separate statements: under READ COMMITTED each reads what was
        # committed when it began, so the reads must begin after the locks.
        statements = [] if self._began else ["BEGIN"]
        # In statements of at most _LOCKS_PER_SELECT: PostgreSQL refuses a
        # target list of more than 1,664 entries (a message of 2,000 recipients).
        for start in range(0, len(literals), _LOCKS_PER_SELECT):
            statements.append("SELECT " + ", ".join(
                f"pg_advisory_xact_lock(hashtextextended({literal}, 0))"
                for literal in literals[start : start + _LOCKS_PER_SELECT]))
        reads = []
        if keys:
            listed = ", ".join(quote(key) for key in keys)
            reads += [f"SELECT {which}, rtrim(id), value, 0 FROM {table} WHERE id IN ({listed})"
                      for which, table in enumerate(TABLES)]
        if counted:
            listed = ", ".join(quote(key) for key in counted)
            reads.append(f"SELECT 2, rtrim(id), value, passes FROM {AUTO_WHITELIST_TABLE} "
                         f"WHERE id IN ({listed})")
        if messages:
            listed = ", ".join(quote(key) for key in messages)
            reads.append(f"SELECT 3, rtrim(id), value, 0 FROM {MESSAGE_ID_TABLE} WHERE id IN ({listed})")
        if not reads:
            return
        statements.append(" UNION ALL ".join(reads))
        results = round_trip(self._conn, "; ".join(statements), self._store.timeout)
        self._began = True
        found: dict = {(table, key): None for table in TABLES for key in keys}
        found.update({(AUTO_WHITELIST_TABLE, key): None for key in counted})
        found.update({(MESSAGE_ID_TABLE, key): None for key in messages})
        rows = results[-1]  # the last result is the reads
        for row in range(rows.ntuples):
            which = int(rows.get_value(row, 0))
            key = rows.get_value(row, 1).decode("utf-8", "surrogateescape")
            value = int(rows.get_value(row, 2))
            if which == 2:
                found[(AUTO_WHITELIST_TABLE, key)] = (float(value), int(rows.get_value(row, 3)))
            elif which == 3:
                found[(MESSAGE_ID_TABLE, key)] = value
            else:
                found[(TABLES[which], key)] = value
        self._cache.update(found)

    def get(self, table: str, key: str) -> Optional[float]:
        if (table, key) not in self._cache:
            if table == MESSAGE_ID_TABLE:
                self.lock_and_load([], (), [key])
            else:
                self.lock_and_load([key])
        value = self._cache.get((table, key))
        return None if value is None else float(value)

    def get_counted(self, table: str, key: str) -> Optional[Tuple[float, int]]:
        if (table, key) not in self._cache:
            self.lock_and_load([], [key])
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
    """The two reference tables in a PostgreSQL database."""

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
        auto_whitelist: bool = False,
        message_ids: bool = False,
        wait_for_server: bool = False,
    ) -> None:
        """Connect, look at the tables and make the reference's if missing.

        ``wait_for_server``: a server that does not answer is not an error here
        (``unreachable_at_start`` says why); every use tries again.
        """
        self._psycopg = load_psycopg()
        self.readonly = readonly
        self.timeout = timeout
        milliseconds = int(timeout * 1000)
        self._params = {
            "host": host, "port": port, "dbname": dbname, "user": user, "password": password,
            "connect_timeout": max(1, int(round(timeout))),
            # Keys go into statements as standard SQL literals (see quote).
            "options": f"-c statement_timeout={milliseconds} -c lock_timeout={milliseconds} "
                       f"-c standard_conforming_strings=on",
            "application_name": "courier-greylist",
        }
        self._params = {k: v for k, v in self._params.items() if v is not None}
        self.description = f"PostgreSQL database {dbname} on {host or 'localhost'}:{port or 5432}"
        self._local = threading.local()
        self.entries_after_purge = {}
        self._all: list = []
        self._all_lock = threading.Lock()
        self._wanted = {AUTO_WHITELIST_TABLE: auto_whitelist, MESSAGE_ID_TABLE: message_ids}
        self.tables = TABLES + tuple(table for table, wanted in self._wanted.items() if wanted)
        self._ready = False  # the tables were looked at (and made), on a first connection
        self._ready_lock = threading.Lock()
        self.unreachable_at_start: Optional[str] = None
        try:
            self._make_ready()
        except StoreError as error:
            if not (wait_for_server and isinstance(error, ServerUnreachable)):
                raise StoreOpenError(str(error)) from None
            # The dispatcher starts all the same (an MX may boot before its database
            # host): each message follows on_store_error until the server answers.
            self.unreachable_at_start = str(error)

    def _make_ready(self) -> None:
        """On the first connection: which tables there are, and the reference's made if missing."""
        if self._ready:
            return
        with self._ready_lock:
            if self._ready:
                return
            try:
                conn = self._connection()
                self.tables = TABLES + tuple(
                    table for table, wanted in self._wanted.items()
                    if wanted or conn.execute("SELECT to_regclass(%s)", (table.lower(),)).fetchone()[0])
                if not self.readonly:
                    self._create_tables(conn)
            except self._psycopg.Error as error:
                raise StoreError(f"cannot use {self.description}: {' '.join(str(error).split())}") from None
            self._ready = True

    # connections

    def _connect(self, autocommit: bool = False):
        try:
            return self._psycopg.connect(autocommit=autocommit, **self._params)
        except self._psycopg.OperationalError as error:
            raise ServerUnreachable(f"cannot connect to {self.description}: "
                                     f"{' '.join(str(error).split())}") from None
        except self._psycopg.Error as error:
            raise StoreError(f"cannot connect to {self.description}: "
                             f"{' '.join(str(error).split())}") from None

    def _connection(self):
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.broken:
            conn = self._connect(autocommit=True)  # transactions are ours: BEGIN ... COMMIT
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    def _forget(self, conn) -> None:
        if getattr(self._local, "conn", None) is conn:
            self._local.conn = None
        try:
            conn.close()
        except self._psycopg.Error:
            pass

    def _create_tables(self, conn) -> None:
        """The reference's tables if missing, and an index for the purge (built live)."""
        for table in self.tables:
            extra = ", passes INTEGER NOT NULL DEFAULT 0" if table == AUTO_WHITELIST_TABLE else ""
            try:
                conn.execute(f"CREATE TABLE IF NOT EXISTS {table} "
                             f"(id CHAR(64) NOT NULL, value BIGINT NOT NULL{extra}, PRIMARY KEY(id))")
            except self._psycopg.errors.UniqueViolation:
                pass  # another host created it at this very moment
        admin = self._connect(autocommit=True)
        try:
            for table in self.tables:
                index = f"{table.lower()}_value_idx"
                exists = admin.execute(
                    "SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                    "WHERE c.relname = %s AND i.indisvalid", (index,)).fetchone()
                if not exists:
                    admin.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {index}")  # a failed earlier build
                    admin.execute(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {index} ON {table} (value)")
        except self._psycopg.Error:
            pass  # another host builds it right now; the purge works without it, only slower
        finally:
            admin.close()

    def missing_tables(self) -> list:
        """The tables this store uses that the database does not have (yet)."""
        try:
            conn = self._connection()
            return [table for table in self.tables
                    if conn.execute("SELECT to_regclass(%s)", (table.lower(),)).fetchone()[0] is None]
        except self._psycopg.Error as error:
            raise StoreError(f"cannot use {self.description}: {' '.join(str(error).split())}") from None

    # the Store interface

    def transaction(self) -> _PgTransaction:
        if self.readonly:
            raise StoreError(f"{self.description} is open read-only")
        self._make_ready()
        return _PgTransaction(self)

    def purge(
        self,
        table: str,
        older_than: float,
        progress: Optional[Callable[[int], None]] = None,
    ) -> int:
        if self.readonly:
            raise StoreError(f"{self.description} is open read-only; cannot purge")
        self._make_ready()
        conn = self._connect(autocommit=True)
        removed = 0
        held = False
        try:
            held = conn.execute("SELECT pg_try_advisory_lock(%s)", (_PURGE_LOCK,)).fetchone()[0]
            if not held:
                return 0  # another host is purging
            while True:
                cursor = conn.execute(
                    f"DELETE FROM {table} WHERE ctid = ANY(ARRAY("
                    f"SELECT ctid FROM {table} WHERE value < %s LIMIT {_PURGE_BATCH}))",
                    (int(older_than),))
                removed += cursor.rowcount
                if progress is not None:
                    progress(removed)
                if cursor.rowcount < _PURGE_BATCH:
                    # One scan per purge (hours apart), on the purge's own connection.
                    self.entries_after_purge[table] = conn.execute(
                        f"SELECT count(*) FROM {table}").fetchone()[0]
                    return removed
        except self._psycopg.Error as error:
            raise StoreError(f"purge of {table}: {error}".strip()) from error
        finally:
            # Released here, not by closing: the server drops a closed session's
            # locks a moment later, and the next table's purge would find it held.
            if held and not conn.broken:
                with contextlib.suppress(self._psycopg.Error):
                    conn.execute("SELECT pg_advisory_unlock(%s)", (_PURGE_LOCK,))
            conn.close()

    def items(self, table: str) -> Iterator[Tuple[str, Optional[float]]]:
        conn = self._connect()
        try:
            with conn.cursor(name="greylist_items") as cursor:
                cursor.execute(f"SELECT rtrim(id), value FROM {table}")
                for key, value in cursor:
                    yield key, float(value)
        except self._psycopg.Error as error:
            raise StoreError(f"reading {table}: {error}".strip()) from error
        finally:
            conn.close()

    def counted_items(self, table: str) -> Iterator[Tuple[str, float, int]]:
        conn = self._connect()
        try:
            with conn.cursor(name="greylist_counted_items") as cursor:
                cursor.execute(f"SELECT rtrim(id), value, passes FROM {table}")
                for key, value, passes in cursor:
                    yield key, float(value), int(passes)
        except self._psycopg.Error as error:
            raise StoreError(f"reading {table}: {error}".strip()) from error
        finally:
            conn.close()

    def close(self) -> None:
        with self._all_lock:
            connections, self._all = self._all, []
        for conn in connections:
            try:
                conn.close()
            except self._psycopg.Error:
                pass
