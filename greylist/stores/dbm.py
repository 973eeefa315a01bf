"""The embedded default store: two dbm files, as the reference keeps them.

Files ``<dir>/greylist_Passed`` and ``<dir>/greylist_NotPassed``, in the
flavour stdlib ``dbm.open`` picks (gdbm where the interpreter has it, else
ndbm, else dbm.dumb), keys the triplet digests, values integer Unix time as
text.  The reference (courier-pythonfilter 3.0.6) reads what we write and
we read what it wrote, so an upgrade or a rollback re-greylists nobody.

What we do differently, and why:

* One lock for both files, ``<dir>/greylist.lock``: a thread lock plus an
  ``flock`` on the lock file, so that threads of a dispatcher, a second
  dispatcher and the command line exclude each other.  The lock file also
  carries a generation counter, bumped by every writer; a process that sees
  it change re-reads what it caches (gdbm handles, the dbm.dumb index).
* gdbm files are never written in place (a writer killed between gdbm's
  separate writes of a bucket, its directory and its header leaves a file
  that no longer reads): each transaction appends its changes to
  ``<file>.journal`` in one checksummed write, every process reads the
  journal before the file, and a fold (every purge, and when the filter
  stops) writes a new gdbm file and renames it over the old one.  The gdbm
  file is opened read-only and without gdbm's own lock, which would keep
  every other process out; our lock covers it.
* dbm.dumb is read and written by our own code in its on-disk format:
  stdlib's module rewrites the whole index in place on every delete and
  sync, which costs time in proportion to the store and loses entries when
  the process is killed during the rewrite.  Here every change is a write
  into the data file plus, for a new key, one line appended to the index;
  a delete overwrites the value with zeros (a time of 0, which stdlib
  readers and the reference treat as long expired); and the index is
  rewritten only by a compaction that builds a new file and renames it over
  the old one.
"""

from __future__ import annotations

import ast
import contextlib
import dbm
import errno
import mmap
import os
import re
import select
import stat
import struct
import subprocess
import sys
import threading
import time
import zlib
from typing import Callable, Iterator, Optional, Sequence, Tuple

