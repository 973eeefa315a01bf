"""The dbm store on real files: format, compatibility, locking, crash safety."""

from __future__ import annotations

import dbm
import os
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import zlib

import pytest
from helpers import DBM_FLAVOURS, needs_gdbm, replay_total, stdlib_contents, write_control
from hypothesis import given
from hypothesis import strategies as st

from greylist.stores import NOT_PASSED_TABLE, PASSED_TABLE, StoreError, StoreOpenError
from greylist.stores.dbm import LOCK_NAME, DbmStore, journal
from greylist.stores.dbm.dumb_table import DumbTable
from greylist.stores.dbm.gdbm_table import GdbmTable

WORKERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "workers.py")


@pytest.fixture(params=DBM_FLAVOURS)
def flavour(request):
    return request.param


def test_roundtrip_and_stdlib_readable(tmp_path, flavour):
    store = DbmStore(str(tmp_path), flavour=flavour)
    with store.transaction() as tx:
        tx.set(NOT_PASSED_TABLE, "a" * 32, 1_790_000_000)
        tx.set(NOT_PASSED_TABLE, "b" * 32, 1_790_000_001)
        tx.set(PASSED_TABLE, "c" * 32, 1_790_000_002)
    with store.transaction() as tx:
        tx.delete(NOT_PASSED_TABLE, "a" * 32)
        tx.set(PASSED_TABLE, "a" * 32, 1_790_000_003)
        tx.set(PASSED_TABLE, "c" * 32, 1_790_000_004)
        tx.delete(PASSED_TABLE, "missing")
        assert tx.get(NOT_PASSED_TABLE, "a" * 32) is None
        assert tx.get(PASSED_TABLE, "c" * 32) == 1_790_000_004
    store.close()
    assert dbm.whichdb(str(tmp_path / NOT_PASSED_TABLE)) == flavour
    assert stdlib_contents(str(tmp_path), NOT_PASSED_TABLE) == {"b" * 32: "1790000001"}
    assert stdlib_contents(str(tmp_path), PASSED_TABLE) == {"a" * 32: "1790000003", "c" * 32: "1790000004"}


def test_reads_float_text_and_skips_garbage(tmp_path, flavour):
    DbmStore(str(tmp_path), flavour=flavour).close()
    with dbm.open(str(tmp_path / PASSED_TABLE), "w") as db:
        db[b"f" * 32] = b"1790000000.75"
        db[b"g" * 32] = b"not a number"
    store = DbmStore(str(tmp_path))
    with store.transaction() as tx:
        assert tx.get(PASSED_TABLE, "f" * 32) == 1790000000.75
        assert tx.get(PASSED_TABLE, "g" * 32) is None
        tx.set(PASSED_TABLE, "f" * 32, 1790000001)
    assert store.purge(PASSED_TABLE, older_than=0) == 1  # the garbage goes
    store.close()
    assert stdlib_contents(str(tmp_path), PASSED_TABLE) == {"f" * 32: "1790000001"}


def test_purge_removes_old_entries_only(tmp_path, flavour):
    store = DbmStore(str(tmp_path), flavour=flavour)
    with store.transaction() as tx:
        for n in range(1000):
            tx.set(NOT_PASSED_TABLE, f"{n:032x}", 1_000 + n)
    progress = []
    assert store.purge(NOT_PASSED_TABLE, older_than=1_500, progress=progress.append) == 500
    assert progress[-1] == 1000
    with store.transaction() as tx:
        assert tx.get(NOT_PASSED_TABLE, f"{499:032x}") is None
        assert tx.get(NOT_PASSED_TABLE, f"{500:032x}") == 1500
    store.close()
    assert len(stdlib_contents(str(tmp_path), NOT_PASSED_TABLE)) == 500


def test_dumb_delete_does_not_rewrite_index_until_compaction(tmp_path):
    store = DbmStore(str(tmp_path), flavour="dbm.dumb")
    directory = tmp_path / (NOT_PASSED_TABLE + ".dir")
    with store.transaction() as tx:
        for n in range(100):
            tx.set(NOT_PASSED_TABLE, f"{n:032x}", 1_790_000_000)
    inode = directory.stat().st_ino
    with store.transaction() as tx:
        tx.delete(NOT_PASSED_TABLE, f"{5:032x}")
    assert directory.stat().st_ino == inode
    store.compact()
    assert directory.stat().st_ino != inode
    assert len(directory.read_text().splitlines()) == 99
    with store.transaction() as tx:  # the freed block is used again
        tx.set(NOT_PASSED_TABLE, "z" * 32, 1_790_000_001)
    size = (tmp_path / (NOT_PASSED_TABLE + ".dat")).stat().st_size
    assert size == 99 * 512 + 10
    store.close()


