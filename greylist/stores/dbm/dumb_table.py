"""dbm.dumb's format (``<file>.dat`` values, ``<file>.dir`` index lines), written safely.

stdlib's module rewrites the whole index in place on every delete and sync,
which costs time in proportion to the store and loses entries when the
process is killed during the rewrite.  Here every change is a write into the
data file plus, for a new key, one line appended to the index; a delete
overwrites the value with zeros (a time of 0, which stdlib readers and the
reference treat as long expired); and the index is rewritten only by a
compaction that builds a new file and renames it over the old one.
"""

from __future__ import annotations

import ast
import contextlib
import os
import re
from typing import Callable, Optional

from ..base import StoreOpenError
from .files import (
    create_temporary,
    fsync_path,
    open_regular,
    pwrite_all,
    remove_stale_temporaries,
    write_all,
)
from .hold import Hold
from .tables import Table

_BATCH = 256  # keys a walk returns per hold of the lock
_BLOCK = 512  # dbm.dumb aligns every value on a block of this size
_LONGEST_VALUE = 1 << 20  # an index line claiming more is damage (values are a few bytes)
_LINE = re.compile(rb"'([^'\\]*)', \((\d+), (\d+)\)\Z")
_PURPOSE = "compact"


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


def _which(error: OSError) -> str:
    """Which of the two files an error is about, when it says."""
    return f" ({error.filename})" if error.filename else ""


def _index_line(key: bytes, pos: int, size: int) -> bytes:
    return b"%s, (%d, %d)\n" % (repr(key.decode("latin-1")).encode("latin-1"), pos, size)


