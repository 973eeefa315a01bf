"""Stores: where the triplets live.  They know nothing of greylisting rules.

A store holds named tables that map a key (a triplet digest) to a Unix time.
All reads and writes for one message happen inside one ``transaction()``,
which excludes every other thread and process using the same store.  The
interface is in ``base.py``; ``dbm/`` and ``postgres.py`` are the two
stores; ``open_store`` opens the one the settings name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import (  # noqa: F401  (the stores' vocabulary, imported from here)
    ALL_TABLES,
    AUTO_WHITELIST_TABLE,
    MESSAGE_ID_TABLE,
    NOT_PASSED_TABLE,
    PASSED_TABLE,
    POSTGRES_TYPES,
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


def open_store(settings: Settings, readonly: bool = False, wait_for_server: bool = False) -> Store:
    """Open the store the settings name.

    ``wait_for_server`` (the dispatcher): a PostgreSQL server that does not
    answer yet does not stop the start; see PostgresStore.
    """
    auto_whitelist = settings.auto_whitelist_clients > 0
    message_ids = settings.match_retry_by_message_id
    if settings.db_type == "dbm":
        from .dbm import DbmStore

        return DbmStore(settings.db_dir, readonly=readonly, auto_whitelist=auto_whitelist,
                        message_ids=message_ids)
    if settings.db_type in POSTGRES_TYPES:
        from .postgres import PostgresStore

        return PostgresStore(settings.db_host, settings.db_port, settings.db_name, settings.db_user,
                             settings.db_password, timeout=settings.db_timeout, readonly=readonly,
                             auto_whitelist=auto_whitelist, message_ids=message_ids,
                             wait_for_server=wait_for_server, pool_size=settings.db_pool_size)
    raise StoreOpenError(f"store type {settings.db_type!r} is not supported")