def test_dumb_tolerates_a_torn_index_line(tmp_path):
    store = DbmStore(str(tmp_path), flavour="dbm.dumb")
    with store.transaction() as tx:
        tx.set(PASSED_TABLE, "a" * 32, 1_790_000_000)
    store.close()
    with open(tmp_path / (PASSED_TABLE + ".dir"), "ab") as handle:
        handle.write(b"'bbbb', (51")  # a line cut short
    store = DbmStore(str(tmp_path))
    with store.transaction() as tx:
        assert tx.get(PASSED_TABLE, "a" * 32) == 1_790_000_000
        tx.set(PASSED_TABLE, "c" * 32, 1_790_000_001)
    store.close()
    assert set(stdlib_contents(str(tmp_path), PASSED_TABLE)) == {"a" * 32, "c" * 32}


def test_two_handles_see_each_others_writes(tmp_path, flavour):
    first = DbmStore(str(tmp_path), flavour=flavour)
    second = DbmStore(str(tmp_path))
    for n in range(50):
        writer, reader = (first, second) if n % 2 else (second, first)
        with writer.transaction() as tx:
            tx.set(NOT_PASSED_TABLE, f"{n:032x}", 1_790_000_000 + n)
            if n:
                tx.delete(NOT_PASSED_TABLE, f"{n - 1:032x}")
        with reader.transaction() as tx:
            assert tx.get(NOT_PASSED_TABLE, f"{n:032x}") == 1_790_000_000 + n
            assert tx.get(NOT_PASSED_TABLE, f"{n - 1:032x}") is None
    first.compact()
    with second.transaction() as tx:
        assert tx.get(NOT_PASSED_TABLE, f"{49:032x}") == 1_790_000_049
    first.close()
    second.close()


def test_files_are_private_and_lock_symlink_refused(tmp_path, flavour):
    DbmStore(str(tmp_path), flavour=flavour).close()
    for name in os.listdir(tmp_path):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o600, name
    other = tmp_path / "other"
    other.mkdir()
    os.symlink(tmp_path / "elsewhere", other / LOCK_NAME)
    with pytest.raises(StoreOpenError, match="symbolic link"):
        DbmStore(str(other), flavour=flavour)
    assert not (tmp_path / "elsewhere").exists()


def test_missing_directory(tmp_path):
    with pytest.raises(StoreOpenError, match=f"{tmp_path}/nope does not exist"):
        DbmStore(str(tmp_path / "nope"))


def test_unwritable_directory(tmp_path):
    """Root writes anywhere, so as root the store is opened in a forked child that became nobody."""
    if os.geteuid() != 0:
        tmp_path.chmod(0o500)
        with pytest.raises(StoreOpenError, match=f"not writable by uid {os.geteuid()}"):
            DbmStore(str(tmp_path))
    else:
        store_dir = tempfile.mkdtemp(prefix="greylist-unwritable-")  # reachable by nobody
        try:
            os.chmod(store_dir, 0o755)
            assert _as_nobody(lambda: DbmStore(store_dir)) == \
                f"StoreOpenError: store directory {store_dir} is not writable by uid 65534"
            assert os.listdir(store_dir) == []
        finally:
            shutil.rmtree(store_dir)


