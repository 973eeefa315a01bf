"""gdbm files are read without mmap and through a small cache, or left alone safely."""

from __future__ import annotations

from helpers import needs_gdbm

from greylist.stores import PASSED_TABLE
from greylist.stores.dbm import DbmStore
from greylist.stores.gdbm_memory import CACHE_BUCKETS, cache_buckets, is_mapped, unmap

pytestmark = needs_gdbm


def test_store_reads_its_gdbm_files_unmapped(tmp_path):
    import dbm.gnu

    store = DbmStore(str(tmp_path), flavour="dbm.gnu")
    with store.transaction() as t:
        t.set(PASSED_TABLE, "k", 1_000)
    store.purge(PASSED_TABLE, older_than=500)  # a fold: the file is replaced
    table = store._tables[PASSED_TABLE]
    assert is_mapped(table._db, table.base) is False
    assert cache_buckets(table._db, table.base) == CACHE_BUCKETS
    with store.transaction() as t:
        assert t.get(PASSED_TABLE, "k") == 1_000
    store.close()
    # stdlib's own handle on the same kind of file is mapped: the probe can tell.
    with dbm.gnu.open(str(tmp_path / PASSED_TABLE), "r") as plain:
        assert is_mapped(plain, str(tmp_path / PASSED_TABLE)) is True
        assert plain[b"k"] == b"1000"


def test_a_handle_that_does_not_prove_itself_is_left_alone(tmp_path):
    import dbm.gnu

    path = str(tmp_path / "f")
    with dbm.gnu.open(path, "c") as db:
        db[b"a"] = b"1"
    with dbm.gnu.open(path, "r") as db:
        reason = unmap(db, path + "-another-name")
        assert "stays memory-mapped" in reason and "where expected" in reason
        assert is_mapped(db, path) is True and db[b"a"] == b"1"
    assert "unknown layout" in unmap({}, path)
    closed = dbm.gnu.open(path, "r")
    closed.close()
    assert "closed" in unmap(closed, path)


def test_a_store_whose_handles_cannot_be_proven_says_so_once_and_works(tmp_path, monkeypatch, capsys):
    import greylist.stores.dbm as dbm_store
    import greylist.stores.gdbm_memory as gdbm_memory

    def refuse(db, path):
        raise OSError("unknown layout of _gdbm.gdbm")

    monkeypatch.setattr(gdbm_memory, "_handle", refuse)
    monkeypatch.setattr(dbm_store, "_told_mapped", False)
    store = DbmStore(str(tmp_path), flavour="dbm.gnu")
    with store.transaction() as t:
        t.set(PASSED_TABLE, "k", 1_000)
    store.purge(PASSED_TABLE, older_than=500)  # reopens the files: still one line
    with store.transaction() as t:
        assert t.get(PASSED_TABLE, "k") == 1_000
    store.close()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("greylist: gdbm file ") and "stays memory-mapped (unknown layout" in lines[0]
    assert str(tmp_path) in lines[0]
