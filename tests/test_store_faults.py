"""The dbm store on a bad day: full disks, damaged files, lock file games, stalled children.

Each fault is real where it can be (a small tmpfs filled to the last byte,
files damaged on disk, a child process stopped with SIGSTOP); the filter must
log, choose the safe reply, lose nothing acknowledged and never die by a signal.
"""

from __future__ import annotations

import contextlib
import dbm
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from helpers import DBM_FLAVOURS, Clock, needs_gdbm, second_waits_for_first, stdlib_contents, write_control
from host import greylist_command

from greylist.filter import GreylistFilter
from greylist.metrics import Counts
from greylist.settings import Settings
from greylist.stores import NOT_PASSED_TABLE, PASSED_TABLE, StoreError, StoreOpenError
from greylist.stores.dbm import LOCK_NAME, DbmStore, fold_copy

GREYLIST = "451 4.7.1 Greylisting in action, please come back in "


class SmallDisk:
    """A tmpfs of a few hundred KB that a test fills to the last byte and frees again."""

    def __init__(self, path, size_kb: int) -> None:
        self.path = path
        path.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k,mode=0700", "tmpfs",
                                 str(path)], capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here ({result.stderr.strip()}); CI runs as root")
        self.filler = path / "filler"

    def fill(self, leave: int = 0) -> None:
        """Take every free byte but about ``leave``."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for chunk in (65536, 4096, 512, 1):
                while True:
                    stats = os.statvfs(self.path)
                    if leave and stats.f_bavail * stats.f_frsize <= leave + chunk:
                        break
                    try:
                        os.write(fd, b"\0" * chunk)
                    except OSError:
                        break
        finally:
            os.close(fd)

    def free(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.filler)

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


@pytest.fixture
def small_disk(tmp_path, request):
    """A 512 KB tmpfs (``@pytest.mark.disk_kb(N)``: N KB)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    marker = request.node.get_closest_marker("disk_kb")
    disk = SmallDisk(tmp_path / "disk", marker.args[0] if marker else 512)
    yield disk
    disk.close()


# --- full disks -------------------------------------------------------------------------


@pytest.mark.parametrize("flavour", DBM_FLAVOURS)
def test_a_full_disk_during_a_message_loses_nothing_acknowledged(small_disk, flavour):
    store_dir = small_disk.path / "store"
    store_dir.mkdir()
    lines: list = []
    clock = Clock()
    store = DbmStore(str(store_dir), flavour=flavour)
    counts = Counts(clock=clock)
    greylist = GreylistFilter(Settings(db_dir=str(store_dir)), store, clock=clock, log=lines.append,
                              purge="never", counts=counts)
    controls = small_disk.path.parent
    first = write_control(str(controls / "C1"), "alice@example.com")
    assert greylist.do_filter("", [first]).startswith(GREYLIST)
    clock.advance(301)
    small_disk.fill()
    for n in range(500):  # new senders while the disk is full, until the files' last pages are used up
        reply = greylist.do_filter("", [write_control(str(controls / f"F{n}"), f"full{n}@example.com")])
        assert reply == "" or reply.startswith(GREYLIST)
        if reply == "":
            break
    failures = sum("action=error, reason=store-failure" in line and "No space left" in line
                   for line in lines)
    assert failures and counts.store_errors == {"ENOSPC": failures}  # what the metrics file says
    assert greylist.do_filter("", [first]) == ""  # the retry: it moves to greylist_Passed, or fails
    small_disk.free()
    second = write_control(str(controls / "C2"), "bob@example.com")
    assert greylist.do_filter("", [second]).startswith(GREYLIST)
    store.close()
    # What the store holds, as a restarted dispatcher (or another process) sees it:
    store = DbmStore(str(store_dir))
    greylist = GreylistFilter(Settings(db_dir=str(store_dir)), store, clock=clock, log=lines.append,
                              purge="never")
    assert greylist.do_filter("", [first]) == ""  # neither forgotten nor greylisted again
    assert "action=pass, reason=" in lines[-1] and "reason=new" not in lines[-1]
    store.close()
    assert len(stdlib_contents(store_dir, PASSED_TABLE)) == 1