def _as_nobody(action) -> str:
    """Run ``action`` in a forked child as uid/gid 65534; what it raised, as 'Type: message'."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            action()
            outcome = "no exception"
        except BaseException as error:
            outcome = f"{type(error).__name__}: {error}"
        os.write(write_end, outcome.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        outcome = pipe.read().decode()
    os.waitpid(pid, 0)
    return outcome


def test_corrupt_file_gives_clear_error(tmp_path):
    (tmp_path / PASSED_TABLE).write_bytes(b"\x13\x57\x9a\xce" + b"\0" * 100)
    with pytest.raises(StoreOpenError, match=PASSED_TABLE):
        DbmStore(str(tmp_path))


def test_failed_operation_releases_the_lock(tmp_path, flavour, monkeypatch):
    store = DbmStore(str(tmp_path), flavour=flavour)

    def fail(table, key, value):
        raise OSError(28, "No space left on device")

    table_class = {"dbm.dumb": DumbTable, "dbm.gnu": GdbmTable}[flavour]
    monkeypatch.setattr(table_class, "set", fail)
    with pytest.raises(StoreError, match="No space left"):
        with store.transaction() as tx:
            tx.set(PASSED_TABLE, "a" * 32, 1)
    monkeypatch.undo()
    done = threading.Event()

    def other_thread():
        with store.transaction() as tx:
            tx.set(PASSED_TABLE, "a" * 32, 2)
        done.set()

    threading.Thread(target=other_thread, daemon=True).start()
    assert done.wait(10), "lock leaked"
    # And another process can take it too.
    other = DbmStore(str(tmp_path))
    with other.transaction() as tx:
        assert tx.get(PASSED_TABLE, "a" * 32) == 2
    other.close()
    store.close()


def test_readonly_store_does_not_write(tmp_path, flavour):
    store = DbmStore(str(tmp_path), flavour=flavour)
    with store.transaction() as tx:
        tx.set(PASSED_TABLE, "a" * 32, 5)
    store.close()
    before = {name: os.stat(tmp_path / name).st_mtime_ns for name in os.listdir(tmp_path)}
    reader = DbmStore(str(tmp_path), readonly=True)
    assert dict(reader.items(PASSED_TABLE)) == {"a" * 32: 5}
    with pytest.raises(StoreError, match="read-only"):
        reader.purge(PASSED_TABLE, 10)
    reader.close()
    after = {name: os.stat(tmp_path / name).st_mtime_ns for name in os.listdir(tmp_path)}
    assert before == after


def test_processes_and_threads_greylist_each_triplet_exactly_once(tmp_path, flavour):
    """3 processes x 4 threads decide the same 600 triplets at the same moments: 600 greylistings."""
    controls = tmp_path / "controls"
    controls.mkdir()
    paths = [
        write_control(str(controls / f"C{n}"), f"sender{n % 17}@example.com",
                      [f"rcpt{n}@example.net"], f"198.51.{n % 5}.{n % 250}")
        for n in range(600)
    ]
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    DbmStore(str(store_dir), flavour=flavour).close()
    procs = [
        subprocess.Popen([sys.executable, WORKERS, "replay", str(store_dir), flavour, "4", *paths],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    total = replay_total(procs)
    assert total == 600
    with dbm.open(str(store_dir / PASSED_TABLE), "r") as passed:
        assert len(passed) == 600
    with dbm.open(str(store_dir / NOT_PASSED_TABLE), "r") as not_passed:
        assert len(not_passed) == 0


@pytest.mark.parametrize("round_count", [int(os.environ.get("GREYLIST_CRASH_ROUNDS", "12"))])
def test_sigkill_loses_nothing_committed(tmp_path, flavour, round_count):
    """Kill a writer mid-run again and again; every acknowledged change survives."""
    import random

    rng = random.Random(7)
    expected: dict = {}  # key -> table it must be in
    for round_number in range(round_count):
        proc = subprocess.Popen([sys.executable, WORKERS, "crash_writer", str(tmp_path), flavour,
                                 str(round_number)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        target = rng.randrange(50, 600)
        acknowledged = 0
        while acknowledged < target:
            line = proc.stdout.readline()
            if not line:
                assert line, proc.stderr.read().decode()
            kind, key = line.decode().split()
            expected[key] = PASSED_TABLE if kind == "P" else NOT_PASSED_TABLE
            acknowledged += 1
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for line in proc.stdout.read().decode().splitlines():  # acknowledged before the kill landed
            kind, key = line.split()
            expected[key] = PASSED_TABLE if kind == "P" else NOT_PASSED_TABLE
        proc.stdout.close()
        proc.stderr.close()
        # Our store opens, noticing a writer that died mid-write and repairing what it damaged.
        store = DbmStore(str(tmp_path))
        with store.transaction() as tx:
            lost = [key for key, table in expected.items() if tx.get(table, key) is None]
            # The change in flight when the kill landed may have committed unacknowledged:
            # a pending key already moved to passed.
            advanced = [key for key in lost if expected[key] == NOT_PASSED_TABLE
                        and tx.get(PASSED_TABLE, key) is not None]
            ghosts = [key for key, table in expected.items() if table == PASSED_TABLE
                      and tx.get(NOT_PASSED_TABLE, key) is not None]
        store.close()
        # Then the stdlib (and so the reference) can open and read both files, which
        # hold everything (closing folded the gdbm journals into them).
        with dbm.open(str(tmp_path / PASSED_TABLE), "r") as passed, \
                dbm.open(str(tmp_path / NOT_PASSED_TABLE), "r") as not_passed:
            on_disk = {key.decode(): PASSED_TABLE for key in passed.keys()}
            on_disk.update({key.decode(): NOT_PASSED_TABLE for key in not_passed.keys()
                            if not_passed[key] != b"0" * len(not_passed[key])})
        assert len(advanced) <= 1
        for key in advanced:
            lost.remove(key)
            expected[key] = PASSED_TABLE
        assert lost == [] and ghosts == [], f"round {round_number}: lost {len(lost)}, ghosts {len(ghosts)}"
        assert all(on_disk.get(key) == table for key, table in expected.items()), round_number
    assert len(expected) > 1000


def test_nested_use_in_one_thread_fails_instead_of_deadlocking(tmp_path):
    store = DbmStore(str(tmp_path))
    with store.transaction():
        with pytest.raises(StoreError, match="already holds"):
            list(store.items(PASSED_TABLE))
    with store.transaction() as tx:  # and the lock is free again
        tx.set(PASSED_TABLE, "a" * 32, 1)
    store.close()


@needs_gdbm
@pytest.mark.parametrize("in_process", [True, False])
def test_gdbm_file_is_never_written_in_place(tmp_path, monkeypatch, in_process):
    """Changes go to the journal; the gdbm file is replaced whole by a fold (purge, close)."""
    if not in_process:  # as for a large file: the copy runs in a child process
        monkeypatch.setattr("greylist.stores.dbm.fold_copy.IN_PROCESS_BELOW", 0)
    store = DbmStore(str(tmp_path), flavour="dbm.gnu")
    with store.transaction() as tx:
        for n in range(100):
            tx.set(NOT_PASSED_TABLE, f"{n:032x}", 1_000 + n)
    base = tmp_path / NOT_PASSED_TABLE
    journal = tmp_path / (NOT_PASSED_TABLE + ".journal")
    inode = os.stat(base).st_ino
    assert journal.stat().st_size > 100 * 32
    assert stdlib_contents(str(tmp_path), NOT_PASSED_TABLE) == {}  # not folded yet
    # a writer killed in the middle of its write leaves a torn block: cut, never used
    with open(journal, "ab") as handle:
        handle.write(b"\xff\x00\x00\x00garbage")
    other = DbmStore(str(tmp_path))
    with other.transaction() as tx:
        assert tx.get(NOT_PASSED_TABLE, f"{99:032x}") == 1_099
        tx.set(PASSED_TABLE, "p" * 32, 5_000)
    assert b"garbage" not in journal.read_bytes()
    other.close()  # folds: the file is replaced, the journal emptied
    assert os.stat(base).st_ino != inode and journal.stat().st_size == 0
    assert len(stdlib_contents(str(tmp_path), NOT_PASSED_TABLE)) == 100
    with store.transaction() as tx:  # the first handle notices the new file
        assert tx.get(NOT_PASSED_TABLE, f"{5:032x}") == 1_005
        assert tx.get(PASSED_TABLE, "p" * 32) == 5_000
    assert store.purge(NOT_PASSED_TABLE, older_than=1_050) == 50
    assert len(stdlib_contents(str(tmp_path), NOT_PASSED_TABLE)) == 50  # a purge folds too
    assert sorted(k for k, _ in store.items(PASSED_TABLE)) == ["p" * 32]
    store.close()


@needs_gdbm
@pytest.mark.parametrize("in_process", [True, False])
def test_a_fold_keeps_what_mail_wrote_while_it_copied(tmp_path, monkeypatch, in_process):
    """Changes made during the copy are caught up outside the lock, the last few under it."""
    from greylist.stores.dbm import fold_copy

    if not in_process:
        monkeypatch.setattr(fold_copy, "IN_PROCESS_BELOW", 0)
    folding = DbmStore(str(tmp_path), flavour="dbm.gnu")
    mail = DbmStore(str(tmp_path))  # another process's view of the store, in effect
    with folding.transaction() as tx:
        for n in range(500):
            tx.set(PASSED_TABLE, f"old{n:029x}", 1_790_000_000 + n)
    written = [f"old{n:029x}" for n in range(500)]

    def mail_writes(count):
        with mail.transaction() as tx:
            for _ in range(count):
                key = f"new{len(written):029x}"
                tx.set(PASSED_TABLE, key, 1_790_100_000 + len(written))
                written.append(key)

    # 200 changes during the copy (11 KB of journal: a round outside the lock),
    # 100 during that round (5.6 KB: another), 20 during the second (1 KB:
    # left for the lock, applied there without a sync of its own).
    during = iter([200, 100, 20])
    applied = []
    build, apply = fold_copy.Copier.build, fold_copy.Copier.apply

    def build_and_write(self, *args):
        result = build(self, *args)
        mail_writes(next(during))
        return result

    def apply_and_write(self, start, end, last=False):
        applied.append(last)
        apply(self, start, end, last)
        if not last:
            mail_writes(next(during, 0))

    monkeypatch.setattr(fold_copy.Copier, "build", build_and_write)
    monkeypatch.setattr(fold_copy.Copier, "apply", apply_and_write)
    assert folding.purge(PASSED_TABLE, older_than=0) == 0
    assert applied == [False, False, True]
    assert (tmp_path / (PASSED_TABLE + ".journal")).stat().st_size == 0
    assert sorted(stdlib_contents(str(tmp_path), PASSED_TABLE)) == sorted(written)  # all in the new file
    with mail.transaction() as tx:
        assert all(tx.get(PASSED_TABLE, key) is not None for key in written)
    mail.close()
    folding.close()


@needs_gdbm
def test_gdbm_fold_without_a_child_process(tmp_path, monkeypatch):
    """Where no interpreter can be started (embedded Python), the copy runs in this process."""
    store = DbmStore(str(tmp_path), flavour="dbm.gnu")
    with store.transaction() as tx:
        for n in range(10):
            tx.set(NOT_PASSED_TABLE, f"{n:032x}", 1_000 + n)
    monkeypatch.setattr(sys, "executable", "")
    progress: list = []
    assert store.purge(NOT_PASSED_TABLE, older_than=1_005, progress=progress.append) == 5
    assert progress and len(stdlib_contents(str(tmp_path), NOT_PASSED_TABLE)) == 5
    assert not [name for name in os.listdir(tmp_path) if ".fold." in name]
    store.close()


@needs_gdbm
def test_a_busy_journal_is_folded_before_the_purge_is_due(tmp_path, monkeypatch):
    """Between two purges a busy server folds when the journal's overlay grows large."""
    from helpers import Clock

    from greylist.filter import GreylistFilter
    from greylist.settings import Settings

    monkeypatch.setattr("greylist.stores.dbm.store._FOLD_AFTER", 5)
    store = DbmStore(str(tmp_path), flavour="dbm.gnu")
    greylist = GreylistFilter(Settings(db_dir=str(tmp_path)), store, clock=Clock(), log=print,
                              purge="inline")
    assert store.claim_purge(greylist.clock(), greylist.settings.senders_purge_interval)  # none due now
    for n in range(12):
        greylist.do_filter("", [write_control(str(tmp_path / f"C{n}"), f"s{n}@example.com")])
        greylist.clock.advance(61)  # the store is asked at most once a minute
    assert len(stdlib_contents(str(tmp_path), NOT_PASSED_TABLE)) >= 6  # folded into the gdbm file
    with open(tmp_path / (NOT_PASSED_TABLE + journal.SUFFIX), "rb") as left:
        in_the_journal: dict = {}
        journal.decode_blocks(left.read(), in_the_journal)
    assert len(in_the_journal) <= 6  # the journal was emptied on the way
    store.close()


