"""Copying triplets between stores: export, import, migrate (dbm <-> PostgreSQL).

The interchange format is JSON lines, one entry a line:
``{"table": "greylist_Passed", "digest": "<md5 hex>", "timestamp": 1790000000}``;
entries of the counted tables also carry a ``count`` (the auto-whitelist's:
how many triplets of the network, its ``digest``, passed; the domains': how
many distinct senders).
"""

from __future__ import annotations

import json
from typing import Callable, Iterable, Iterator, Optional, TextIO, Tuple

from .errors import GreylistError
from .stores import (
    ALL_TABLES,
    COUNTED_TABLES,
    NOT_PASSED_TABLE,
    PASSED_TABLE,
    Store,
)

_BATCH = 500  # entries written per transaction: short lock holds, few round trips

Progress = Optional[Callable[[str, int], None]]
Row = Tuple[str, str, int, Optional[int]]  # table, key, timestamp, count (counted tables only)


class TransferError(GreylistError):
    """A line of an import that is not an entry; the message says which.

    ``written``: how many entries, all of those before it, were stored.
    """

    written = 0


def entries(store: Store) -> Iterator[Row]:
    """Every (table, key, timestamp, count) of a store; values that are not times are left out."""
    for table in store.tables:
        if table in COUNTED_TABLES:
            for key, timestamp, count in store.counted_items(table):
                yield table, key, int(timestamp), count
            continue
        for key, timestamp in store.items(table):
            if timestamp is not None:
                yield table, key, int(timestamp), None


def _merge(tx, table: str, key: str, timestamp: int, passes: Optional[int]) -> None:
    """One entry into a store that may know the key already: the newer state wins.

    A passed triplet beats a pending one (whichever store it comes from);
    otherwise the later time wins, and a counted record keeps the larger
    count.  So a copy run twice changes nothing the second time, and an old
    copy never sends a triplet back to waiting.
    """
    if table in COUNTED_TABLES:
        known = tx.get_counted(table, key)
        if known is None:
            tx.set_counted(table, key, timestamp, passes or 0)
        elif timestamp > known[0] or (passes or 0) > known[1]:
            tx.set_counted(table, key, max(timestamp, int(known[0])), max(passes or 0, known[1]))
        return
    if table == NOT_PASSED_TABLE and tx.get(PASSED_TABLE, key) is not None:
        return  # it passed in the destination already
    known = tx.get(table, key)
    if known is None or timestamp > known:
        tx.set(table, key, timestamp)
    if table == PASSED_TABLE and tx.get(NOT_PASSED_TABLE, key) is not None:
        tx.delete(NOT_PASSED_TABLE, key)


def write_entries(store: Store, rows: Iterable[Row], progress: Progress = None) -> int:
    """Merge the rows into the store (see _merge), a batch per transaction; returns how many."""
    count = 0
    batch: list = []

    def flush() -> None:
        triplets = [key for table, key, _, _ in batch if table in (PASSED_TABLE, NOT_PASSED_TABLE)]
        more: dict = {}
        for table, key, _, _ in batch:
            if table not in (PASSED_TABLE, NOT_PASSED_TABLE):
                more.setdefault(table, []).append(key)
        with store.transaction() as tx:
            tx.lock_and_load(triplets, more)
            for table, key, timestamp, passes in batch:
                _merge(tx, table, key, timestamp, passes)
        batch.clear()

    try:
        for row in rows:
            if row[0] not in store.tables:
                raise TransferError(f"{store.description} has no table {row[0]}")
            batch.append(row)
            count += 1
            if len(batch) >= _BATCH:
                flush()
                if progress:
                    progress(row[0], count)
    except TransferError as error:
        if batch:
            flush()  # what came before the bad line is kept, and said so
        error.written = count
        raise
    if batch:
        flush()
    if progress:
        progress("", count)
    return count


def export_to(store: Store, out: TextIO, progress: Progress = None) -> int:
    count = 0
    for table, key, timestamp, passes in entries(store):
        entry = {"table": table, "digest": key, "timestamp": timestamp}
        if passes is not None:
            entry["count"] = passes
        out.write(json.dumps(entry) + "\n")
        count += 1
        if progress and count % _BATCH == 0:
            progress(table, count)
    if progress:
        progress("", count)
    return count


def parse_lines(lines: Iterable[str]) -> Iterator[Row]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            table, key, timestamp = entry["table"], entry["digest"], entry["timestamp"]
            passes = entry.get("count")
        except (ValueError, KeyError, TypeError, AttributeError):
            raise TransferError(f"line {number}: not an entry of an export") from None
        if table not in ALL_TABLES or not isinstance(key, str) or not 0 < len(key) <= 64 \
                or isinstance(timestamp, bool) or not isinstance(timestamp, (int, float)) \
                or (passes is not None and (isinstance(passes, bool) or not isinstance(passes, int))):
            raise TransferError(f"line {number}: not an entry of an export")
        if table in COUNTED_TABLES and passes is None:
            passes = 0
        yield table, key, int(timestamp), passes


def copy_store(source: Store, destination: Store, progress: Progress = None) -> int:
    """Every entry of ``source`` merged into ``destination`` (the newer state of each key wins)."""
    return write_entries(destination, entries(source), progress)
