"""A gdbm file that is never written in place: changes go to a journal beside it.

gdbm updates a bucket, its directory and its header with separate writes, so
a writer killed between them leaves a file that no longer reads (measured:
about one kill in sixty), and a power loss can do the same.  Here the gdbm
file (the reference's file, which it and stdlib ``dbm`` read) is only ever
replaced whole, by a fold (``fold.py``).  Between folds, each transaction's
changes are appended to ``<file>.journal`` with one write, as a block with a
checksum (``journal.py``); every process keeps the journal's changes in
memory (an overlay read before the gdbm file) and reads what others appended
when the lock's generation tells it to.  A block torn by a kill is cut off by
the next holder of the lock: that transaction never got its reply.

The gdbm file is opened read-only and without gdbm's own lock, which would
keep every other process out; the store lock covers it.  gdbm maps the file
into memory for reading: those pages are the page cache (shared, dropped
under memory pressure), not memory of the process's own.
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable, Optional, Sequence, Tuple

from ...maillog import stderr_line
from ..base import StoreOpenError
from . import fold, journal
from .files import FILE_MODE, open_regular, write_all
from .hold import Hold
from .tables import Table

_BATCH = 256  # keys a walk returns per hold of the lock
_MISSING = object()


def gdbm_module():
    """dbm.gnu, or None when this Python was built without it."""
    try:
        import dbm.gnu as gnu
    except ImportError:
        return None
    return gnu


class GdbmTable(Table):
    """A gdbm file plus its journal."""

    flavour = "dbm.gnu"

    def __init__(self, base: str, readonly: bool) -> None:
        super().__init__(base, readonly)
        self._gnu = gdbm_module()
        self.journal_path = base + journal.SUFFIX
        self._db = None
        self._anchor = -1  # a descriptor on the gdbm file, so that gdbm's close is never its last
        self.retired: list = []  # anchors of replaced files, closed outside the lock
        self._journal = -1
        self._overlay: dict = {}
        self._changes: list = []  # this transaction's (key, value or None), for the journal
        self._undo: list = []  # and what the overlay held before each, for discard()
        self.journal_end = 0  # bytes of the journal read into the overlay
        self.identity: Optional[Tuple[int, int]] = None
        self._damage_told: set = set()
        # The open gdbm handle and a number that changes whenever it is
        # replaced, in one attribute so that a reader outside the lock never
        # pairs a handle with another one's number; and what prefetch read
        # from the handle of that number.
        self._opened = 0
        self._file: tuple = (None, 0)
        self._prefetched: Tuple[int, dict] = (-1, {})
        self.reopen()

    # files

    def reopen(self) -> None:
        """Open the gdbm file (creating an empty one if allowed) and read the journal."""
        self._create_if_missing()
        # The anchor first, never through a link nor blocking on a FIFO; then
        # gdbm by name, which must still be the anchor's file.
        anchor = open_regular(self.base, os.O_RDONLY)
        try:
            info = os.fstat(anchor)
            db = self._gnu.open(self.base, "ru")
            named = os.stat(self.base)
            if (named.st_dev, named.st_ino) != (info.st_dev, info.st_ino):
                db.close()
                raise StoreOpenError(f"{self.base} was replaced while it was being opened")
        except BaseException as error:
            os.close(anchor)
            if isinstance(error, self._gnu.error):
                raise StoreOpenError(f"cannot open gdbm file {self.base}: {error}") from None
            raise
        # The old file was renamed over: the last close of it frees its pages
        # and blocks, milliseconds for a large file.  gdbm's close keeps the
        # GIL, os.close does not: the old anchor is closed after the lock is let go.
        if self._db is not None:
            self._db.close()
        if self._anchor >= 0:
            self.retired.append(self._anchor)
        self._db, self._anchor, self.identity = db, anchor, (info.st_dev, info.st_ino)
        self._opened += 1
        self._file = (db, self._opened)
        if self._journal < 0:
            flags = os.O_RDONLY if self.readonly else os.O_RDWR | os.O_CREAT | os.O_APPEND
            try:
                self._journal = open_regular(self.journal_path, flags)
            except FileNotFoundError:
                self._journal = -1  # read-only, and nobody ever wrote one
        self._overlay, self.journal_end = {}, 0
        self._read_journal()

    def _create_if_missing(self) -> None:
        """A new, empty gdbm file, made whole beside and renamed into place.

        Made in place, a full disk would leave a 0-byte file that no longer
        opens once space is freed.
        """
        if self.readonly or os.path.exists(self.base):
            return
        fd, temporary = fold.new_temporary(self.base)
        try:
            os.close(fd)
            self._gnu.open(temporary, "nu", FILE_MODE).close()
            os.rename(temporary, self.base)
        except (OSError, self._gnu.error) as error:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise StoreOpenError(f"cannot create gdbm file {self.base}: {error}") from None

    def _read_journal(self) -> None:
        """Read what was appended to the journal since we last looked; cut a torn tail."""
        if self._journal < 0:
            return
        size = os.fstat(self._journal).st_size
        if size <= self.journal_end:
            if size < self.journal_end:  # folded by another process: start again
                self.reopen()
            return
        data = os.pread(self._journal, size - self.journal_end, self.journal_end)
        try:
            decoded = journal.decode_blocks(data, self._overlay)
        except journal.JournalDamaged as error:
            raise StoreOpenError(f"{self.journal_path}: {error}; nothing was dropped: move the "
                                 f"journal aside to open the store without it") from None
        for damage in decoded.damaged:
            where = self.journal_end + damage.offset
            if where not in self._damage_told:
                self._damage_told.add(where)
                stderr_line(f"greylist: {self.journal_path}: damaged block at byte {where} "
                            f"({damage.length} bytes) skipped; the blocks after it are kept")
        self.journal_end += decoded.used
        if decoded.used < len(data) and not self.readonly:
            # A block torn by a writer that died: never acknowledged, so cut it.
            os.ftruncate(self._journal, self.journal_end)

    def refresh(self, files_may_be_replaced: bool = True) -> None:
        if files_may_be_replaced:
            try:
                info = os.stat(self.base)
                current = (info.st_dev, info.st_ino)
            except FileNotFoundError:
                current = None
            if current != self.identity:
                self.reopen()  # another process folded the journal into a new file
                return
        self._read_journal()

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
        found = {}
        try:
            for key in keys:
                found[key] = db.get(key)
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
        self._undo.append((key, self._overlay.get(key, _MISSING)))
        self._changes.append((key, value))
        self._overlay[key] = value

    def delete(self, key: bytes) -> None:
        if self.get(key) is None:
            return
        self._undo.append((key, self._overlay.get(key, _MISSING)))
        self._changes.append((key, None))
        self._overlay[key] = None

    def end(self) -> None:
        """The transaction's changes go to the journal in one write, before the lock is let go."""
        if not self._changes:
            return
        block = journal.encode_block(self._changes)
        try:
            write_all(self._journal, block, self.journal_path)
        except OSError:
            # Not in the journal: cut whatever part of the block was written, and forget it here.
            with contextlib.suppress(OSError):
                os.ftruncate(self._journal, self.journal_end)
            self.discard()
            raise
        self._changes, self._undo = [], []
        self.journal_end += len(block)

    def discard(self) -> None:
        """Take back this transaction's changes from the overlay, newest first."""
        for key, before in reversed(self._undo):
            if before is _MISSING:
                self._overlay.pop(key, None)
            else:
                self._overlay[key] = before
        self._changes, self._undo = [], []

    @property
    def pending(self) -> int:
        """Changes in the journal, not yet folded into the gdbm file."""
        return len(self._overlay)

    def truncate_journal(self) -> None:
        """After a fold put everything into the new file: an empty journal, the new file open."""
        os.ftruncate(self._journal, 0)
        self.reopen()

    # walking

    def scanner(self) -> Callable[[], Optional[list]]:
        # A handle of its own on the file as it is now: a fold during the walk
        # replaces the file but not this handle.  The overlay's keys come last.
        snapshot = self._gnu.open(self.base, "ru")
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

    def fold(self, hold: Hold, older_than: Optional[float] = None,
             progress: Optional[Callable[[int], None]] = None) -> int:
        """A new gdbm file from the old one and the journal, without entries stored before
        ``older_than``; returns how many went (see fold.py)."""
        if self.readonly:
            return 0
        return fold.fold(self, hold, older_than, progress)

    def compact(self, hold: Hold) -> None:
        self.fold(hold)

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
