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
24      u8      dirty: set while a writer applies its changes (found set, a writer died)
28      u32     folds: how many files folds have replaced (a changed count means
                a process must look whether its open files were replaced)
====== ======= ==================================================================

The header is read with ``pread`` and written with ``pwrite`` (never mapped:
a mapping of a file that someone truncates kills the process with SIGBUS).
A lock file that is truncated, deleted or replaced while processes hold it
open is noticed after each ``flock``: the holder re-opens the path and locks
again, so that every process always locks the same file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import struct
import threading
import time
from typing import Iterator, Optional, Tuple

from .. import StoreError, StoreOpenError

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Unix
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = "greylist.lock"
FORMAT = 1
FILE_MODE = 0o600
_MAGIC = b"CGLK"
_HEADER = struct.Struct("<4sIQdB3xI")  # magic, format, generation, last purge, dirty, folds
_STATE = struct.Struct("<QdB3xI")  # what follows magic and format
_STATE_OFFSET = 8
_DIRTY_OFFSET = 24
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
        self._fd: Optional[int] = self._open()
        # The header as read when the lock was taken, kept up to date by this
        # hold's writes: one read per hold.
        self._state = (0, 0.0, False, 0)

    def _open(self) -> Optional[int]:
        flags = os.O_CLOEXEC | os.O_NOFOLLOW
        flags |= os.O_RDONLY if self.readonly else os.O_RDWR | os.O_CREAT
        try:
            fd = os.open(self.path, flags, FILE_MODE)
        except FileNotFoundError:
            if not self.readonly:
                raise
            return None  # nobody ever wrote here, so nobody to exclude
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise LockFileError(f"refusing lock file {self.path}: it is a symbolic link") from None
            raise StoreOpenError(f"cannot open lock file {self.path}: {error.strerror}") from None
        if os.fstat(fd).st_nlink > 1:
            os.close(fd)
            raise LockFileError(f"refusing lock file {self.path}: it has other names (a hard link)")
        return fd

    # taking and letting go

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
            self._lock_the_file()
            self._state = self._read_header()
        except BaseException:
            self._unlock_the_file()
            self._thread_lock.release()
            raise
        self._owner = me

    def _lock_the_file(self) -> None:
        if self._fd is None or fcntl is None:
            return
        mode = fcntl.LOCK_SH if self.readonly else fcntl.LOCK_EX
        fcntl.flock(self._fd, mode)
        while True:
            try:
                current = os.stat(self.path, follow_symlinks=False)
            except FileNotFoundError:
                current = None
            mine = os.fstat(self._fd)
            if current is not None and (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino):
                return
            # Deleted or replaced: the others lock the file at the path now (or
            # will, at their next turn).  The old one stays locked until the
            # new one is, so nobody inside on either file is ever joined.
            replacement = self._open()
            if replacement is not None:
                fcntl.flock(replacement, mode)
            os.close(self._fd)
            self._fd = replacement
            if replacement is None:
                return  # read-only, and the file is gone: nobody left to exclude

    def _unlock_the_file(self) -> None:
        if self._fd is not None and fcntl is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def release(self) -> None:
        self._owner = None
        try:
            self._unlock_the_file()
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

    def _read_header(self) -> Tuple[int, float, bool, int]:
        """The header's state; refuses another format; gives an empty file (new, truncated) one."""
        if self._fd is None:
            return 0, 0.0, False, 0
        raw = os.pread(self._fd, _HEADER.size, 0)
        if len(raw) == _HEADER.size and raw[:4] == _MAGIC:
            magic, version, generation, last_purge, dirty, folds = _HEADER.unpack(raw)
            if version != FORMAT:
                raise LockFileError(f"the store in {os.path.dirname(self.path)} has format {version}; "
                                    f"this build of courier-greylist knows format {FORMAT} only")
            return generation, last_purge, dirty == 1, folds
        if raw.strip(b"\0"):
            raise LockFileError(f"{self.path} is not a courier-greylist lock file (format {FORMAT})")
        if self.readonly:
            return 0, 0.0, False, 0  # nobody wrote yet
        # Empty: a new store, or a lock file someone truncated.  A random
        # generation makes every process that cached one re-read its files.
        state = (random.getrandbits(62), 0.0, False, 0)
        self._write(_HEADER.pack(_MAGIC, FORMAT, state[0], 0.0, 0, 0), 0)
        return state

    def _write(self, data: bytes, offset: int) -> None:
        if os.pwrite(self._fd, data, offset) != len(data):
            raise OSError(errno.ENOSPC, f"short write to {self.path}")

    def _set_state(self, generation: int, last_purge: float, dirty: bool, folds: int) -> None:
        self._state = (generation, last_purge, dirty, folds)
        if not self.readonly and self._fd is not None:
            self._write(_STATE.pack(generation, last_purge, 1 if dirty else 0, folds), _STATE_OFFSET)

    def read_state(self) -> Tuple[int, bool, int]:
        """The generation, the dirty flag (a writer died mid-write) and the fold count."""
        generation, _, dirty, folds = self._state
        return generation, dirty, folds

    def last_purge(self) -> float:
        return self._state[1]

    def set_last_purge(self, when: float) -> None:
        generation, _, dirty, folds = self._state
        self._set_state(generation, when, dirty, folds)

    def begin_write(self) -> int:
        """Before a hold's first write: a new generation, and the dirty mark; returns the generation."""
        generation, last_purge, _, folds = self._state
        generation = (generation + 1) & (2**63 - 1)
        self._set_state(generation, last_purge, True, folds)
        return generation

    def count_fold(self) -> None:
        """A file was replaced: other processes must look at theirs."""
        generation, last_purge, dirty, folds = self._state
        self._set_state(generation, last_purge, dirty, (folds + 1) & 0xFFFFFFFF)

    def end_write(self) -> None:
        """Every change of this hold is in the files: clear the mark begin_write set."""
        generation, last_purge, _, folds = self._state
        self._state = (generation, last_purge, False, folds)
        if not self.readonly and self._fd is not None:
            self._write(b"\0", _DIRTY_OFFSET)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
