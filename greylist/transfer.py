"""Copying triplets between stores: export, import, migrate (dbm <-> PostgreSQL).

The interchange format is JSON lines, one entry a line:
``{"store": "greylist_Passed", "digest": "<md5 hex>", "timestamp": 1790000000}``.
"""

from __future__ import annotations

import json
from typing import Callable, Iterable, Iterator, Optional, TextIO, Tuple

from .stores import TABLES, Store

_BATCH = 500  # entries written per transaction: short lock holds, few round trips

Progress = Optional[Callable[[str, int], None]]


class TransferError(Exception):
    """A line of an import that is not an entry; the message says which."""


def entries(store: Store) -> Iterator[Tuple[str, str, int]]:
    """Every (table, digest, timestamp) of a store; values that are not times are left out."""
    for table in TABLES:
        for key, timestamp in store.items(table):
            if timestamp is not None:
                yield table, key, int(timestamp)


def write_entries(store: Store, rows: Iterable[Tuple[str, str, int]], progress: Progress = None) -> int:
    """Store the rows, a batch per transaction; returns how many."""
    count = 0
    batch: list = []

    def flush() -> None:
        with store.transaction() as tx:
            for table, key, timestamp in batch:
                tx.set(table, key, timestamp)
        batch.clear()

    for row in rows:
        batch.append(row)
        count += 1
        if len(batch) >= _BATCH:
            flush()
            if progress:
                progress(row[0], count)
    if batch:
        flush()
    if progress:
        progress("", count)
    return count


def export_to(store: Store, out: TextIO, progress: Progress = None) -> int:
    count = 0
    for table, key, timestamp in entries(store):
        out.write(json.dumps({"store": table, "digest": key, "timestamp": timestamp}) + "\n")
        count += 1
        if progress and count % _BATCH == 0:
            progress(table, count)
    if progress:
        progress("", count)
    return count


def parse_lines(lines: Iterable[str]) -> Iterator[Tuple[str, str, int]]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            table, key, timestamp = entry["store"], entry["digest"], entry["timestamp"]
        except (ValueError, KeyError, TypeError):
            raise TransferError(f"line {number}: not an entry of an export") from None
        if table not in TABLES or not isinstance(key, str) or not 0 < len(key) <= 64 \
                or isinstance(timestamp, bool) or not isinstance(timestamp, (int, float)):
            raise TransferError(f"line {number}: not an entry of an export")
        yield table, key, int(timestamp)


def copy_store(source: Store, destination: Store, progress: Progress = None) -> int:
    """Every entry of ``source`` into ``destination`` (existing entries are overwritten)."""
    return write_entries(destination, entries(source), progress)
