"""Stores: where the triplets live.  They know nothing of greylisting rules.

A store holds named tables that map a key (a triplet digest) to a Unix time.
All reads and writes for one message happen inside one ``transaction()``,
which excludes every other thread and process using the same store.  The
interface is in ``base.py``; ``dbm/`` and ``postgres.py`` are the two
stores; ``open_store`` opens the one the settings name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

from ..tables import wanted_tables
from .base import (  # noqa: F401  (the stores' vocabulary, imported from here)
    ALL_TABLES,
    AUTO_WHITELIST_TABLE,
    COUNTED_TABLES,
    DOMAINS_TABLE,
    GREYTRAPS_TABLE,
    MESSAGE_ID_TABLE,
    NOT_PASSED_TABLE,
    OPTIONAL_TABLES,
    PASSED_TABLE,
    POSTGRES_TYPES,
    REPLIES_TABLE,
    SENDERS_TABLE,
    TABLES,
    Store,
    StoreError,
    StoreOpenError,
    Transaction,
    format_counted,
    format_timestamp,
    parse_counted,
    parse_timestamp,
)

if TYPE_CHECKING:
    from ..settings import Settings


def open_store(settings: Settings, readonly: bool = False, wait_for_server: bool = False,
               tables: Optional[Sequence[str]] = None) -> Store:
    """Open the store the settings name.

    ``tables``: the tables of ours to open (made if missing); by default those
    the settings use.  Those that exist already are opened in any case.
    ``wait_for_server`` (the dispatcher): a PostgreSQL server that does not
    answer yet does not stop the start; see PostgresStore.
    """
    if tables is None:
        tables = wanted_tables(settings)
    if settings.db_type == "dbm":
        from .dbm import DbmStore

        return DbmStore(settings.db_dir, readonly=readonly, tables=tables)
    if settings.db_type in POSTGRES_TYPES:
        from .postgres import PostgresStore

        return PostgresStore(settings.db_host, settings.db_port, settings.db_name, settings.db_user,
                             settings.db_password, timeout=settings.db_timeout, readonly=readonly,
                             tables=tables, wait_for_server=wait_for_server,
                             pool_size=settings.db_pool_size)
    raise StoreOpenError(f"store type {settings.db_type!r} is not supported")