@given(blocks=st.lists(st.lists(st.tuples(st.binary(min_size=1, max_size=64),
                                          st.one_of(st.none(), st.binary(max_size=20))),
                                min_size=1, max_size=5), min_size=1, max_size=6),
       cut=st.integers(min_value=0), zeros=st.integers(min_value=0, max_value=600))
def test_journal_keeps_every_whole_block_and_cuts_a_torn_tail(blocks, cut, zeros):
    """Cut the journal anywhere (a write torn by a kill), add zeros (what a power loss leaves):
    exactly the whole blocks before the cut count, and the rest is a tail to cut.

    "Whole" byte for byte: when the zeros happen to complete the block that was
    cut (a block ending in zero bytes), that block is the one that was
    written, and it counts.
    """
    encoded = [journal.encode_block(changes) for changes in blocks]
    data = b"".join(encoded)
    cut %= len(data) + 1
    torn = data[:cut] + b"\x00" * zeros
    expected: dict = {}
    offset = 0
    for changes, block in zip(blocks, encoded):
        if torn[offset:offset + len(block)] != block:
            break
        expected.update(changes)
        offset += len(block)
    found: dict = {}
    assert journal.decode_blocks(torn, found) == (offset, [])
    assert found == expected
    whole_before_cut = 0
    for block in encoded:
        if whole_before_cut + len(block) > cut:
            break
        whole_before_cut += len(block)
    assert offset >= whole_before_cut  # every block written whole counts