from ..maillog import stderr_line
from . import (
    AUTO_WHITELIST_TABLE,
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
from .gdbm_fold import FoldCopy
from .gdbm_memory import unmap

LOCK_NAME = "greylist.lock"
_HEADER = struct.Struct("<Qd")  # generation, time of the last purge
# A byte after the header: set while a writer applies its changes.  Found set
# by the next holder, it means a writer died in the middle of a write.
_DIRTY_OFFSET = _HEADER.size
# Then a count of gdbm files replaced by folds (bytes that older versions of
# this package leave at zero): a process that sees it unchanged knows no file
# was replaced and skips a stat per file when it catches up.
_FOLDS = struct.Struct("<I")
_FOLDS_OFFSET = _DIRTY_OFFSET + 4
# What every transaction reads first, in one go: the generation and the dirty byte.
_STATE = struct.Struct("<Q8xB")
_GENERATION = struct.Struct("<Q")
_MAPPED = _HEADER.size + 8
# How long a process trusts the fold count alone: a writer of an older version
# replaces files without counting, and is then seen within this time.
_FULL_REFRESH_EVERY = 1.0
_FILE_MODE = 0o600
_BATCH = 256  # keys a purge examines per hold of the lock (well under a millisecond)
_FOLD_AFTER = 100_000  # journal entries (about 15 MB of overlay) that call for a fold before the purge
# gdbm files smaller than this are folded without a child process.  A copy made
# here holds the GIL in slices of 5 ms, each decision needing it a few times:
# a 2 MB file (20,000 entries) copied here made decisions wait up to 16 ms
# (measured); one of 256 KB is copied in a few milliseconds in all.
_FOLD_IN_PROCESS = 256 << 10
# The longest a fold's copying process may take to answer while the store lock
# is held (adding the last changes, closing the file): past it, the fold is given up.
_ANSWER_TIMEOUT = 60.0
# A fold catches up with the journal outside the lock for at most this many
# rounds, and stops once at most this many bytes (about 70 changes) are left.
_CATCH_UP_ROUNDS = 12
_LEFT_FOR_THE_LOCK = 4096
_PAUSE = 0.0005  # a purge's pause between two holds, so that mail never waits long

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Unix
    fcntl = None  # type: ignore[assignment]


def _gdbm():
    try:
        import dbm.gnu as gnu
    except ImportError:
        return None
    return gnu


_told_mapped = False


def _open_unmapped(gnu, path: str, mode: str):
    """dbm.gnu.open(path, mode), read through a small cache instead of a mapping.

    See gdbm_memory: at a million triplets this keeps about 140 MB of file
    and cache out of the dispatcher's resident memory.
    """
    global _told_mapped
    db = gnu.open(path, mode)
    refusal = unmap(db, path)
    if refusal is not None and not _told_mapped:
        _told_mapped = True  # once a process: the cause does not go away
        stderr_line(f"greylist: {refusal}")
    return db


def preferred_flavour() -> str:
    """The flavour stdlib dbm.open(path, 'c') creates on this interpreter."""
    if _gdbm() is not None:
        return "dbm.gnu"
    try:
        import dbm.ndbm  # noqa: F401
    except ImportError:
        return "dbm.dumb"
    return "dbm.ndbm"


# --- the lock ------------------------------------------------------------------------


class StoreLock:
    """Exclusive access to a store directory across threads and processes."""

    def __init__(self, path: str, readonly: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        self._thread_lock = threading.Lock()
        self._owner: Optional[int] = None
        flags = os.O_CLOEXEC | os.O_NOFOLLOW
        flags |= os.O_RDONLY if readonly else os.O_RDWR | os.O_CREAT
        try:
            self._fd: Optional[int] = os.open(path, flags, _FILE_MODE)
        except FileNotFoundError:
            if not readonly:
                raise
            self._fd = None  # nobody ever wrote here, so nobody to exclude
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise StoreOpenError(f"refusing lock file {path}: it is a symbolic link") from None
            raise StoreOpenError(f"cannot open lock file {path}: {error.strerror}") from None

        self._header: Optional[mmap.mmap] = None
        self.waiting = 0  # threads of this process waiting for the lock

    def let_others_in(self) -> None:
        """Between two slices of a long job: let waiting messages go first.

        Neither a thread lock nor flock is fair; without this pause, a purge
        that releases and retakes the lock in a loop can starve mail.
        """
        deadline = time.monotonic() + 0.05
        time.sleep(_PAUSE)
        while self.waiting and time.monotonic() < deadline:
            time.sleep(_PAUSE)

    def acquire(self) -> None:
        """Take the lock: first among this process's threads, then among processes."""
        me = threading.get_ident()
        if self._owner == me:
            # Waiting here would wait for ourselves forever.
            raise StoreError(f"{self.path}: this thread already holds the store lock")
        if not self._thread_lock.acquire(blocking=False):
            self.waiting += 1
            try:
                self._thread_lock.acquire()
            finally:
                self.waiting -= 1
        try:
            if self._fd is not None and fcntl is not None:
                fcntl.flock(self._fd, fcntl.LOCK_SH if self.readonly else fcntl.LOCK_EX)
        except BaseException:
            self._thread_lock.release()
            raise
        self._owner = me

    def release(self) -> None:
        self._owner = None
        try:
            if self._fd is not None and fcntl is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self.acquire()
        try:
            yield
        finally:
            self.release()

    def _map_header(self) -> Optional[mmap.mmap]:
        # The header is read and written through a shared mapping: no system
        # call, so the lock holder never gives up the GIL for it.
        if self._header is None and self._fd is not None:
            if os.fstat(self._fd).st_size < _MAPPED:
                if self.readonly:
                    return None
                os.ftruncate(self._fd, _MAPPED)  # only ever grows it: safe at any time
            access = mmap.ACCESS_READ if self.readonly else mmap.ACCESS_WRITE
            self._header = mmap.mmap(self._fd, _MAPPED, access=access)
        return self._header

    def read_state(self) -> Tuple[int, bool]:
        """The generation and the dirty flag (a writer died mid-write), read together."""
        header = self._header or self._map_header()
        if header is None:
            return 0, False
        generation, dirty = _STATE.unpack_from(header, 0)
        return generation, dirty == 1

    def read_header(self) -> Tuple[int, float]:
        header = self._header or self._map_header()
        if header is None:
            return 0, 0.0
        return _HEADER.unpack_from(header, 0)

    def write_header(self, generation: int, last_purge: float) -> None:
        header = self._header or self._map_header()
        if header is not None and not self.readonly:
            _HEADER.pack_into(header, 0, generation, last_purge)

    def begin_write(self) -> int:
        """Under the lock, before a hold's first write: a new generation, and the dirty mark.

        Returns the new generation (what other processes compare with theirs).
        """
        header = self._header or self._map_header()
        if header is None:
            return 1
        generation = _GENERATION.unpack_from(header, 0)[0] + 1
        if not self.readonly:
            _GENERATION.pack_into(header, 0, generation)
            header[_DIRTY_OFFSET] = 1
        return generation

    def read_folds(self) -> int:
        header = self._header or self._map_header()
        return 0 if header is None else _FOLDS.unpack_from(header, _FOLDS_OFFSET)[0]

    def count_fold(self) -> None:
        header = self._header or self._map_header()
        if header is not None and not self.readonly:
            _FOLDS.pack_into(header, _FOLDS_OFFSET, (self.read_folds() + 1) & 0xFFFFFFFF)

    def end_write(self) -> None:
        """Every change of this hold is in the files: clear the mark begin_write set."""
        header = self._header or self._map_header()
        if header is not None and not self.readonly:
            header[_DIRTY_OFFSET] = 0

    def close(self) -> None:
        if self._header is not None:
            self._header.close()
            self._header = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


# --- tables: one per dbm file --------------------------------------------------------


class _Table:
    """One dbm file.  All methods run with the store lock held."""

    flavour = ""

    def __init__(self, base: str, readonly: bool) -> None:
        self.base = base
        self.readonly = readonly

    def begin(self) -> None:
        """A transaction starts (the generic flavour opens its file here)."""

    def end(self) -> None:
        """A transaction ends."""

    def refresh(self, files_may_be_replaced: bool = True) -> None:
        """Another process wrote: drop whatever is cached.

        ``files_may_be_replaced`` False: the lock's fold count says no file
        was replaced since the last look (a hint a table may use).
        """

    def recover(self) -> None:
        """A writer died while holding the lock: drop whatever is cached, check what was written."""
        self.refresh()

    def prefetch(self, keys: Sequence[bytes]) -> None:
        """Without the lock: read what a later get will want, if that is safe here."""

    def get(self, key: bytes) -> Optional[bytes]:
        raise NotImplementedError

    def set(self, key: bytes, value: bytes) -> None:
        raise NotImplementedError

    def delete(self, key: bytes) -> None:
        raise NotImplementedError

    def scanner(self) -> Callable[[], Optional[list]]:
        """A function giving the next few keys on each call, None at the end.

        Called once per lock hold; the store may change between calls.
        """
        raise NotImplementedError

    def compact(self, store: DbmStore) -> None:
        """Make the file tidy for other readers (dbm.dumb drops deleted keys)."""

    def close(self) -> None:
        raise NotImplementedError


class _MappingTable(_Table):
    """A table backed by a stdlib dbm object in ``self._db``."""

    _db = None

    def get(self, key: bytes) -> Optional[bytes]:
        return self._db.get(key)

    def set(self, key: bytes, value: bytes) -> None:
        self._db[key] = value

    def delete(self, key: bytes) -> None:
        try:
            del self._db[key]
        except KeyError:
            pass


_JOURNAL_SUFFIX = ".journal"
_BLOCK_HEADER = struct.Struct("<II")  # payload length, CRC-32 of the payload
_ENTRY_HEADER = struct.Struct("<Hi")  # key length, value length (-1: deleted)
_MISSING = object()


def _encode_block(changes: list) -> bytes:
    payload = b"".join([
        _ENTRY_HEADER.pack(len(key), -1 if value is None else len(value)) + key + (value or b"")
        for key, value in changes])
    return _BLOCK_HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def _decode_blocks(data: bytes, into: dict) -> int:
    """Apply every whole, intact block of ``data`` to ``into``; returns the bytes used.

    A block that is cut short or fails its checksum is the last write of a
    writer that died: it and anything after it are not used.  So is an empty
    one, which no writer writes: zeros where a power loss left the file
    longer than what reached the disk.
    """
    offset = 0
    while offset + _BLOCK_HEADER.size <= len(data):
        length, checksum = _BLOCK_HEADER.unpack_from(data, offset)
        start = offset + _BLOCK_HEADER.size
        payload = data[start : start + length]
        if not length or len(payload) < length or zlib.crc32(payload) != checksum:
            break
        position = 0
        while position < length:
            key_length, value_length = _ENTRY_HEADER.unpack_from(payload, position)
            position += _ENTRY_HEADER.size
            key = payload[position : position + key_length]
            position += key_length
            if value_length < 0:
                into[key] = None
            else:
                into[key] = payload[position : position + value_length]
                position += value_length
        offset = start + length
    return offset


class _GdbmTable(_Table):
    """A gdbm file that is never written in place: changes go to a journal beside it.

    gdbm updates a bucket, its directory and its header with separate
    writes, so a writer killed between them leaves a file that no longer
    reads (measured: about one kill in sixty), and a power loss can do the
    same.  Here the gdbm file (the reference's file, which it and stdlib
    ``dbm`` read) is only ever replaced whole: a fold writes a new file
    from the old one plus the journal, fsyncs it and renames it over the
    old one.  Between folds, each transaction's changes are appended to
    ``<file>.journal`` with one write, as a block with a checksum; every
    process keeps the journal's changes in memory (an overlay read before
    the gdbm file) and reads what others appended when the lock's
    generation tells it to.  A block torn by a kill fails its checksum and
    is cut off by the next holder of the lock: that transaction never got
    its reply.  The purge is a fold that leaves the expired entries out, so
    it costs nothing under the lock but the final rename.

    The journal is folded into the file by every purge and when the
    filter stops, so that the reference (after a rollback) and stdlib
    readers see everything.
    """

    flavour = "dbm.gnu"

    def __init__(self, base: str, readonly: bool) -> None:
        super().__init__(base, readonly)
        self._gnu = _gdbm()
        self.journal_path = base + _JOURNAL_SUFFIX
        self._db = None
        self._anchor = -1  # a descriptor on the gdbm file, so that gdbm's close is never its last
        self.retired: list = []  # anchors of replaced files, closed outside the lock
        self._journal = -1
        self._overlay: dict = {}
        self._changes: list = []
        self._journal_end = 0  # bytes of the journal read into the overlay
        self._identity: Optional[Tuple[int, int]] = None
        # The open gdbm handle and a number that changes whenever it is
        # replaced, in one attribute so that a reader outside the lock never
        # pairs a handle with another one's number; and what prefetch read
        # from the handle of that number.
        self._opened = 0
        self._file: tuple = (None, 0)
        self._prefetched: Tuple[int, dict] = (-1, {})
        self._open()

    # files

    def _open(self) -> None:
        """Open the gdbm file (creating an empty one if allowed) and read the journal."""
        if not os.path.exists(self.base) and not self.readonly:
            try:
                self._gnu.open(self.base, "cu", _FILE_MODE).close()
            except self._gnu.error as error:
                raise StoreOpenError(f"cannot create gdbm file {self.base}: {error}") from None
        try:
            db = _open_unmapped(self._gnu, self.base, "ru")
            anchor = os.open(self.base, os.O_RDONLY | os.O_CLOEXEC)
            info = os.fstat(anchor)
        except self._gnu.error as error:
            raise StoreOpenError(f"cannot open gdbm file {self.base}: {error}") from None
        # The old file was renamed over: the last close of it frees its pages
        # and blocks, milliseconds for a large file.  gdbm's close keeps the
        # GIL, os.close does not: the old anchor is closed after the lock is let go.
        if self._db is not None:
            self._db.close()
        if self._anchor >= 0:
            self.retired.append(self._anchor)
        self._db, self._anchor, self._identity = db, anchor, (info.st_dev, info.st_ino)
        self._opened += 1
        self._file = (db, self._opened)
        if self._journal < 0:
            flags = os.O_CLOEXEC | os.O_NOFOLLOW
            flags |= os.O_RDONLY if self.readonly else os.O_RDWR | os.O_CREAT | os.O_APPEND
            try:
                self._journal = os.open(self.journal_path, flags, _FILE_MODE)
            except FileNotFoundError:
                self._journal = -1  # read-only, and nobody ever wrote one
        self._overlay, self._journal_end = {}, 0
        self._read_journal()

    def _read_journal(self, cut_torn: bool = True) -> bool:
        """Read what was appended to the journal since we last looked.

        Returns False when what follows is not whole blocks and was left
        alone (``cut_torn`` False): a torn block, or a journal that a fold
        emptied and others refilled, read from the wrong place.
        """
        if self._journal < 0:
            return True
        size = os.fstat(self._journal).st_size
        if size <= self._journal_end:
            if size < self._journal_end:  # folded by another process: start again
                self._open()
            return True
        data = os.pread(self._journal, size - self._journal_end, self._journal_end)
        used = _decode_blocks(data, self._overlay)
        self._journal_end += used
        if used < len(data):
            if not cut_torn:
                return False
            if not self.readonly:
                # A block torn by a writer that died: never acknowledged, so cut it.
                os.ftruncate(self._journal, self._journal_end)
        return True

    def refresh(self, files_may_be_replaced: bool = True) -> None:
        # Trusting the fold count, only the journal is read; what does not read
        # as whole blocks is never cut before the file is checked (it may be
        # a fold that was not counted, and the journal a new one).
        if not files_may_be_replaced and self._read_journal(cut_torn=False):
            return
        try:
            info = os.stat(self.base)
            current = (info.st_dev, info.st_ino)
        except FileNotFoundError:
            current = None
        if current != self._identity:
            self._open()  # another process folded the journal into a new file
        else:
            self._read_journal()

    def recover(self) -> None:
        """After a writer died holding the lock: re-read everything (cuts a torn block)."""
        self._open()

    # reads and writes

    def prefetch(self, keys: Sequence[bytes]) -> None:
        """Look keys up in the gdbm file without the lock: it is never written in place.

        A handle reads one file, and a file is only ever replaced whole (by a
        fold's rename), so what it answers now it answers under the lock
        too, for as long as the table keeps that handle; the journal's
        overlay, read under the lock, still goes first.  At a million
        triplets a lookup reads from the file (about 5 us), so this takes
        the lookups out of the time the lock is held, which a second
        process on the store waits for.
        """
        db, opened = self._file
        if db is None:
            return
        try:
            found = {key: db.get(key) for key in keys}
        except self._gnu.error:
            return  # replaced and closed meanwhile: the transaction reads the new one
        self._prefetched = (opened, found)

    def get(self, key: bytes) -> Optional[bytes]:
        value = self._overlay.get(key, _MISSING)
        if value is not _MISSING:
            return value
        opened, found = self._prefetched
        if opened == self._opened:
            value = found.get(key, _MISSING)
            if value is not _MISSING:
                return value
        return self._db.get(key)

    def set(self, key: bytes, value: bytes) -> None:
        self._overlay[key] = value
        self._changes.append((key, value))

    def delete(self, key: bytes) -> None:
        if self.get(key) is None:
            return
        self._overlay[key] = None
        self._changes.append((key, None))

    def end(self) -> None:
        """The transaction's changes go to the journal in one write, before the lock is let go."""
        if not self._changes:
            return
        block = _encode_block(self._changes)
        self._changes = []
        try:
            written = os.write(self._journal, block)
            if written != len(block):
                raise OSError(errno.ENOSPC, f"short write to {self.journal_path}")
        except OSError:
            # Not in the journal: forget it here too (and cut whatever part was written).
            with contextlib.suppress(OSError):
                os.ftruncate(self._journal, self._journal_end)
            self._overlay, self._journal_end = {}, 0
            self._read_journal()
            raise
        self._journal_end += len(block)

    @property
    def pending(self) -> int:
        """Changes in the journal, not yet folded into the gdbm file."""
        return len(self._overlay)

    # walking

    def scanner(self) -> Callable[[], Optional[list]]:
        # A handle of its own on the file as it is now: a fold during the walk
        # replaces the file but not this handle.  The overlay's keys come last.
        snapshot = _open_unmapped(self._gnu, self.base, "ru")
        state: dict = {"key": snapshot.firstkey(), "overlay": None}

        def next_keys() -> Optional[list]:
            batch = []
            if state["overlay"] is None:
                key = state["key"]
                while key is not None and len(batch) < _BATCH:
                    if key not in self._overlay:
                        batch.append(key)
                    key = snapshot.nextkey(key)
                state["key"] = key
                if key is None:
                    snapshot.close()
                    state["overlay"] = [k for k, v in self._overlay.items() if v is not None]
                if batch:
                    return batch
            rest = state["overlay"]
            if not rest:
                return None
            batch, state["overlay"] = rest[:_BATCH], rest[_BATCH:]
            return batch

        return next_keys

    # folding

    def fold(self, store: DbmStore, older_than: Optional[float] = None,
             progress: Optional[Callable[[int], None]] = None) -> int:
        """Write a new gdbm file from the old one and the journal; returns entries dropped.

        Entries stored before ``older_than`` (and values that are not times)
        are left out: that is the purge.  The copy is made outside the lock
        (for a large file in a process of its own, see ``gdbm_fold``) from a
        snapshot: the old file does not change, and the journal's first
        bytes are what this process has read of it.  What was appended
        meanwhile is added in rounds, the last one under the lock; then the
        new file is fsynced and renamed over the old one and the journal
        emptied.  A kill at any point leaves the old file and the whole
        journal, or the new file (with or without the journal, whose changes
        it then holds already).
        """
        if self.readonly:
            return 0
        # A name of this process's own: the copy of a fold whose process was
        # killed may still be running, and must not write into this one's file.
        temporary = f"{self.base}.fold.{os.getpid()}"
        with store.locked():
            if not self._overlay and older_than is None:
                return 0
            identity, copied_to = self._identity, self._journal_end
        _remove_stale_folds(self.base)
        copier = _Copier(self.base, self.journal_path, temporary, older_than)
        try:
            examined, dropped = copier.build(copied_to, progress)
            # Catch up outside the lock while mail keeps coming, until little
            # is left: what is left is applied under the lock, where every
            # decision waits for it.  Each round is shorter than the one
            # before as long as the copy applies changes faster than mail
            # makes them (measured at a million triplets and 10,000-14,000
            # decisions/s: rounds of 377, 109, 45, 22, 12, 8 and 1 ms).
            for _ in range(_CATCH_UP_ROUNDS):
                with store.locked():
                    if self._identity != identity:
                        return 0  # another process folded first
                    appended_to = self._journal_end
                if appended_to - copied_to <= _LEFT_FOR_THE_LOCK:
                    break
                copier.apply(copied_to, appended_to)
                copied_to = appended_to
            with store.locked():
                if self._identity != identity:
                    return 0
                if self._journal_end > copied_to:
                    copier.apply(copied_to, self._journal_end, last=True)
                copier.finish()
                store.note_write()  # marks the store: a kill from here on is repaired
                os.rename(temporary, self.base)
                store.count_fold()
                _fsync(os.path.dirname(self.base) or ".")
                os.ftruncate(self._journal, 0)
                self._open()
            if progress is not None:
                progress(examined)
        finally:
            copier.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
        return dropped

    def compact(self, store: DbmStore) -> None:
        self.fold(store)

    def close_retired(self) -> None:
        """Close the anchors of replaced files (call without the lock held)."""
        while self.retired:
            os.close(self.retired.pop())

    def close(self) -> None:
        self._file = (None, 0)
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._anchor >= 0:
            self.retired.append(self._anchor)
            self._anchor = -1
        self.close_retired()
        if self._journal >= 0:
            os.close(self._journal)
            self._journal = -1


def _remove_stale_folds(base: str) -> None:
    """Remove the files of folds whose process is gone (killed mid-fold)."""
    directory, name = os.path.split(base)
    prefix = name + ".fold."
    for entry in os.listdir(directory or "."):
        if not entry.startswith(prefix):
            continue
        try:
            pid = int(entry[len(prefix):])
            if pid != os.getpid():
                os.kill(pid, 0)
            continue  # its process is alive: its fold may be running
        except ValueError:
            pass  # not one of ours: a name we never write
        except ProcessLookupError:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(directory, entry))
        except PermissionError:
            continue  # alive, under another user


class _Copier:
    """A fold's copy: in a child process for a large file, else here (``gdbm_fold.FoldCopy``)."""

    def __init__(self, base: str, journal: str, temporary: str, older_than: Optional[float]) -> None:
        self.base = base
        self._args = (base, journal, temporary, older_than)
        self._here: Optional[FoldCopy] = None
        self._child: Optional[subprocess.Popen] = None

    def build(self, journal_end: int, progress: Optional[Callable[[int], None]]) -> Tuple[int, int]:
        base, journal, temporary, older_than = self._args
        if sys.executable and os.path.getsize(base) + journal_end >= _FOLD_IN_PROCESS:
            package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(
                filter(None, [package_root, os.environ.get("PYTHONPATH")])))
            command = [sys.executable, "-m", "greylist.stores.gdbm_fold", base, journal,
                       str(journal_end), temporary,
                       "-" if older_than is None else repr(float(older_than)), str(os.getpid())]
            try:
                # Unbuffered: the answers are waited for with poll, with a deadline.
                self._child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                               stderr=subprocess.PIPE, env=env, close_fds=True,
                                               bufsize=0)
            except OSError:
                self._child = None  # no interpreter to start: copy here
        if self._child is None:
            self._here = FoldCopy(base, journal, temporary, older_than)
            return self._here.build(journal_end, progress)
        while True:
            words = self._answer()
            if words[0] == b"progress":
                if progress is not None:
                    progress(int(words[1]))
            elif words[0] == b"built":
                return int(words[1]), int(words[2])

    def _answer(self, timeout: Optional[float] = None) -> list:
        """The child's next line; ``timeout`` bounds the wait (used while the lock is held)."""
        if timeout is not None:
            waiter = select.poll()
            waiter.register(self._child.stdout.fileno(), select.POLLIN)
            if not waiter.poll(timeout * 1000):
                self._child.kill()
                raise OSError(f"folding {self.base}: no answer from the copying process "
                              f"within {timeout:g} s")
        line = self._child.stdout.readline()
        if not line.strip():
            self._child.wait()
            errors = self._child.stderr.read().decode("utf-8", "replace").strip().splitlines()
            raise OSError(f"folding {self.base} failed: "
                          f"{errors[-1] if errors else f'exit {self._child.returncode}'}")
        return line.split()

    def _order(self, order: str, answer: bytes) -> None:
        self._child.stdin.write(order.encode() + b"\n")
        self._child.stdin.flush()
        while self._answer(_ANSWER_TIMEOUT)[0] != answer:
            pass

    def apply(self, start: int, end: int, last: bool = False) -> None:
        """Apply journal bytes start..end to the copy; ``last``: under the lock, just before finish."""
        if self._here is not None:
            self._here.apply(start, end, sync=not last)
        else:
            self._order(f"{'apply-last' if last else 'apply'} {start} {end}", b"applied")

    def finish(self) -> None:
        if self._here is not None:
            self._here.finish()
        else:
            self._order("finish", b"finished")

    def close(self) -> None:
        if self._here is not None:
            self._here.abandon()
        if self._child is not None:
            with contextlib.suppress(OSError):
                self._child.stdin.close()
            if self._child.poll() is None:
                self._child.kill()
            self._child.wait()
            for stream in (self._child.stdout, self._child.stderr):
                stream.close()


