"""What every store is: the interface (a transaction per message), its errors, the stored values' forms.

Stores know nothing of greylisting rules.

A store holds named tables that map a key (a triplet digest) to a Unix time.
All reads and writes for one message happen inside one ``transaction()``,
which excludes every other thread and process using the same store.
"""

from __future__ import annotations

import abc
import math
from contextlib import AbstractContextManager
from typing import Callable, Dict, Iterable, Iterator, Mapping, Optional, Sequence, Tuple

from ..errors import GreylistError
from ..tables import (  # noqa: F401  (the stores' own vocabulary, imported from here too)
    ALL_TABLES,
    AUTO_WHITELIST_TABLE,
    COUNTED_TABLES,
    DOMAINS_TABLE,
    GREYTRAPS_TABLE,
    MESSAGE_ID_TABLE,
    NOT_PASSED_TABLE,
    OPTIONAL_TABLES,
    PASSED_TABLE,
    REPLIES_TABLE,
    SENDERS_TABLE,
    TABLES,
)

# [ttldb] type values meaning PostgreSQL: the reference's driver names, and ours.
POSTGRES_TYPES = ("psycopg2", "pg", "postgresql")


class StoreError(GreylistError):
    """A store operation failed; the message names the store and the cause."""


class StoreOpenError(StoreError):
    """A store could not be opened (missing directory, permissions, corrupt file)."""


def parse_timestamp(raw: Optional[bytes]) -> Optional[float]:
    """A stored value as a Unix time, or None when absent or not a number.

    The reference writes integer text, the original module float text; both
    are read.  Anything else is treated as absent so that one bad value can
    never stop greylisting (the purge then drops it).
    """
    if raw is None:
        return None
    try:
        value = float(raw)
    except (TypeError, ValueError):
        try:  # a counted value, "time count" (the auto-whitelist table)
            value = float(raw.split()[0])
        except (TypeError, ValueError, IndexError, AttributeError):
            return None
    return value if math.isfinite(value) else None


def format_timestamp(timestamp: int) -> bytes:
    """Stored form of a time: integer text, as the reference writes it."""
    return b"%d" % timestamp  # (int() of a float, as %d takes it)


def parse_counted(raw: Optional[bytes]) -> Optional[Tuple[float, int]]:
    """A counted value, ``b"<time> <count>"``, or None when absent or unreadable."""
    timestamp = parse_timestamp(raw)
    if timestamp is None:
        return None
    parts = raw.split()
    try:
        count = int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        return None
    return timestamp, max(count, 0)


def format_counted(timestamp: int, count: int) -> bytes:
    """Stored form of a counted value: the time first, so that purges read it as one."""
    return f"{int(timestamp)} {int(count)}".encode("ascii")


class Transaction(abc.ABC):
    """Reads and writes of one message, atomic with respect to other users."""

    # Seconds this transaction waited for other users' locks (set by the store).
    waited: float = 0.0

    def lock_and_load(self, keys: Sequence[str],  # noqa: B027
                      more: Mapping[str, Sequence[str]] = {}) -> None:  # noqa: B006 (never changed)
        """Announce the keys this transaction will use, before any get.

        ``keys`` are triplets' (of both TABLES); ``more`` names the keys of
        other tables (of the counted ones for ``get_counted``).

        A store that locks per key (PostgreSQL) locks them all here, in an
        order that cannot deadlock, and reads them in one go.
        """

    @abc.abstractmethod
    def get(self, table: str, key: str) -> Optional[float]:
        """The time stored under key, or None."""

    def triplet_states(self, keys: Iterable[str]) -> Dict[str, Tuple[Optional[float], Optional[float]]]:
        """Each triplet key's times in the two TABLES: (not passed, passed)."""
        return {key: (self.get(NOT_PASSED_TABLE, key), self.get(PASSED_TABLE, key)) for key in keys}

    @abc.abstractmethod
    def set(self, table: str, key: str, timestamp: int) -> None:
        """Store a time under key."""

    @abc.abstractmethod
    def delete(self, table: str, key: str) -> None:
        """Forget key (no error if absent)."""

    def get_counted(self, table: str, key: str) -> Optional[Tuple[float, int]]:
        """(time, count) stored under key in a counted table, or None."""
        raise StoreError(f"{table} holds no counted values")

    def set_counted(self, table: str, key: str, timestamp: int, count: int) -> None:
        """Store a time and a count under key in a counted table."""
        raise StoreError(f"{table} holds no counted values")

    def write(self, writes: Iterable) -> None:
        """Apply a decision's writes: each ``(table, key, timestamp or None to delete, count)``."""
        for table, key, timestamp, count in writes:
            if count is not None:
                self.set_counted(table, key, timestamp, count)
            elif timestamp is None:
                self.delete(table, key)
            else:
                self.set(table, key, timestamp)


class Store(abc.ABC):
    """A place for the greylisting tables."""

    description: str = "store"
    # The tables this store has open: TABLES, and those of OPTIONAL_TABLES in use.
    tables: Tuple[str, ...] = TABLES
    # True when deciding is CPU work in this process (dbm): the filter then lets
    # messages take turns.  A network store wants its round trips to overlap.
    decisions_take_turns: bool = True
    # Entries per table as the last purge of this process left them.
    entries_after_purge: Dict[str, int]

    @abc.abstractmethod
    def transaction(self) -> AbstractContextManager:
        """A context manager yielding a Transaction, exclusive across processes."""

    def prefetch(self, tables: Sequence[str], keys: Sequence[str]) -> None:  # noqa: B027
        """Before a transaction: look up in ``tables`` what can be looked up without the lock.

        Only a hint; the transaction's reads return the same either way.
        """

    @abc.abstractmethod
    def purge(
        self,
        table: str,
        older_than: float,
        progress: Optional[Callable[[int], None]] = None,
    ) -> int:
        """Delete entries stored before ``older_than``, a little at a time.

        Never holds the store's lock for more than a few milliseconds at
        once, so mail keeps flowing.  Returns how many entries went.
        """

    @abc.abstractmethod
    def items(self, table: str) -> Iterator[Tuple[str, Optional[float]]]:
        """Every (key, time) of a table, for the admin commands."""

    def counted_items(self, table: str) -> Iterator[Tuple[str, float, int]]:
        """Every (key, time, count) of a counted table."""
        raise StoreError(f"{table} holds no counted values")

    def wants_compaction(self) -> bool:
        """True when changes have piled up that ``compact()`` would fold away (cheap to ask)."""
        return False

    def compact(self) -> None:  # noqa: B027 (nothing to tidy unless a store says so)
        """Tidy the files now (fold journals, compact indexes); a no-op by default."""

    def claim_purge(self, now: float, interval: float) -> bool:
        """True when this caller should purge now (at most once per interval)."""
        return True

    @abc.abstractmethod
    def close(self) -> None:
        """Release files and connections; leaves the store tidy on disk."""


