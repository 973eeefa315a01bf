"""What every store promises, through the Store interface only: dbm.dumb, gdbm and PostgreSQL.

Written against behaviour (what a transaction reads, what a purge leaves), so
that the stores can be rebuilt inside without touching these tests.
"""

from __future__ import annotations

import pytest
from helpers import DBM_FLAVOURS, KEY, second_waits_for_first
from pgserver import write_pg_config

from greylist.settings import load_settings
from greylist.stores import NOT_PASSED_TABLE, PASSED_TABLE, open_store
from greylist.stores.dbm import DbmStore


@pytest.fixture(params=[*DBM_FLAVOURS, "postgresql"])
def open_one(request, tmp_path):
    """A function opening one more handle on the same store (another process's, in effect)."""
    opened = []
    if request.param == "postgresql":
        config = write_pg_config(tmp_path / "m.conf", request.getfixturevalue("conninfo"))

        def opener():
            opened.append(open_store(load_settings([config])))
            return opened[-1]
    else:
        def opener():
            opened.append(DbmStore(str(tmp_path), flavour=request.param))
            return opened[-1]
    yield opener
    for store in opened:
        store.close()


def test_threads_of_one_handle_exclude_each_other(open_one):
    store = open_one()
    second_waits_for_first(store, store)
    with store.transaction() as tx:
        tx.lock_and_load([KEY])
        assert tx.get(NOT_PASSED_TABLE, KEY) == 2


def test_two_handles_exclude_each_other(open_one):
    """Two handles are what two processes (two dispatchers, the command line) have."""
    first, second = open_one(), open_one()
    second_waits_for_first(first, second)
    second_waits_for_first(second, first)
    with first.transaction() as tx:
        tx.lock_and_load([KEY])
        assert tx.get(NOT_PASSED_TABLE, KEY) == 4


def test_purge_keeps_an_entry_exactly_at_the_limit(open_one):
    """As the reference: an entry goes when it is older than the limit, not when it is as old."""
    store = open_one()
    with store.transaction() as tx:
        keys = [f"{n:032x}" for n in range(3)]
        tx.lock_and_load(keys)
        for n, key in enumerate(keys):
            tx.set(PASSED_TABLE, key, 1_790_000_000 - 1 + n)
    assert store.purge(PASSED_TABLE, older_than=1_790_000_000) == 1
    assert sorted(key for key, _ in open_one().items(PASSED_TABLE)) == keys[1:]


def test_a_transaction_that_fails_after_a_write_leaves_nothing_behind(open_one):
    """The decision fails after its writes were made (a bug, anything): neither this handle
    nor another sees any of them."""
    store = open_one()
    with store.transaction() as tx:
        tx.lock_and_load([KEY])
        tx.set(NOT_PASSED_TABLE, KEY, 1_790_000_000)
    with pytest.raises(RuntimeError):
        with store.transaction() as tx:
            tx.lock_and_load([KEY])
            tx.set(PASSED_TABLE, KEY, 1_790_000_300)
            tx.delete(NOT_PASSED_TABLE, KEY)
            tx.set(PASSED_TABLE, "f" * 32, 1_790_000_300)
            raise RuntimeError("the decision failed")
    for handle in (store, open_one()):
        with handle.transaction() as tx:
            tx.lock_and_load([KEY, "f" * 32])
            assert tx.get(PASSED_TABLE, KEY) is None and tx.get(PASSED_TABLE, "f" * 32) is None
            assert tx.get(NOT_PASSED_TABLE, KEY) == 1_790_000_000
        assert list(handle.items(PASSED_TABLE)) == []