class _GenericTable(_MappingTable):
    """Any other flavour (ndbm): opened for each transaction, closed after it."""

    def __init__(self, base: str, readonly: bool, flavour: str) -> None:
        super().__init__(base, readonly)
        self.flavour = flavour
        self._db = None
        self.begin()
        self.end()

    def begin(self) -> None:
        try:
            self._db = dbm.open(self.base, "r" if self.readonly else "c", _FILE_MODE)
        except Exception as error:
            raise StoreOpenError(f"cannot open {self.flavour} file {self.base}: {error}") from None

    def end(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def scanner(self) -> Callable[[], Optional[list]]:
        done = []

        def next_keys() -> Optional[list]:
            if done:
                return None
            done.append(True)
            return list(self._db.keys())

        return next_keys

    def close(self) -> None:
        self.end()


_BLOCK = 512  # dbm.dumb aligns every value on a block of this size
_DUMB_LINE = re.compile(rb"'([^'\\]*)', \((\d+), (\d+)\)\Z")


def _blocks_of(pos: int, size: int) -> range:
    return range(pos // _BLOCK, (pos + size + _BLOCK - 1) // _BLOCK)


def _free_blocks(entries, dat_end: int) -> set:
    """Blocks of a .dat file of ``dat_end`` bytes that no (pos, size) entry uses."""
    free = set(range((dat_end + _BLOCK - 1) // _BLOCK))
    for pos, size in entries:
        if size <= _BLOCK and pos % _BLOCK == 0:
            free.discard(pos // _BLOCK)
        else:
            free.difference_update(_blocks_of(pos, size))
    return free


class _DumbTable(_Table):
    """dbm.dumb's format (``.dat`` values, ``.dir`` index lines), written safely."""

    flavour = "dbm.dumb"

    def __init__(self, base: str, readonly: bool, locked: bool = True) -> None:
        """Open (creating if missing) and read the index.

        With ``locked`` false the caller does not hold the store lock: the
        index is still read safely (it is only appended to, or replaced by a
        rename), but a torn last line is left for ``refresh()`` under the lock.
        """
        super().__init__(base, readonly)
        self.dat_path = base + ".dat"
        self.dir_path = base + ".dir"
        try:
            if not readonly:
                for path in (self.dat_path, self.dir_path):
                    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, _FILE_MODE)
                    os.close(fd)
            self._dat = os.open(self.dat_path, os.O_RDONLY if readonly else os.O_RDWR)
            self._dir = -1
            self._load_index(cut_torn_tail=locked)
        except OSError as error:
            raise StoreOpenError(f"cannot open dbm.dumb files {base}.dat/.dir: "
                                 f"{error.strerror}") from None

    # index maintenance

    def _parse(self, data: bytes, into: dict) -> int:
        """Parse complete index lines into ``into``; return bytes consumed."""
        end = data.rfind(b"\n") + 1
        lines = 0
        for line in data[:end].split(b"\n"):
            if not line:
                continue
            lines += 1
            match = _DUMB_LINE.match(line.rstrip())
            if match:
                into[match.group(1)] = (int(match.group(2)), int(match.group(3)))
                continue
            try:
                key, (pos, size) = ast.literal_eval(line.decode("latin-1").rstrip())
                into[key.encode("latin-1")] = (int(pos), int(size))
            except (ValueError, SyntaxError, TypeError, AttributeError):
                pass  # a torn line: skipped here, dropped by the next compaction
        self.index_lines += lines
        return end

    def _load_index(self, cut_torn_tail: bool = True) -> None:
        if self._dir >= 0:
            os.close(self._dir)
        self._dir = os.open(self.dir_path, os.O_RDONLY if self.readonly else os.O_RDWR | os.O_APPEND)
        info = os.fstat(self._dir)
        self._dir_identity = (info.st_dev, info.st_ino)
        self.index: dict = {}
        self.index_lines = 0
        data = os.pread(self._dir, info.st_size, 0) if info.st_size else b""
        self._dir_offset = self._parse(data, self.index)
        if cut_torn_tail:
            self._cut_torn_tail(info.st_size)
        self._dat_end = os.fstat(self._dat).st_size
        self._free: Optional[set] = None  # blocks of .dat no entry uses; found when first needed

    def _cut_torn_tail(self, size: int) -> None:
        """Drop a last index line without its newline: a writer died mid-line.

        Only a writer killed inside its write leaves one (writes happen under
        the lock), and appending after it would glue two lines together.
        """
        if size > self._dir_offset and not self.readonly:
            os.ftruncate(self._dir, self._dir_offset)

    def refresh(self, files_may_be_replaced: bool = True) -> None:
        info = os.stat(self.dir_path)
        if (info.st_dev, info.st_ino) != self._dir_identity or info.st_size < self._dir_offset:
            self._load_index()
            return
        if info.st_size > self._dir_offset:
            tail = os.pread(self._dir, info.st_size - self._dir_offset, self._dir_offset)
            added: dict = {}
            self._dir_offset += self._parse(tail, added)
            self._cut_torn_tail(info.st_size)
            self.index.update(added)
            if self._free:
                for pos, size in added.values():
                    self._free.difference_update(_blocks_of(pos, size))
        self._dat_end = os.fstat(self._dat).st_size

    def _append_index_line(self, key: bytes, pos: int, size: int) -> None:
        line = b"%s, (%d, %d)\n" % (repr(key.decode("latin-1")).encode("latin-1"), pos, size)
        written = os.write(self._dir, line)
        if written != len(line):
            raise OSError(errno.EIO, f"short write to {self.dir_path}")
        self._dir_offset += written
        self.index_lines += 1
        self.index[key] = (pos, size)

    def _allocate(self, size: int) -> int:
        if self._free is None:
            self._free = _free_blocks(self.index.values(), self._dat_end)
        if size <= _BLOCK and self._free:
            return self._free.pop() * _BLOCK
        pos = (self._dat_end + _BLOCK - 1) // _BLOCK * _BLOCK
        self._dat_end = pos + size
        return pos

    # the mapping

    def _read(self, pos: int, size: int) -> bytes:
        return os.pread(self._dat, size, pos) if size else b""

    @staticmethod
    def _is_tombstone(value: bytes) -> bool:
        return value.count(b"0") == len(value)

    def get(self, key: bytes) -> Optional[bytes]:
        entry = self.index.get(key)
        if entry is None:
            return None
        value = self._read(*entry)
        return None if self._is_tombstone(value) else value

    def set(self, key: bytes, value: bytes) -> None:
        entry = self.index.get(key)
        if entry is not None:
            pos, size = entry
            if size == len(value) and not self._is_tombstone(self._read(pos, size)):
                self._pwrite(value, pos)
                return
        # A new key, a new length, or a deleted key coming back: the index
        # gets a line, so a compaction running meanwhile keeps the key.
        pos = self._allocate(len(value))
        self._pwrite(value, pos)
        self._append_index_line(key, pos, len(value))

    def delete(self, key: bytes) -> None:
        entry = self.index.get(key)
        if entry is not None and entry[1]:
            self._pwrite(b"0" * entry[1], entry[0])

    def _pwrite(self, data: bytes, pos: int) -> None:
        if os.pwrite(self._dat, data, pos) != len(data):
            raise OSError(errno.EIO, f"short write to {self.dat_path}")
        self._dat_end = max(self._dat_end, pos + len(data))

    def scanner(self) -> Callable[[], Optional[list]]:
        keys = list(self.index)
        cursor = [0]

        def next_keys() -> Optional[list]:
            start = cursor[0]
            if start >= len(keys):
                return None
            cursor[0] = start + _BATCH
            return keys[start : start + _BATCH]

        return next_keys

    # compaction

    def compact(self, store: DbmStore) -> None:
        """Rewrite the index without deleted keys, holding the lock only briefly.

        The new index is written beside the old one from a snapshot, outside
        the lock; under the lock, the lines appended since the snapshot are
        added and the file is renamed over the old index.  A crash at any
        point leaves the old index or the new one, both complete.
        """
        with store.locked():
            identity, offset, dat_end = self._dir_identity, self._dir_offset, self._dat_end
            snapshot = list(self.index.items())
        live = [(key, entry) for key, entry in snapshot if not self._is_tombstone(self._read(*entry))]
        if len(live) == len(snapshot) and self.index_lines == len(snapshot):
            return
        free = _free_blocks((entry for _, entry in live), dat_end)
        temporary = self.dir_path + ".compact"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, _FILE_MODE)
        try:
            chunk = []
            for key, (pos, size) in live:
                chunk.append(b"%s, (%d, %d)\n" % (repr(key.decode("latin-1")).encode("latin-1"),
                                                  pos, size))
                if len(chunk) >= 4096:
                    os.write(fd, b"".join(chunk))
                    chunk = []
            os.write(fd, b"".join(chunk))
            os.fsync(fd)
            with store.locked():
                self.refresh()
                if self._dir_identity != identity:
                    return  # another process compacted first
                tail = os.pread(self._dir, self._dir_offset - offset, offset)
                os.write(fd, tail)
                os.fsync(fd)
                os.rename(temporary, self.dir_path)
                _fsync(os.path.dirname(self.dir_path) or ".")
                index = dict(live)
                added: dict = {}
                self._parse(tail, added)
                index.update(added)
                for pos, size in added.values():  # taken since the snapshot
                    free.difference_update(_blocks_of(pos, size))
                os.close(self._dir)
                self._dir = os.open(self.dir_path, os.O_RDWR | os.O_APPEND)
                info = os.fstat(self._dir)
                self._dir_identity = (info.st_dev, info.st_ino)
                self._dir_offset = info.st_size
                self.index = index
                self.index_lines = len(live) + tail.count(b"\n")
                self._free = free
                store.note_write()
        finally:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)

    def close(self) -> None:
        for fd in (self._dat, self._dir):
            if fd >= 0:
                os.close(fd)
        self._dat = self._dir = -1


class _KeyList:
    """Keys kept compactly: digests as 16 raw bytes, anything else as is.

    A purge of a million-entry store may find half a million expired keys;
    as Python bytes objects they would cost tens of megabytes.
    """

    def __init__(self) -> None:
        self._digests = bytearray()
        self._others: list = []

    def append(self, key: bytes) -> None:
        if len(key) == 32:
            try:
                raw = bytes.fromhex(key.decode("ascii"))
            except (ValueError, UnicodeDecodeError):
                raw = None
            if raw is not None and raw.hex().encode() == key:  # lower-case hex round-trips
                self._digests += raw
                return
        self._others.append(key)

    def chunks(self, size: int) -> Iterator[list]:
        for start in range(0, len(self._digests), 16 * size):
            block = self._digests[start : start + 16 * size]
            yield [block[n : n + 16].hex().encode() for n in range(0, len(block), 16)]
        for start in range(0, len(self._others), size):
            yield self._others[start : start + size]


def _fsync(path: str) -> None:
    """Make a file, or a directory's entries, durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- the store -----------------------------------------------------------------------


class _DbmTransaction(Transaction):
    """One message's reads and writes; a context manager holding the store lock."""

    __slots__ = ("_store", "_tables")

    def __init__(self, store: DbmStore) -> None:
        self._store = store
        self._tables = store._tables

    def __enter__(self) -> _DbmTransaction:
        try:
            self._store._enter()
        except OSError as error:
            raise StoreError(f"store in {self._store.directory}: {error}") from error
        return self

    def __exit__(self, kind, error, traceback) -> None:
        try:
            self._store._exit()
        except OSError as exit_error:
            if error is None:
                raise StoreError(f"store in {self._store.directory}: {exit_error}") from exit_error
        if isinstance(error, OSError):
            raise StoreError(f"store in {self._store.directory}: {error}") from error

    def get(self, table: str, key: str) -> Optional[float]:
        return parse_timestamp(self._tables[table].get(key.encode("latin-1")))

    def set(self, table: str, key: str, timestamp: int) -> None:
        self._store.note_write()
        self._tables[table].set(key.encode("latin-1"), format_timestamp(timestamp))

    def delete(self, table: str, key: str) -> None:
        self._store.note_write()
        self._tables[table].delete(key.encode("latin-1"))

    def get_counted(self, table: str, key: str) -> Optional[Tuple[float, int]]:
        return parse_counted(self._tables[table].get(key.encode("latin-1")))

    def set_counted(self, table: str, key: str, timestamp: int, count: int) -> None:
        self._store.note_write()
        self._tables[table].set(key.encode("latin-1"), format_counted(timestamp, count))


class DbmStore(Store):
    """The two reference dbm files in one directory, under one lock."""

    def __init__(self, directory: str, readonly: bool = False, flavour: Optional[str] = None,
                 auto_whitelist: bool = False) -> None:
        """Open (creating if needed) the store in ``directory``.

        ``flavour`` chooses the dbm flavour of files that do not exist yet;
        by default it is the one stdlib ``dbm.open`` would create.  The
        auto-whitelist table is opened when ``auto_whitelist`` asks for it
        or when its file exists already (so the admin commands see it).
        """
        self.directory = directory
        self.readonly = readonly
        self._new_flavour = flavour or preferred_flavour()
        try:
            mode = os.stat(directory).st_mode
        except FileNotFoundError:
            raise StoreOpenError(f"store directory {directory} does not exist "
                                 f"(create it, owned by Courier's mail user)") from None
        except OSError as error:
            raise StoreOpenError(f"cannot reach store directory {directory}: {error.strerror} "
                                 f"(uid {os.geteuid()})") from None
        if not stat.S_ISDIR(mode):
            raise StoreOpenError(f"store directory {directory} is not a directory")
        if not readonly and not os.access(directory, os.W_OK | os.X_OK):
            raise StoreOpenError(f"store directory {directory} is not writable "
                                 f"by uid {os.geteuid()}")
        self._lock = StoreLock(os.path.join(directory, LOCK_NAME), readonly)
        self._tables: dict = {}
        self.tables = TABLES
        if auto_whitelist or dbm.whichdb(os.path.join(directory, AUTO_WHITELIST_TABLE)):
            self.tables = TABLES + (AUTO_WHITELIST_TABLE,)
        self._generation = -1
        # The lock's fold count and generation when every file was last
        # checked for replacement, and when to check again regardless.
        self._folds = -1
        self._files_checked = -1
        self._next_full_refresh = 0.0
        self._wrote = False
        # Tables that open their file for each hold of the lock (other dbm flavours).
        self._opened_per_hold: list = []
        # Set when a hold may have replaced an open gdbm file: its old
        # descriptor is then closed after the lock is let go.
        self._files_replaced = False
        self.fold_on_close = True
        try:
            # A large dbm.dumb index is read before taking the lock, so that a
            # second process starting up does not hold up the mail of the first.
            for name in self.tables:
                base = os.path.join(directory, name)
                if dbm.whichdb(base) == "dbm.dumb":
                    self._tables[name] = _DumbTable(base, readonly, locked=False)
            with self._lock.held():
                for name in self.tables:
                    if name in self._tables:
                        self._tables[name].refresh()  # what was written meanwhile; a torn line
                    else:
                        self._tables[name] = self._open_table(os.path.join(directory, name))
                self._generation = self._lock.read_header()[0]
        except OSError as error:
            self.close()
            raise StoreOpenError(f"cannot open store in {directory}: {error}") from None
        except StoreOpenError:
            self.close()
            raise
        self._opened_per_hold = [table for table in self._tables.values()
                                 if isinstance(table, _GenericTable)]
        flavours = sorted({table.flavour for table in self._tables.values()})
        self.description = f"{'/'.join(flavours)} in {directory}"

    def _open_table(self, base: str) -> _Table:
        flavour = dbm.whichdb(base)
        if flavour is None:
            if self.readonly:
                raise StoreOpenError(f"no store at {base}")
            flavour = self._new_flavour
        if flavour == "":
            raise StoreOpenError(f"{base} is not a dbm file this Python can read")
        if flavour == "dbm.gnu":
            if _gdbm() is None:
                raise StoreOpenError(f"{base} is a gdbm file, but this Python has no dbm.gnu "
                                     f"(install python3-gdbm)")
            return _GdbmTable(base, self.readonly)
        if flavour == "dbm.dumb":
            return _DumbTable(base, self.readonly)
        return _GenericTable(base, self.readonly, flavour)

    def _enter(self, check_files: bool = False) -> None:
        """Take the lock and make every table current (another process may have written).

        ``check_files``: look whether each file was replaced even if the fold
        count says not (a fold must never work from a replaced file).
        """
        lock = self._lock
        lock.acquire()
        try:
            generation, dirty = lock.read_state()
            if generation != self._generation or (check_files and self._files_checked != generation):
                self._files_replaced = True
                folds, now = lock.read_folds(), time.monotonic()
                full = check_files or folds != self._folds or now >= self._next_full_refresh
                for table in self._tables.values():
                    table.refresh(full)
                if full:
                    self._folds, self._files_checked = folds, generation
                    self._next_full_refresh = now + _FULL_REFRESH_EVERY
                self._generation = generation
            if dirty and not self.readonly:
                self._files_replaced = True
                self._recover()
            self._wrote = False
            for table in self._opened_per_hold:
                table.begin()
        except BaseException:
            lock.release()
            raise

    def _exit(self) -> None:
        # This runs for every message: only a hold that wrote has changes to
        # flush (every write goes through note_write first).
        try:
            if self._wrote:
                for table in self._tables.values():
                    table.end()
                self._lock.end_write()
            else:
                for table in self._opened_per_hold:
                    table.end()
        finally:
            self._lock.release()
        if self._files_replaced:
            self._files_replaced = False
            for table in self._tables.values():
                if getattr(table, "retired", None):
                    table.close_retired()

    def _recover(self) -> None:
        """A writer died while applying its changes: read every table afresh."""
        self.note_write()
        for table in self._tables.values():
            table.recover()

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the lock with every table current (for purges and compactions)."""
        self._enter(check_files=True)
        self._files_replaced = True  # a fold replaces files under this hold
        try:
            yield
        finally:
            self._exit()

    def count_fold(self) -> None:
        """A file was replaced (under the lock): other processes must stat theirs."""
        self._lock.count_fold()

    def note_write(self) -> None:
        """Called before the first write of a lock hold: tell other processes."""
        if not self._wrote:
            self._wrote = True
            self._generation = self._lock.begin_write()

    def transaction(self) -> _DbmTransaction:
        return _DbmTransaction(self)

    def prefetch(self, table: str, keys: Sequence[str]) -> None:
        opened = self._tables.get(table)
        if opened is not None:
            opened.prefetch([key.encode("latin-1") for key in keys])

    def claim_purge(self, now: float, interval: float) -> bool:
        if self.readonly:
            return False
        with self._lock.held():
            generation, last_purge = self._lock.read_header()
            if last_purge <= now < last_purge + interval:
                return False
            self._lock.write_header(generation, now)
            return True

    def purge(
        self,
        table: str,
        older_than: float,
        progress: Optional[Callable[[int], None]] = None,
    ) -> int:
        if self.readonly:
            raise StoreError(f"store in {self.directory} is open read-only; cannot purge")
        def expired(raw: bytes) -> bool:
            stamp = parse_timestamp(raw)
            return stamp is None or stamp < older_than

        fold = getattr(self._tables[table], "fold", None)
        if fold is not None:  # gdbm: a new file without the expired entries
            try:
                return fold(self, older_than=older_than, progress=progress)
            except (OSError, _gdbm().error) as error:
                raise StoreError(f"purge of {table} in {self.directory}: {error}") from error
        # First find the expired keys, then delete them (in batches, letting
        # mail in between): a walk should not run into its own deletions.
        candidates = _KeyList()
        examined = removed = 0
        try:
            for rows in self._walk(table):
                for key, raw in rows:
                    if raw is not None and expired(raw):
                        candidates.append(key)
                examined += len(rows)
                if progress is not None:
                    progress(examined)
            for chunk in candidates.chunks(_BATCH):
                with self.locked():
                    db = self._tables[table]
                    for key in chunk:
                        raw = db.get(key)
                        if raw is not None and expired(raw):  # still, after the walk
                            self.note_write()
                            db.delete(key)
                            removed += 1
                self._lock.let_others_in()
            self._tables[table].compact(self)
        except OSError as error:
            raise StoreError(f"purge of {table} in {self.directory}: {error}") from error
        return removed

    def _walk(self, table: str) -> Iterator[list]:
        """Every (key, raw value) of a table, a batch per hold of the lock."""
        with self.locked():
            next_keys = self._tables[table].scanner()
        while True:
            with self.locked():
                db = self._tables[table]
                batch = next_keys()
                if batch is None:
                    return
                rows = [(key, db.get(key)) for key in batch]
            yield rows
            self._lock.let_others_in()

    def items(self, table: str) -> Iterator[Tuple[str, Optional[float]]]:
        for rows in self._walk(table):
            for key, raw in rows:
                if raw is not None:
                    yield key.decode("latin-1"), parse_timestamp(raw)

    def counted_items(self, table: str) -> Iterator[Tuple[str, float, int]]:
        for rows in self._walk(table):
            for key, raw in rows:
                counted = parse_counted(raw)
                if counted is not None:
                    yield key.decode("latin-1"), counted[0], counted[1]

    def wants_compaction(self) -> bool:
        """True when a gdbm journal holds so many changes that its overlay costs real memory."""
        return any(getattr(table, "pending", 0) > _FOLD_AFTER for table in self._tables.values())

    def compact(self) -> None:
        """Tidy the files now (gdbm: fold the journals; dbm.dumb: drop deleted keys from the index)."""
        if not self.readonly:
            for table in self._tables.values():
                table.compact(self)

    def close(self) -> None:
        """Close the files, first tidying them for other readers unless ``fold_on_close`` is off.

        Tidying folds the gdbm journals into their files (what the reference
        and stdlib readers see) and compacts dbm.dumb indexes.  One-shot
        commands turn it off: on a large store it takes seconds, and the
        filter's next purge does it anyway.
        """
        try:
            if self._tables and not self.readonly and self._generation >= 0 and self.fold_on_close:
                with contextlib.suppress(OSError, StoreError):
                    self.compact()
        finally:
            for table in self._tables.values():
                with contextlib.suppress(Exception):
                    table.close()
            self._tables = {}
            self._lock.close()
