"""upkeep.py: the TTL purge, once per interval among all processes on the store; its failures."""

from __future__ import annotations

import errno

import pytest
from helpers import Clock

from greylist.metrics import Counts
from greylist.settings import Settings
from greylist.stores import MESSAGE_ID_TABLE, NOT_PASSED_TABLE, PASSED_TABLE, StoreError
from greylist.stores.dbm import DbmStore
from greylist.upkeep import Upkeep

HOUR = 3600


@pytest.fixture
def store(tmp_path):
    opened = DbmStore(str(tmp_path), tables=(MESSAGE_ID_TABLE,))
    yield opened
    opened.close()


def _upkeep(store, lines, mode="inline", counts=None, **settings) -> Upkeep:
    return Upkeep(Settings(db_dir=store.directory, **settings), store, lines.append, mode, counts)


def test_each_table_is_purged_with_its_own_time_to_live(store):
    now = Clock()()
    with store.transaction() as tx:
        for table in (NOT_PASSED_TABLE, PASSED_TABLE, MESSAGE_ID_TABLE):
            tx.set(table, "fresh", int(now - 2 * HOUR))
            tx.set(table, "day-old", int(now - 25 * HOUR))
            tx.set(table, "month-old", int(now - 37 * 24 * HOUR))
    removed = _upkeep(store, []).purge(now)
    assert removed == 5
    assert dict(store.items(PASSED_TABLE)).keys() == {"fresh", "day-old"}  # 36 days
    assert dict(store.items(NOT_PASSED_TABLE)).keys() == {"fresh"}  # 1 day
    assert dict(store.items(MESSAGE_ID_TABLE)).keys() == {"fresh"}  # a pending message's


def test_one_purge_per_interval_among_every_process_on_the_store(store, tmp_path):
    purges: list = []
    other = DbmStore(str(tmp_path))  # another dispatcher on the same files
    try:
        ours, theirs = _upkeep(store, []), _upkeep(other, [])
        for opened in (store, other):
            purge = opened.purge
            opened.purge = lambda table, older_than, progress=None, purge=purge: \
                purges.append(table) or purge(table, older_than, progress)
        clock = Clock()
        for _ in range(10):  # a message every minute, alternating
            ours.maybe_start(clock())
            theirs.maybe_start(clock())
            clock.advance(60)
        assert len(purges) == len(store.tables)  # one purge of each table, by one of the two
        clock.advance(2 * HOUR)
        theirs.maybe_start(clock())
        ours.maybe_start(clock())
        assert len(purges) == 2 * len(store.tables)
        clock.advance(-3 * HOUR)  # the clock stepped back: the next message may purge again
        ours.maybe_start(clock())
        assert len(purges) == 3 * len(store.tables)
    finally:
        other.close()


def test_a_failed_purge_is_one_line_counted_and_tried_again_next_interval(store):
    lines: list = []
    counts = Counts()

    def full_disk(table, older_than, progress=None):
        raise StoreError(f"purge of {table}: [Errno 28] No space left on device")

    store.purge = full_disk
    upkeep = _upkeep(store, lines, counts=counts)
    clock = Clock()
    upkeep.maybe_start(clock())
    assert len(lines) == 1 and lines[0].startswith("greylist: purge failed: ") and "No space left" in lines[0]
    assert counts.purges["failed"] == 1
    clock.advance(60)
    upkeep.maybe_start(clock())
    assert len(lines) == 1  # not retried for every message
    clock.advance(2 * HOUR)
    upkeep.maybe_start(clock())
    assert len(lines) == 2 and counts.purges["failed"] == 2


def test_a_purge_not_started_is_one_line(store):
    lines: list = []

    def lock_gone(now, interval):
        raise OSError(errno.EIO, "Input/output error")

    store.claim_purge = lock_gone
    _upkeep(store, lines).maybe_start(Clock()())
    assert len(lines) == 1 and lines[0].startswith("greylist: purge not started: ")


def test_never_means_never(store):
    purged: list = []
    store.purge = lambda *args, **kwargs: purged.append(args)
    _upkeep(store, [], mode="never").maybe_start(Clock()())
    assert purged == []
