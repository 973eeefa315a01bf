"""The dbm store: the reference's two files in one directory, under one lock.

How a message's transaction reads and writes (``DbmTransaction``, transaction.py):

1. ``enter``: take the lock (``lock.py``); if the lock file's generation
   moved, another process wrote: each table reads what it appended (and,
   when the fold count moved, whether its file was replaced).  What a writer
   that died mid-write left is read the same way: a torn journal block or
   index line is cut, a value is whole or not written (one ``pwrite``).
2. ``get``/``set``/``delete`` on the tables; the first write of the hold
   bumps the generation.
3. ``leave``: a hold that wrote makes each table's changes durable (gdbm:
   one journal write; dbm.dumb: its value and index writes), in the order of
   TABLES, so that a message that passes is in greylist_Passed before it
   leaves greylist_NotPassed; then lets go of the lock.  Until then the
   changes wait in memory: a transaction that fails before (an error in
   the message's decision, say) leaves nothing behind.  When a table fails,
   the changes not yet written are forgotten, and the message gets the
   store-failure reply.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from typing import Callable, Iterator, Optional, Sequence, Tuple

from ..base import (
    OPTIONAL_TABLES,
    TABLES,
    Store,
    StoreError,
    StoreOpenError,
    parse_counted,
    parse_timestamp,
)
from .dumb_table import DumbTable
from .files import flavour_of
from .gdbm_table import GdbmTable, gdbm_module
from .lock import LOCK_NAME, StoreLock
from .purge import KeyList
from .tables import GenericTable, Table
from .transaction import DbmTransaction

_BATCH = 256  # keys a purge removes per hold of the lock (well under a millisecond)
_FOLD_AFTER = 100_000  # journal entries (about 15 MB of overlay) that call for a fold before the purge
_CLOSE_WAITS = 30.0  # seconds close() waits for a running purge or fold to stop


def preferred_flavour() -> str:
    """The flavour stdlib dbm.open(path, 'c') creates on this interpreter."""
    if gdbm_module() is not None:
        return "dbm.gnu"
    try:
        import dbm.ndbm  # noqa: F401
    except ImportError:
        return "dbm.dumb"
    return "dbm.ndbm"


class DbmStore(Store):
    """The two reference dbm files in one directory, under one lock."""

    def __init__(self, directory: str, readonly: bool = False, flavour: Optional[str] = None,
                 tables: Sequence[str] = ()) -> None:
        """Open (creating if needed) the store in ``directory``.

        ``flavour`` chooses the dbm flavour of files that do not exist yet;
        by default it is the one stdlib ``dbm.open`` would create.  Our
        tables (OPTIONAL_TABLES) are opened when ``tables`` names them or
        when their files exist already (so the admin commands see them).
        """
        self.directory = directory
        self.readonly = readonly
        self._new_flavour = flavour or preferred_flavour()
        try:
            mode = os.stat(directory).st_mode
        except FileNotFoundError:
            raise StoreOpenError(f"store directory {directory} does not exist "
                                 f"(create it, owned by Courier's mail user)") from None
        except OSError as error:
            raise StoreOpenError(f"cannot reach store directory {directory}: {error.strerror} "
                                 f"(uid {os.geteuid()})") from None
        if not stat.S_ISDIR(mode):
            raise StoreOpenError(f"store directory {directory} is not a directory")
        if not readonly and not os.access(directory, os.W_OK | os.X_OK):
            raise StoreOpenError(f"store directory {directory} is not writable "
                                 f"by uid {os.geteuid()}")
        self._tables: dict = {}
        self.entries_after_purge = {}
        try:
            self.tables = TABLES + tuple(
                name for name in OPTIONAL_TABLES
                if name in tables or flavour_of(os.path.join(directory, name)))
        except OSError as error:
            raise StoreOpenError(f"cannot open store in {directory}: {error}") from None
        # The lock's generation and fold count as this process last saw them.
        self._generation = -1
        self._folds = -1
        self._wrote = False
        # Set when a hold may have replaced an open gdbm file: its old
        # descriptor is then closed after the lock is let go.
        self._files_replaced = False
        # Whether another process (or a fold) wrote since our previous hold: only
        # then is a second process likely to wait for this one, and worth a prefetch.
        self._others_write = True
        self.fold_on_close = True
        # Purges, compactions and folds take turns, and close() waits for them.
        self._maintenance = threading.Lock()
        self.closing = threading.Event()
        self._lock = StoreLock(os.path.join(directory, LOCK_NAME), readonly)
        try:
            # A large dbm.dumb index is read before taking the lock, so that a
            # second process starting up does not hold up the mail of the first.
            for name in self.tables:
                base = os.path.join(directory, name)
                if flavour_of(base) == "dbm.dumb":
                    self._tables[name] = DumbTable(base, readonly, locked=False)
            with self._lock.held():
                for name in self.tables:
                    if name in self._tables:
                        self._tables[name].refresh()  # what was written meanwhile; a torn line
                    else:
                        self._tables[name] = self._open_table(os.path.join(directory, name))
                self._generation, self._folds = self._lock.generation, self._lock.folds
            self._tables = {name: self._tables[name] for name in self.tables}  # TABLES' order
        except OSError as error:
            self._close_files()
            raise StoreOpenError(f"cannot open store in {directory}: {error}") from None
        except StoreOpenError:
            self._close_files()
            raise
        self._opened_per_hold = [t for t in self._tables.values() if isinstance(t, GenericTable)]
        # One transaction object serves every message: a hold excludes every other, so what
        # it keeps (the wait) is always its holder's.  Made per message, it cost more than its work.
        self._transaction = DbmTransaction(self, self._tables)
        flavours = sorted({table.flavour for table in self._tables.values()})
        self.description = f"{'/'.join(flavours)} in {directory}"

    def _open_table(self, base: str) -> Table:
        flavour = flavour_of(base)
        if flavour is None:
            if self.readonly:
                raise StoreOpenError(f"no store at {base}")
            flavour = self._new_flavour
        if flavour == "":
            raise StoreOpenError(f"{base} is not a dbm file this Python can read")
        if flavour == "dbm.gnu":
            if gdbm_module() is None:
                raise StoreOpenError(f"{base} is a gdbm file, but this Python has no dbm.gnu "
                                     f"(install python3-gdbm)")
            return GdbmTable(base, self.readonly)
        if flavour == "dbm.dumb":
            return DumbTable(base, self.readonly)
        return GenericTable(base, self.readonly, flavour)

    # holding the lock

    def enter(self) -> float:
        """Take the lock and make every table current (another process may have written).

        Every write bumps the generation, and every fold also the fold count
        (a file was replaced): an unchanged generation means nothing to read.
        Returns the seconds it waited for the lock.
        """
        lock = self._lock
        waited = lock.acquire()
        try:
            generation, folds = lock.generation, lock.folds
            self._others_write = generation != self._generation
            if self._others_write:
                self._files_replaced = True
                for table in self._tables.values():
                    table.refresh(folds != self._folds)
                self._generation, self._folds = generation, folds
            self._wrote = False
            for table in self._opened_per_hold:
                table.begin()
        except BaseException:
            lock.release()
            raise
        return waited

    def leave(self, failed: bool = False) -> None:
        # This runs for every message: only a hold that wrote has changes to
        # flush (every write goes through note_write first).
        try:
            if self._wrote and not failed:
                self._end_tables()
            elif self._wrote:
                for table in self._tables.values():
                    table.discard()
            else:
                for table in self._opened_per_hold:
                    table.end()
        finally:
            self._lock.release()
        if self._files_replaced:
            self._files_replaced = False
            for table in self._tables.values():
                table.close_retired()

    def _end_tables(self) -> None:
        """Each table's changes made durable, in TABLES' order; on a failure the rest are dropped."""
        tables = self._tables.values()
        try:
            for table in tables:
                table.end()
        except BaseException:
            for table in tables:
                table.discard()  # nothing left to drop in those that ended
            raise

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the lock with every table current (for purges and compactions)."""
        self.enter()
        self._files_replaced = True  # a fold replaces files under this hold
        try:
            yield
        finally:
            self.leave()

    def count_fold(self) -> None:
        """A file was replaced (under the lock): other processes must look at theirs."""
        self._lock.count_fold()
        self._folds = self._lock.folds

    def note_write(self) -> None:
        """Called before the first write of a lock hold: tell other processes."""
        if not self._wrote:
            self._wrote = True
            self._generation = self._lock.begin_write()

    # the Store interface

    def transaction(self) -> DbmTransaction:
        return self._transaction

    def prefetch(self, tables: Sequence[str], keys: Sequence[str]) -> None:
        # Alone on the store, the lookups cost the same under the lock, and nobody waits for it.
        if not self._others_write:
            return
        encoded = [key.encode("latin-1") for key in keys]
        for table in tables:
            opened = self._tables.get(table)
            if opened is not None:
                opened.prefetch(encoded)

    def claim_purge(self, now: float, interval: float) -> bool:
        if self.readonly:
            return False
        with self._lock.held():
            last_purge = self._lock.last_purged
            if last_purge <= now < last_purge + interval:
                return False
            self._lock.set_last_purge(now)
            return True

    def purge(self, table: str, older_than: float,
              progress: Optional[Callable[[int], None]] = None) -> int:
        if self.readonly:
            raise StoreError(f"store in {self.directory} is open read-only; cannot purge")
        examined: list = [None]  # the last count the walk reported: every entry it saw

        def report(count: int) -> None:
            examined[0] = count
            if progress is not None:
                progress(count)

        try:
            with self._maintenance:
                if self.closing.is_set():
                    return 0
                opened = self._tables[table]
                if isinstance(opened, GdbmTable):  # a new file without the expired entries
                    removed = opened.fold(self, older_than=older_than, progress=report)
                else:
                    examined[0] = 0  # an empty table reports nothing
                    removed = self._remove_expired(table, older_than, report)
                    opened.compact(self)
                if examined[0] is not None and not self.closing.is_set():
                    self.entries_after_purge[table] = max(0, examined[0] - removed)
                return removed
        except OSError as error:  # gdbm's errors are OSErrors too
            raise StoreError(f"purge of {table} in {self.directory}: {error}") from error

    def _remove_expired(self, table: str, older_than: float,
                        progress: Optional[Callable[[int], None]]) -> int:
        """First find the expired keys, then delete them in batches, letting mail in between
        (a walk should not run into its own deletions); each is checked again when deleted."""
        def expired(raw: bytes) -> bool:
            stamp = parse_timestamp(raw)
            return stamp is None or stamp < older_than

        candidates = KeyList()
        examined = removed = 0
        for rows in self._walk(table):
            for key, raw in rows:
                if raw is not None and expired(raw):
                    candidates.append(key)
            examined += len(rows)
            if progress is not None:
                progress(examined)
        for chunk in candidates.chunks(_BATCH):
            if self.closing.is_set():
                break
            with self.locked():
                db = self._tables[table]
                for key in chunk:
                    raw = db.get(key)
                    if raw is not None and expired(raw):  # still, after the walk
                        self.note_write()
                        db.delete(key)
                        removed += 1
            self._lock.let_others_in()
        return removed

    def _walk(self, table: str) -> Iterator[list]:
        """Every (key, raw value) of a table, a batch per hold of the lock."""
        with self.locked():
            next_keys = self._tables[table].scanner()
        while not self.closing.is_set():
            with self.locked():
                db = self._tables[table]
                batch = next_keys()
                if batch is None:
                    return
                rows = [(key, db.get(key)) for key in batch]
            yield rows
            self._lock.let_others_in()

    def items(self, table: str) -> Iterator[Tuple[str, Optional[float]]]:
        for rows in self._walk(table):
            for key, raw in rows:
                if raw is not None:
                    yield key.decode("latin-1"), parse_timestamp(raw)

    def counted_items(self, table: str) -> Iterator[Tuple[str, float, int]]:
        for rows in self._walk(table):
            for key, raw in rows:
                counted = parse_counted(raw)
                if counted is not None:
                    yield key.decode("latin-1"), counted[0], counted[1]

    def wants_compaction(self) -> bool:
        """True when a gdbm journal holds so many changes that its overlay costs real memory."""
        return any(table.pending > _FOLD_AFTER for table in self._tables.values())

    def compact(self) -> None:
        """Tidy the files now (gdbm: fold the journals; dbm.dumb: drop deleted keys from the index)."""
        if self.readonly:
            return
        try:
            with self._maintenance:
                for table in self._tables.values():
                    table.compact(self)
        except OSError as error:  # gdbm's errors are OSErrors too
            raise StoreError(f"tidying the store in {self.directory}: {error}") from error

    def close(self) -> None:
        """Stop a running purge or fold (waiting for it, bounded), tidy the files, close them.

        Tidying folds the gdbm journals into their files (what the reference
        and stdlib readers see) and compacts dbm.dumb indexes, unless
        ``fold_on_close`` is off: one-shot commands turn it off, since on a
        large store it takes seconds and the filter's next purge does it anyway.
        Raises StoreError when the tidying fails (the files are closed all the same).
        """
        self.closing.set()
        stopped = self._maintenance.acquire(timeout=_CLOSE_WAITS)
        try:
            if stopped and self._tables and not self.readonly and self.fold_on_close:
                self.closing.clear()  # this fold is the one that must run to its end
                try:
                    for table in self._tables.values():
                        table.compact(self)
                except OSError as error:  # gdbm's errors are OSErrors too
                    raise StoreError(f"tidying the store in {self.directory} at close: {error}") from error
                finally:
                    self.closing.set()
        finally:
            if stopped:
                self._maintenance.release()
            self._close_files()

    def _close_files(self) -> None:
        for table in self._tables.values():
            with contextlib.suppress(Exception):
                table.close()
        self._tables.clear()  # (in place: the transaction object reads this mapping)
        self._lock.close()