def test_journal_damage_in_the_middle_is_skipped_and_reported_never_cut():
    blocks = [journal.encode_block([(f"k{n}".encode(), b"%d" % n)]) for n in range(4)]
    damaged = bytearray(b"".join(blocks))
    damaged[len(blocks[0]) + 9] ^= 0xFF  # a flipped bit in the second block's payload
    found: dict = {}
    decoded = journal.decode_blocks(bytes(damaged), found)
    assert decoded.used == len(damaged)
    assert decoded.damaged == [journal.Damage(len(blocks[0]), len(blocks[1]))]
    assert found == {b"k0": b"0", b"k2": b"2", b"k3": b"3"}
    # A valid checksum over contents that are not entries is damage too, not an exception.
    payload = b"\xff\xff\x05\x00\x00\x00x"
    bogus = struct.pack("<II", len(payload), zlib.crc32(payload)) + payload
    found = {}
    assert journal.decode_blocks(blocks[0] + bogus + blocks[3], found).damaged == \
        [journal.Damage(len(blocks[0]), len(bogus))]
    assert found == {b"k0": b"0", b"k3": b"3"}
    # Damage that leaves the rest unreadable: nothing after it can be told from a torn tail.
    with pytest.raises(journal.JournalDamaged):
        journal.decode_blocks(bytes(damaged[: len(blocks[0]) + len(blocks[1]) + 5]) + b"junk", {})


