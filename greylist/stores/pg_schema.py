"""The PostgreSQL tables: which exist, and the reference's made when missing.

The reference's tables (courier-pythonfilter's ``ttldb`` SQL store) are
``id CHAR(64) PRIMARY KEY, value BIGINT``; ours add a ``passes`` column to
the counted tables (COUNTED_TABLES).  Each statement is its own round trip, bounded in
time: a table or index that another host makes at the same moment is no error.
"""

from __future__ import annotations

from typing import Dict, Sequence

from .base import COUNTED_TABLES
from .pg_wire import ALREADY_MADE, RoundTripError, quote, round_trip, value


def existing(conn, tables: Sequence[str], timeout: float) -> Dict[str, bool]:
    """Which of ``tables`` the database has, in one round trip."""
    probes = ", ".join(f"to_regclass({quote(table.lower())}) IS NOT NULL" for table in tables)
    result = round_trip(conn, f"SELECT {probes}", timeout)[0]
    return {table: value(result, 0, column) == "t" for column, table in enumerate(tables)}


def create_tables(conn, tables: Sequence[str], timeout: float) -> None:
    """The tables if missing."""
    for table in tables:
        extra = ", passes INTEGER NOT NULL DEFAULT 0" if table in COUNTED_TABLES else ""
        _tolerating_others(conn, f"CREATE TABLE IF NOT EXISTS {table} "
                                 f"(id CHAR(64) NOT NULL, value BIGINT NOT NULL{extra}, PRIMARY KEY(id))",
                           timeout)


def create_indexes(conn, tables: Sequence[str], timeout: float) -> None:
    """An index on ``value`` for the purge, built without blocking writers.

    One a failed build left invalid is dropped and built again.  A build
    that does not finish in time leaves an invalid index for the next start
    (the purge works without it, only slower).
    """
    for table in tables:
        index = f"{table.lower()}_value_idx"
        valid = round_trip(conn, "SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                                 f"WHERE c.relname = {quote(index)} AND i.indisvalid", timeout)[0]
        if valid.ntuples:
            continue
        _tolerating_others(conn, f"DROP INDEX CONCURRENTLY IF EXISTS {index}", timeout)
        _tolerating_others(conn, f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {index} ON {table} (value)",
                           timeout)


def _tolerating_others(conn, statement: str, timeout: float) -> None:
    try:
        round_trip(conn, statement, timeout)
    except RoundTripError as error:
        if error.sqlstate not in ALREADY_MADE:
            raise