@pytest.mark.parametrize("flavour", DBM_FLAVOURS)
def test_a_store_first_created_on_a_full_disk_opens_once_space_is_freed(small_disk, flavour):
    store_dir = small_disk.path / "store"
    store_dir.mkdir()
    small_disk.fill()
    with pytest.raises(StoreOpenError) as refused:
        DbmStore(str(store_dir), flavour=flavour)
    assert "\n" not in str(refused.value)
    assert "No space left" in str(refused.value) or "short write" in str(refused.value)
    small_disk.free()
    store = DbmStore(str(store_dir), flavour=flavour)
    with store.transaction() as tx:
        tx.set(PASSED_TABLE, "a" * 32, 1_790_000_000)
    store.close()
    assert stdlib_contents(store_dir, PASSED_TABLE) == {"a" * 32: "1790000000"}


@needs_gdbm
def test_a_gdbm_file_first_created_on_a_nearly_full_disk_leaves_nothing_in_the_way(small_disk):
    store_dir = small_disk.path / "store"
    store_dir.mkdir()
    small_disk.fill(leave=8192)  # room for the lock file, not for a new gdbm file
    with pytest.raises(StoreOpenError, match="cannot create gdbm file"):
        DbmStore(str(store_dir), flavour="dbm.gnu")
    assert sorted(os.listdir(store_dir)) == [LOCK_NAME]
    small_disk.free()
    DbmStore(str(store_dir), flavour="dbm.gnu").close()
    assert dbm.whichdb(str(store_dir / PASSED_TABLE)) == "dbm.gnu"


@needs_gdbm
@pytest.mark.disk_kb(2048)
def test_a_fold_on_a_full_disk_fails_and_keeps_the_file_and_journal(small_disk, monkeypatch):
    store_dir = small_disk.path / "store"
    store_dir.mkdir()
    store = DbmStore(str(store_dir), flavour="dbm.gnu")
    with store.transaction() as tx:
        for n in range(3000):
            tx.set(PASSED_TABLE, f"{n:032x}", 1_000 if n % 2 else 1_790_000_000)
    store.compact()
    with store.transaction() as tx:
        tx.set(PASSED_TABLE, "f" * 32, 1_790_000_001)  # in the journal only
    small_disk.fill()
    for in_process in (True, False):
        monkeypatch.setattr(fold_copy, "IN_PROCESS_BELOW", 1 << 30 if in_process else 0)
        with pytest.raises(StoreError, match="purge of greylist_Passed"):
            store.purge(PASSED_TABLE, older_than=2_000)
        assert not [name for name in os.listdir(store_dir) if ".fold." in name]
    other = DbmStore(str(store_dir))
    assert len(dict(other.items(PASSED_TABLE))) == 3001
    small_disk.free()
    assert store.purge(PASSED_TABLE, older_than=2_000) == 1500
    store.close()
    other.close()
    assert len(stdlib_contents(store_dir, PASSED_TABLE)) == 1501