@needs_gdbm
def test_gdbm_prefetch_outside_the_lock_never_answers_for_a_replaced_file(tmp_path):
    writer = DbmStore(str(tmp_path), flavour="dbm.gnu")
    reader = DbmStore(str(tmp_path), flavour="dbm.gnu")  # another process, as far as the files go
    with writer.transaction() as t:
        t.set(PASSED_TABLE, "k", 1_000)
        t.set(PASSED_TABLE, "old", 10)
    # Only in the journal: the file says nothing, the overlay read under the lock does.
    reader.prefetch([PASSED_TABLE], ["k"])
    with reader.transaction() as t:
        assert t.get(PASSED_TABLE, "k") == 1_000
    # The writer folds: a new file holds k, the journal is emptied.  What the
    # reader then looks up in its old file before taking the lock (k absent)
    # must not be believed once the lock shows it the new file.
    writer.purge(PASSED_TABLE, older_than=500)
    reader.prefetch([PASSED_TABLE], ["k", "old"])
    with reader.transaction() as t:
        assert t.get(PASSED_TABLE, "k") == 1_000
        assert t.get(PASSED_TABLE, "old") is None
    # Prefetched from the current file, the answer is the file's, and the
    # journal still goes first.
    with writer.transaction() as t:
        t.set(PASSED_TABLE, "k", 2_000)
    reader.prefetch([PASSED_TABLE], ["k"])
    with reader.transaction() as t:
        assert t.get(PASSED_TABLE, "k") == 2_000
    writer.close()
    reader.close()


def test_one_purge_per_interval_among_all_processes(tmp_path, flavour):
    """Handles (processes) on one store claim the purge in turn: one of them per interval."""
    first = DbmStore(str(tmp_path), flavour=flavour)
    second = DbmStore(str(tmp_path))
    now = 1_790_000_000.0
    assert first.claim_purge(now, 7200)
    assert not second.claim_purge(now + 1, 7200)
    assert not first.claim_purge(now + 7199, 7200)
    assert second.claim_purge(now + 7200, 7200)
    assert not first.claim_purge(now + 7201, 7200)
    assert first.claim_purge(now - 60, 7200)  # the clock was stepped back: claim afresh
    first.close()
    second.close()


