"""The store lock: ``<dir>/greylist.lock``, a thread lock plus an ``flock``, and a small header.

The header (32 bytes at the start of the lock file) is what the processes of
one store tell each other:

====== ======= ==================================================================
offset  type    meaning
====== ======= ==================================================================
0       4 B     magic ``CGLK``
4       u32     store format version (``FORMAT``); a build that does not know it refuses
8       u64     generation: bumped by every hold that writes; a process that sees
                it change re-reads what it caches
16      f64     Unix time of the last purge (claimed by ``claim_purge``)
24      u32     folds: how many files folds have replaced (a changed count means
                a process must look whether its open files were replaced)
28      4 B     reserved (zeros)
====== ======= ==================================================================

The header is read with ``pread`` and written with ``pwrite`` (never mapped:
a mapping of a file that someone truncates kills the process with SIGBUS).
A lock file that is deleted or renamed over while processes hold it open is
noticed after each ``flock`` (the locked file has no name left): the holder
re-opens the path and locks again, so that every process always locks the
same file.  A truncated one gets a new header with a random generation, so
that every process re-reads what it caches.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import random
import struct
import threading
import time
from typing import Iterator, Optional, Tuple

from ...safe_files import NotARegularFile, open_regular
from ..base import StoreError, StoreOpenError

LOCK_NAME = "greylist.lock"
FORMAT = 1
FILE_MODE = 0o600  # the lock file's, as every store file's
_MAGIC = b"CGLK"
_HEADER = struct.Struct("<4sIQdI4x")  # magic, format, generation, last purge, folds
_STATE = struct.Struct("<QdI")  # what follows magic and format
_STATE_OFFSET = 8
_GENERATION = struct.Struct("<Q")
_PAUSE = 0.0005  # a purge's pause between two holds, so that mail never waits long


class LockFileError(StoreOpenError):
    """The lock file is not one this build can use (another format, a link)."""


class StoreLock:
    """Exclusive access to a store directory across threads and processes."""

    def __init__(self, path: str, readonly: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        self._thread_lock = threading.Lock()
        self._owner: Optional[int] = None
        self.waiting = 0  # threads of this process waiting for the lock
        self._mode = fcntl.LOCK_SH if readonly else fcntl.LOCK_EX
        self._fd: Optional[int] = self._open()
        # The header as read when the lock was taken, kept up to date by this
        # hold's writes: one read per hold (meaningful while the lock is held).
        self.generation, self.last_purged, self.folds = 0, 0.0, 0

    def _open(self) -> Optional[int]:
        try:
            fd = open_regular(self.path, os.O_RDONLY if self.readonly else os.O_RDWR | os.O_CREAT, FILE_MODE)
        except FileNotFoundError:
            if not self.readonly:
                raise
            return None  # nobody ever wrote here, so nobody to exclude
        except NotARegularFile as error:
            raise LockFileError(f"refusing lock file {self.path}: {error.strerror}") from None
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise LockFileError(f"refusing lock file {self.path}: it is a symbolic link") from None
            raise StoreOpenError(f"cannot open lock file {self.path}: {error.strerror}") from None
        if os.fstat(fd).st_nlink > 1:
            os.close(fd)
            raise LockFileError(f"refusing lock file {self.path}: it has other names (a hard link)")
        return fd

    # taking and letting go

    def acquire(self) -> float:
        """Take the lock: first among this process's threads, then among processes.

        Returns how many seconds it waited (0.0 when nobody held it: the
        clock is read only on the way that waits).
        """
        me = threading.get_ident()
        if self._owner == me:
            # Waiting here would wait for ourselves forever.
            raise StoreError(f"{self.path}: this thread already holds the store lock")
        started = None
        if not self._thread_lock.acquire(False):  # (positional: this runs for every message)
            started = time.monotonic()
            self.waiting += 1
            try:
                self._thread_lock.acquire()
            finally:
                self.waiting -= 1
        try:
            fd = self._fd
            if fd is not None:
                try:
                    fcntl.flock(fd, self._mode | fcntl.LOCK_NB)
                except BlockingIOError:  # another process holds it
                    if started is None:
                        started = time.monotonic()
                    fcntl.flock(fd, self._mode)
                if os.fstat(fd).st_nlink == 0:
                    self._follow_the_path()
            self.generation, self.last_purged, self.folds = self._read_header()
        except BaseException:
            self._unlock_the_file()
            self._thread_lock.release()
            raise
        self._owner = me
        return 0.0 if started is None else time.monotonic() - started

    def _follow_the_path(self) -> None:
        """The file we locked was deleted, or replaced by a rename: it has no name left.

        The others lock the file at the path now (or will, at their next
        turn): lock that one too.  The old one stays locked until the new one
        is, so nobody inside on either file is ever joined.
        """
        while self._fd is not None and os.fstat(self._fd).st_nlink == 0:
            replacement = self._open()
            if replacement is not None:
                fcntl.flock(replacement, self._mode)
            os.close(self._fd)
            self._fd = replacement  # None: read-only, and the file is gone: nobody left to exclude

    def _unlock_the_file(self) -> None:
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            except OSError:
                pass

    def release(self) -> None:
        self._owner = None
        try:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        except OSError:
            pass
        finally:
            self._thread_lock.release()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self.acquire()
        try:
            yield
        finally:
            self.release()

    def let_others_in(self) -> None:
        """Between two slices of a long job: let waiting messages go first.

        Neither a thread lock nor flock is fair; without this pause, a purge
        that releases and retakes the lock in a loop can starve mail.
        """
        deadline = time.monotonic() + 0.05
        time.sleep(_PAUSE)
        while self.waiting and time.monotonic() < deadline:
            time.sleep(_PAUSE)

    # the header (all under the lock)

    def _read_header(self) -> Tuple[int, float, int]:
        """The header's state; refuses another format; gives an empty file (new, truncated) one."""
        if self._fd is None:
            return 0, 0.0, 0
        raw = os.pread(self._fd, _HEADER.size, 0)
        if len(raw) == _HEADER.size:
            magic, version, generation, last_purge, folds = _HEADER.unpack(raw)
            if magic == _MAGIC and version == FORMAT:
                return generation, last_purge, folds
            if magic == _MAGIC:
                raise LockFileError(f"the store in {os.path.dirname(self.path)} has format {version}; "
                                    f"this build of courier-greylist knows format {FORMAT} only")
        if raw.strip(b"\0"):
            raise LockFileError(f"{self.path} is not a courier-greylist lock file (format {FORMAT})")
        if self.readonly:
            return 0, 0.0, 0  # nobody wrote yet
        # Empty: a new store, or a lock file someone truncated.  A random
        # generation makes every process that cached one re-read its files.
        state = (random.getrandbits(62), 0.0, 0)
        self._write(_HEADER.pack(_MAGIC, FORMAT, *state), 0)
        return state

    def _write(self, data: bytes, offset: int) -> None:
        if os.pwrite(self._fd, data, offset) != len(data):
            raise OSError(errno.ENOSPC, f"short write to {self.path}")

    def _set_state(self, generation: int, last_purged: float, folds: int) -> None:
        self.generation, self.last_purged, self.folds = generation, last_purged, folds
        if not self.readonly and self._fd is not None:
            self._write(_STATE.pack(generation, last_purged, folds), _STATE_OFFSET)

    def set_last_purge(self, when: float) -> None:
        self._set_state(self.generation, when, self.folds)

    def begin_write(self) -> int:
        """Before a hold's first write: a new generation, which tells the others; returns it."""
        generation = self.generation = (self.generation + 1) & (2**62 - 1)
        if not self.readonly and self._fd is not None:
            self._write(_GENERATION.pack(generation), _STATE_OFFSET)
        return generation

    def count_fold(self) -> None:
        """A file was replaced: other processes must look at theirs."""
        self._set_state(self.generation, self.last_purged, (self.folds + 1) & 0xFFFFFFFF)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