@pytest.mark.disk_kb(4096)
def test_dumb_compaction_on_a_nearly_full_disk_keeps_a_whole_index(small_disk):
    store_dir = small_disk.path / "store"
    store_dir.mkdir()
    store = DbmStore(str(store_dir), flavour="dbm.dumb")
    with store.transaction() as tx:
        for n in range(2400):  # half of them expired long ago, half written now
            tx.set(PASSED_TABLE, f"{n:032x}", 1_000 if n % 2 else int(time.time()))
    store.close()
    small_disk.fill(leave=8192)
    result = subprocess.run(greylist_command("purge", "--db-dir", str(store_dir)),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "No space left" in result.stderr, result.stderr
    live = {key for key, value in stdlib_contents(store_dir, PASSED_TABLE).items() if value != "0000"}
    assert live == {f"{n:032x}" for n in range(0, 2400, 2)}
    assert not [name for name in os.listdir(store_dir) if ".compact." in name]


def test_dumb_compactions_of_two_processes_at_once_lose_nothing(tmp_path):
    """Each compaction writes a file of its own; a reader meanwhile always sees every entry."""
    writer = DbmStore(str(tmp_path), flavour="dbm.dumb")
    with writer.transaction() as tx:
        for n in range(1800):
            tx.set(PASSED_TABLE, f"{n:032x}", 1_790_000_000)
    script = ("import sys; from greylist.stores.dbm import DbmStore\n"
              f"s = DbmStore({str(tmp_path)!r}); s.fold_on_close = False\n"
              "for _ in range(40): s.compact()\n"
              "s.close()\n")
    compactors = [subprocess.Popen([sys.executable, "-c", script]) for _ in range(2)]
    round_number = 0
    while any(proc.poll() is None for proc in compactors):
        round_number += 1
        with writer.transaction() as tx:  # something for the next compaction to drop
            for n in range(200):
                tx.set(PASSED_TABLE, f"d{round_number:08x}{n:024x}", 1_790_000_000)
        with writer.transaction() as tx:
            for n in range(200):
                tx.delete(PASSED_TABLE, f"d{round_number:08x}{n:024x}")
        assert len(dict(writer.items(PASSED_TABLE))) == 1800, round_number
    assert [proc.wait() for proc in compactors] == [0, 0]
    writer.close()
    assert not [name for name in os.listdir(tmp_path) if ".compact." in name]
    assert len(stdlib_contents(tmp_path, PASSED_TABLE)) == 1800


# --- the lock file ----------------------------------------------------------------------


@pytest.mark.parametrize("flavour", DBM_FLAVOURS)
@pytest.mark.parametrize("fault", ["truncated", "deleted", "replaced"])
def test_a_lock_file_truncated_deleted_or_replaced_keeps_exclusion(tmp_path, flavour, fault):
    first = DbmStore(str(tmp_path), flavour=flavour)
    second = DbmStore(str(tmp_path))
    with first.transaction() as tx:
        tx.set(PASSED_TABLE, "a" * 32, 1_790_000_000)
    lock = tmp_path / LOCK_NAME
    if fault == "truncated":
        os.truncate(lock, 0)
    elif fault == "deleted":
        lock.unlink()
    else:
        (tmp_path / "other").write_bytes(b"")
        os.rename(tmp_path / "other", lock)
    with second.transaction() as tx:  # alive, and sees what the first wrote
        assert tx.get(PASSED_TABLE, "a" * 32) == 1_790_000_000
    second_waits_for_first(first, second, NOT_PASSED_TABLE)
    second_waits_for_first(second, first, NOT_PASSED_TABLE)
    third = DbmStore(str(tmp_path))  # a process started afterwards locks the same file
    second_waits_for_first(third, first, NOT_PASSED_TABLE)
    for store in (first, second, third):
        store.close()


def test_a_hard_linked_or_foreign_lock_file_is_refused(tmp_path):
    DbmStore(str(tmp_path)).close()
    os.link(tmp_path / LOCK_NAME, tmp_path / "elsewhere")
    with pytest.raises(StoreOpenError, match="hard link"):
        DbmStore(str(tmp_path))
    os.unlink(tmp_path / "elsewhere")
    with open(tmp_path / LOCK_NAME, "r+b") as handle:
        handle.seek(4)
        handle.write((99).to_bytes(4, "little"))
    with pytest.raises(StoreOpenError, match="format 99; this build of courier-greylist knows format 1"):
        DbmStore(str(tmp_path))


# --- damaged files ----------------------------------------------------------------------


@needs_gdbm
def test_journal_damage_in_the_middle_is_logged_and_the_rest_kept(tmp_path, capsys):
    store = DbmStore(str(tmp_path), flavour="dbm.gnu")
    for n in range(30):
        with store.transaction() as tx:
            tx.set(PASSED_TABLE, f"{n:032x}", 1_790_000_000 + n)
    store.fold_on_close = False
    store.close()
    journal = tmp_path / (PASSED_TABLE + ".journal")
    data = bytearray(journal.read_bytes())
    block = len(data) // 30
    data[block * 10 + 20] ^= 0xFF  # inside the eleventh block
    journal.write_bytes(bytes(data))
    store = DbmStore(str(tmp_path))
    kept = dict(store.items(PASSED_TABLE))
    assert len(kept) == 29 and f"{10:032x}" not in kept
    err = capsys.readouterr().err
    assert err.count("damaged block at byte") == 1 and "the blocks after it are kept" in err
    store.close()
    assert len(stdlib_contents(tmp_path, PASSED_TABLE)) == 29
    # Damage that leaves the rest unreadable: refused, with the way out, nothing dropped.
    store = DbmStore(str(tmp_path))
    for n in range(5):
        with store.transaction() as tx:
            tx.set(PASSED_TABLE, f"{100 + n:032x}", 1_790_000_000)
    store.fold_on_close = False
    store.close()
    data = bytearray(journal.read_bytes())
    data[len(data) // 5 * 2 + 2] ^= 0x7F  # the third block's length
    journal.write_bytes(bytes(data))
    with pytest.raises(StoreOpenError, match="nothing was dropped: move the journal aside"):
        DbmStore(str(tmp_path))
    assert journal.read_bytes() == bytes(data)


def test_dumb_index_line_with_an_impossible_size_is_skipped(tmp_path):
    store = DbmStore(str(tmp_path), flavour="dbm.dumb")
    with store.transaction() as tx:
        tx.set(PASSED_TABLE, "a" * 32, 1_790_000_000)
    store.close()
    with open(tmp_path / (PASSED_TABLE + ".dir"), "a") as index:
        index.write("'%s', (0, 99999999999999)\n" % ("b" * 32))
    script = ("import sys; from greylist.stores.dbm import DbmStore\n"
              f"s = DbmStore({str(tmp_path)!r})\n"
              "with s.transaction() as tx: tx.set('greylist_Passed', 'c' * 32, 1790000001)\n"
              "print(sorted(k for k, _ in s.items('greylist_Passed'))); s.close()\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(["a" * 32, "c" * 32])


def test_dumb_index_that_cannot_be_reopened_leaves_no_stale_descriptor(tmp_path, monkeypatch):
    store = DbmStore(str(tmp_path), flavour="dbm.dumb")
    other = DbmStore(str(tmp_path))
    with other.transaction() as tx:
        tx.set(PASSED_TABLE, "a" * 32, 1_790_000_000)
        tx.set(PASSED_TABLE, "b" * 32, 1_790_000_000)
    with other.transaction() as tx:
        tx.delete(PASSED_TABLE, "b" * 32)
    other.compact()
    other.close()  # the index was replaced: the first handle re-opens it at its next hold
    real_open = os.open

    def no_more_files(path, *args, **kwargs):
        if str(path).endswith(".dir"):
            raise OSError(24, "Too many open files")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", no_more_files)
    with pytest.raises(StoreError, match="Too many open files"):
        with store.transaction():
            pass
    monkeypatch.setattr(os, "open", real_open)
    bystander = real_open(tmp_path / "bystander", os.O_RDWR | os.O_CREAT, 0o600)  # may get the freed number
    with store.transaction() as tx:
        assert tx.get(PASSED_TABLE, "a" * 32) == 1_790_000_000
    os.write(bystander, b"still mine")  # never closed by the store
    os.close(bystander)
    store.close()


# --- folds and closing ------------------------------------------------------------------


@needs_gdbm
def test_close_during_a_background_purge_leaves_every_entry_in_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(fold_copy, "IN_PROCESS_BELOW", 0)  # the copy in a child, as for a large file
    store = DbmStore(str(tmp_path), flavour="dbm.gnu")
    with store.transaction() as tx:
        for n in range(3000):
            tx.set(PASSED_TABLE, f"{n:032x}", 1_000 if n % 3 == 0 else 1_790_000_000)
    copying = threading.Event()
    build = fold_copy.Copier.build

    def build_slowly(self, *args):
        copying.set()
        time.sleep(0.3)  # close() arrives while the copy runs
        return build(self, *args)

    monkeypatch.setattr(fold_copy.Copier, "build", build_slowly)
    errors: list = []
    purger = threading.Thread(target=lambda: errors.extend(
        [] if store.purge(PASSED_TABLE, older_than=2_000) >= 0 else ["?"]))
    purger.start()
    assert copying.wait(30)
    with store.transaction() as tx:  # mail written meanwhile
        tx.set(PASSED_TABLE, "f" * 32, 1_790_000_001)
    store.close()
    purger.join(30)
    assert not purger.is_alive() and errors == []
    on_disk = stdlib_contents(tmp_path, PASSED_TABLE)
    assert len([v for v in on_disk.values() if v != "1000"]) == 2000 + 1
    assert (tmp_path / (PASSED_TABLE + ".journal")).stat().st_size == 0
    assert not [name for name in os.listdir(tmp_path) if ".fold." in name]


@needs_gdbm
def test_a_stalled_fold_child_never_holds_mail_for_long(tmp_path, monkeypatch):
    monkeypatch.setattr(fold_copy, "IN_PROCESS_BELOW", 0)
    monkeypatch.setattr(fold_copy, "UNDER_LOCK", 0.5)
    store = DbmStore(str(tmp_path), flavour="dbm.gnu")
    with store.transaction() as tx:
        for n in range(500):
            tx.set(PASSED_TABLE, f"{n:032x}", 1_790_000_000)
    build, apply = fold_copy.Copier.build, fold_copy.Copier.apply
    mail = DbmStore(str(tmp_path))
    waited: list = []

    def mail_writes():
        started = time.monotonic()
        with mail.transaction() as tx:
            tx.set(PASSED_TABLE, "f" * 32, 1_790_000_001)
        waited.append(time.monotonic() - started)

    writer = threading.Thread(target=mail_writes)

    def build_then_mail_comes(self, journal_end, progress=None):
        built = build(self, journal_end, progress)
        with mail.transaction() as tx:  # a change for the last apply, made under the lock
            tx.set(PASSED_TABLE, "e" * 32, 1_790_000_001)
        return built

    def stall_then_apply(self, start, end, last=False):
        if last:  # under the lock: mail now waits, and the child stops answering
            writer.start()
            os.kill(self._child.pid, signal.SIGSTOP)
        return apply(self, start, end, last)

    monkeypatch.setattr(fold_copy.Copier, "build", build_then_mail_comes)
    monkeypatch.setattr(fold_copy.Copier, "apply", stall_then_apply)
    failures: list = []

    def purge():
        try:
            store.purge(PASSED_TABLE, older_than=0)
        except StoreError as error:
            failures.append(str(error))

    purger = threading.Thread(target=purge, daemon=True)
    purger.start()
    purger.join(10)
    assert not purger.is_alive(), "the purge waited for the stalled child"
    assert len(failures) == 1 and "no answer from the copying process within 0.5 s" in failures[0]
    writer.join(30)
    assert waited and waited[0] < 3  # mail waited for the lock no longer than the give-up time
    monkeypatch.setattr(fold_copy.Copier, "build", build)
    monkeypatch.setattr(fold_copy.Copier, "apply", apply)
    assert store.purge(PASSED_TABLE, older_than=0) == 0  # the next purge works
    assert len(stdlib_contents(tmp_path, PASSED_TABLE)) == 502
    mail.close()
    store.close()
