"""A message's reads and writes on the dbm store, holding its lock (see store.py for the steps)."""

from __future__ import annotations

from typing import Dict, Iterable, Mapping, Optional, Tuple

from ..base import (
    NOT_PASSED_TABLE,
    PASSED_TABLE,
    StoreError,
    Transaction,
    format_counted,
    format_timestamp,
    parse_counted,
    parse_timestamp,
)
from .hold import Hold
from .tables import Table


class DbmTransaction(Transaction):
    """One message's reads and writes; a context manager holding the store lock."""

    __slots__ = ("_hold", "_tables", "waited")

    def __init__(self, hold: Hold, tables: Mapping[str, Table]) -> None:
        self._hold = hold
        self._tables = tables
        self.waited = 0.0

    def __enter__(self) -> DbmTransaction:
        try:
            self.waited = self._hold.enter()
        except OSError as error:
            raise StoreError(f"store in {self._hold.directory}: {error}") from error
        return self

    def __exit__(self, kind, error, traceback) -> None:
        try:
            self._hold.leave(failed=error is not None)
        except OSError as exit_error:
            if error is None:
                raise StoreError(f"store in {self._hold.directory}: {exit_error}") from exit_error
        if isinstance(error, OSError):
            raise StoreError(f"store in {self._hold.directory}: {error}") from error

    def get(self, table: str, key: str) -> Optional[float]:
        return parse_timestamp(self._tables[table].get(key.encode("latin-1")))

    def triplet_states(self, keys: Iterable[str]) -> Dict[str, Tuple[Optional[float], Optional[float]]]:
        # Every message reads these: one loop, without a call per table and key.
        not_passed, passed = self._tables[NOT_PASSED_TABLE], self._tables[PASSED_TABLE]
        states = {}
        for key in keys:
            raw = key.encode("latin-1")
            states[key] = (parse_timestamp(not_passed.get(raw)), parse_timestamp(passed.get(raw)))
        return states

    def set(self, table: str, key: str, timestamp: int) -> None:
        self._hold.note_write()
        self._tables[table].set(key.encode("latin-1"), format_timestamp(timestamp))

    def delete(self, table: str, key: str) -> None:
        self._hold.note_write()
        self._tables[table].delete(key.encode("latin-1"))

    def write(self, writes: Iterable) -> None:
        # Every message that passes or waits writes: the generic loop, without a call per write.
        if not writes:
            return
        self._hold.note_write()
        tables = self._tables
        for table, key, timestamp, count in writes:
            raw_key = key.encode("latin-1")
            if count is not None:
                tables[table].set(raw_key, format_counted(timestamp, count))
            elif timestamp is None:
                tables[table].delete(raw_key)
            else:
                tables[table].set(raw_key, format_timestamp(timestamp))

    def get_counted(self, table: str, key: str) -> Optional[Tuple[float, int]]:
        return parse_counted(self._tables[table].get(key.encode("latin-1")))

    def set_counted(self, table: str, key: str, timestamp: int, count: int) -> None:
        self._hold.note_write()
        self._tables[table].set(key.encode("latin-1"), format_counted(timestamp, count))