def _expired_entries(store, count):
    keys = [f"{n:032x}" for n in range(count)]
    with store.transaction() as tx:
        for key in keys:
            tx.set(PASSED_TABLE, key, 1_000)
    store.compact()  # in the files themselves (gdbm: out of the journal)
    return keys


def test_a_purge_waits_while_another_process_holds_the_lock(tmp_path, flavour):
    """Before it starts and between two of its steps, a purge waits for another holder of the lock."""
    store = DbmStore(str(tmp_path), flavour=flavour)
    keys = _expired_entries(store, 20_000)  # gdbm reports progress every 16,384 entries copied
    holder = DbmStore(str(tmp_path))
    progress, removed = [], []
    hold_now, held, let_go = threading.Event(), threading.Event(), threading.Event()

    def hold():
        hold_now.wait()
        with holder.transaction() as tx:
            held.set()
            let_go.wait(60)
            assert all(tx.get(PASSED_TABLE, key) == 1_000 for key in keys)  # nothing removed meanwhile

    def report(examined):
        progress.append(examined)
        if len(progress) == 1:  # the purge is under way: another process takes the lock now
            hold_now.set()
            assert held.wait(60)

    holding = threading.Thread(target=hold)
    purger = threading.Thread(target=lambda: removed.append(
        store.purge(PASSED_TABLE, older_than=2_000, progress=report)))
    with holder.transaction():
        purger.start()
        purger.join(0.5)
        assert purger.is_alive() and progress == []  # not even started
    holding.start()
    assert held.wait(60)
    purger.join(0.5)
    assert purger.is_alive() and len(progress) == 1  # no step further while the lock is held
    let_go.set()
    holding.join(60)
    purger.join(60)
    assert list(holder.items(PASSED_TABLE)) == []
    holder.close()
    store.close()


def test_a_purge_keeps_entries_that_mail_refreshed_while_it_ran(tmp_path, flavour):
    """Refreshed after the purge saw them expired: the purge must look again before it removes."""
    store = DbmStore(str(tmp_path), flavour=flavour)
    keys = _expired_entries(store, 20_000)  # gdbm reports progress every 16,384 entries copied
    mail = DbmStore(str(tmp_path))
    refreshed = []

    def mail_refreshes(examined):
        if not refreshed:
            with mail.transaction() as tx:
                for key in keys:
                    tx.set(PASSED_TABLE, key, 5_000)
            refreshed.append(examined)

    store.purge(PASSED_TABLE, older_than=2_000, progress=mail_refreshes)
    assert refreshed and refreshed[0] < len(keys)  # mail came while the purge was under way
    assert dict(mail.items(PASSED_TABLE)) == dict.fromkeys(keys, 5_000)
    mail.close()
    store.close()
    assert stdlib_contents(str(tmp_path), PASSED_TABLE) == dict.fromkeys(keys, "5000")


def test_dumb_key_deleted_and_written_again_during_a_compaction_is_kept(tmp_path, monkeypatch):
    """The compaction drops deleted keys from a snapshot; one written again meanwhile stays."""
    store = DbmStore(str(tmp_path), flavour="dbm.dumb")
    mail = DbmStore(str(tmp_path))
    keys = [f"{n:032x}" for n in range(600)]
    with store.transaction() as tx:
        for key in keys:
            tx.set(PASSED_TABLE, key, 1_790_000_000)
    with store.transaction() as tx:
        for key in keys[:300]:
            tx.delete(PASSED_TABLE, key)
    holds = []
    locked = store.locked

    def mail_between_the_holds():
        holds.append(len(holds))
        if len(holds) == 2:  # after the compaction's snapshot, before its switch
            with mail.transaction() as tx:
                for key in keys[:300]:
                    tx.set(PASSED_TABLE, key, 1_790_000_001)
        return locked()

    monkeypatch.setattr(store, "locked", mail_between_the_holds)
    store.compact()
    assert len(holds) >= 2
    expected = {key: 1_790_000_000 for key in keys[300:]} | dict.fromkeys(keys[:300], 1_790_000_001)
    assert dict(mail.items(PASSED_TABLE)) == expected
    mail.close()
    store.close()
    assert stdlib_contents(str(tmp_path), PASSED_TABLE) == {k: str(v) for k, v in expected.items()}