class DumbTable(Table):
    """One dbm.dumb file pair."""

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
        self._pending: dict = {}  # this transaction's changes: key -> value, or None to delete
        self._dat = self._dir = -1
        try:
            if not readonly:
                os.close(open_regular(self.dir_path, os.O_RDWR | os.O_CREAT))
            self._dat = open_regular(self.dat_path, os.O_RDONLY if readonly else os.O_RDWR | os.O_CREAT)
            self._load_index(cut_torn_tail=locked)
        except OSError as error:
            self.close()
            raise StoreOpenError(f"cannot open dbm.dumb files {base}.dat/.dir: "
                                 f"{error.strerror}{_which(error)}") from None

    # the index

    def _parse(self, data: bytes, into: dict, limit: int) -> int:
        """Parse complete index lines into ``into``; return bytes consumed.

        A line that does not parse (torn), or that points past ``limit``, the
        data file's size, or claims an impossible size (damage), is skipped;
        the next compaction drops it.
        """
        end = data.rfind(b"\n") + 1
        lines = 0
        for line in data[:end].split(b"\n"):
            if not line:
                continue
            lines += 1
            match = _LINE.match(line.rstrip())
            try:
                if match:
                    key, pos, size = match.group(1), int(match.group(2)), int(match.group(3))
                else:
                    text_key, (pos, size) = ast.literal_eval(line.decode("latin-1").rstrip())
                    key, pos, size = text_key.encode("latin-1"), int(pos), int(size)
            except (ValueError, SyntaxError, TypeError, AttributeError, MemoryError, RecursionError):
                continue  # a torn line
            if 0 <= pos and 0 <= size <= _LONGEST_VALUE and pos + size <= limit:
                into[key] = (pos, size)
        self.index_lines += lines
        return end

    def _load_index(self, cut_torn_tail: bool = True) -> None:
        if self._dir >= 0:
            fd, self._dir = self._dir, -1  # never keep a number that was closed
            os.close(fd)
        self._dir = open_regular(self.dir_path, os.O_RDONLY if self.readonly else os.O_RDWR | os.O_APPEND)
        info = os.fstat(self._dir)
        self._dir_identity = (info.st_dev, info.st_ino)
        self.index: dict = {}
        self.index_lines = 0
        data = os.pread(self._dir, info.st_size, 0) if info.st_size else b""
        self._dat_end = os.fstat(self._dat).st_size
        self._dir_offset = self._parse(data, self.index, self._dat_end)
        if cut_torn_tail:
            self._cut_torn_tail(info.st_size)
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
        self._dat_end = os.fstat(self._dat).st_size
        if info.st_size > self._dir_offset:
            tail = os.pread(self._dir, info.st_size - self._dir_offset, self._dir_offset)
            added: dict = {}
            self._dir_offset += self._parse(tail, added, self._dat_end)
            self._cut_torn_tail(info.st_size)
            self.index.update(added)
            if self._free:
                for pos, size in added.values():
                    self._free.difference_update(_blocks_of(pos, size))

    def _append_index_line(self, key: bytes, pos: int, size: int) -> None:
        line = _index_line(key, pos, size)
        try:
            write_all(self._dir, line, self.dir_path)
        except OSError:
            # Part of a line may be on disk: cut it, so that the next line starts clean.
            with contextlib.suppress(OSError):
                os.ftruncate(self._dir, self._dir_offset)
            raise
        self._dir_offset += len(line)
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
        if key in self._pending:
            return self._pending[key]
        entry = self.index.get(key)
        if entry is None:
            return None
        value = self._read(*entry)
        return None if self._is_tombstone(value) else value

    # A transaction's changes wait in _pending until it ends, so that one that
    # fails before (a later table, or anything else) leaves nothing behind.

    def set(self, key: bytes, value: bytes) -> None:
        self._pending[key] = value

    def delete(self, key: bytes) -> None:
        if self.get(key) is not None:
            self._pending[key] = None

    def end(self) -> None:
        """Write the transaction's changes, in the order they were made."""
        pending, self._pending = self._pending, {}
        for key, value in pending.items():
            if value is None:
                self._tombstone(key)
            else:
                self._write(key, value)

    def discard(self) -> None:
        self._pending = {}

    def _write(self, key: bytes, value: bytes) -> None:
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

    def _tombstone(self, key: bytes) -> None:
        entry = self.index.get(key)
        if entry is not None and entry[1]:
            self._pwrite(b"0" * entry[1], entry[0])

    def _pwrite(self, data: bytes, pos: int) -> None:
        pwrite_all(self._dat, data, pos, self.dat_path)
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

    def compact(self, hold: Hold) -> None:
        """Rewrite the index without deleted keys, holding the lock only briefly.

        The new index is written beside the old one, under a name of this
        compaction's own, from a snapshot, outside the lock; under the lock,
        the lines appended since the snapshot are added, the file is made
        durable and renamed over the old index.  A full disk fails it before
        the rename; a crash at any point leaves the old index or the new one,
        both complete.
        """
        with hold.locked():
            identity, offset, dat_end = self._dir_identity, self._dir_offset, self._dat_end
            snapshot = list(self.index.items())
        live = [(key, entry) for key, entry in snapshot if not self._is_tombstone(self._read(*entry))]
        if len(live) == len(snapshot) and self.index_lines == len(snapshot):
            return
        free = _free_blocks((entry for _, entry in live), dat_end)
        remove_stale_temporaries(self.dir_path, _PURPOSE)
        fd, temporary = create_temporary(self.dir_path, _PURPOSE)
        try:
            for start in range(0, len(live), 4096):
                write_all(fd, b"".join([_index_line(key, pos, size)
                                        for key, (pos, size) in live[start : start + 4096]]), temporary)
            os.fsync(fd)
            with hold.locked():
                self.refresh()
                if self._dir_identity != identity:
                    return  # another process compacted first
                tail = os.pread(self._dir, self._dir_offset - offset, offset)
                write_all(fd, tail, temporary)
                os.fsync(fd)
                os.rename(temporary, self.dir_path)
                fsync_path(os.path.dirname(self.dir_path) or ".")
                added: dict = {}
                self._parse(tail, added, self._dat_end)
                for pos, size in added.values():  # taken since the snapshot
                    free.difference_update(_blocks_of(pos, size))
                old, self._dir = self._dir, -1
                os.close(old)
                self._dir = open_regular(self.dir_path, os.O_RDWR | os.O_APPEND)
                info = os.fstat(self._dir)
                self._dir_identity = (info.st_dev, info.st_ino)
                self._dir_offset = info.st_size
                self.index = dict(live) | added
                self.index_lines = len(live) + tail.count(b"\n")
                self._free = free
                hold.note_write()
        finally:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)

    def close(self) -> None:
        for fd in (self._dat, self._dir):
            if fd >= 0:
                os.close(fd)
        self._dat = self._dir = -1
