"""How a fold replaces a gdbm file: the journal folded in, expired entries left out.

1. Under the lock, note where the journal ends and which file is current.
2. Outside it, copy the file and that much of the journal into a new file of
   this fold's own (``fold_copy.py``; a child process for a large file).
3. Outside it, catch up with what mail appended meanwhile, in rounds, until
   little is left (each round is shorter than the one before as long as the
   copy applies changes faster than mail makes them: at a million triplets
   and 10,000-14,000 decisions/s, rounds of 377, 109, 45, 22, 12, 8 and 1 ms).
4. Under the lock: apply the rest, fsync the new file, rename it over the old
   one, count the fold in the lock file, fsync the directory, empty the journal.

A kill at any point leaves the old file and the whole journal, or the new
file (with or without the journal, whose changes it then holds already).
Another process's fold that won the race makes this one give up (step 3/4
see another file), and so does a store that is closing.
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable, Optional, Protocol, Tuple

from .files import create_temporary, fsync_path, remove_stale_temporaries
from .fold_copy import Copier
from .hold import Hold

_CATCH_UP_ROUNDS = 12
_LEFT_FOR_THE_LOCK = 4096  # bytes of journal (about 70 changes) applied under the lock
_PURPOSE = "fold"


class Journaled(Protocol):
    """What a fold reads and does of the gdbm table whose file it replaces (gdbm_table.py)."""

    base: str  # the gdbm file
    journal_path: str
    journal_end: int  # bytes of the journal the table has read
    identity: Optional[Tuple[int, int]]  # (device, inode) of the file the table has open

    @property
    def pending(self) -> int: ...

    def truncate_journal(self) -> None: ...


def new_temporary(base: str) -> tuple:
    """A new file of this operation's own beside ``base``: (descriptor, path)."""
    remove_stale_temporaries(base, _PURPOSE)
    return create_temporary(base, _PURPOSE)


def fold(table: Journaled, hold: Hold, older_than: Optional[float],
         progress: Optional[Callable[[int], None]]) -> int:
    """Replace the table's file by one holding the journal and no entry stored before
    ``older_than`` (None: keep all); returns how many entries were left out."""
    with hold.locked():
        if not table.pending and older_than is None:
            return 0
        identity, copied_to = table.identity, table.journal_end
    fd, temporary = new_temporary(table.base)
    os.close(fd)  # gdbm writes it; the name is ours alone
    copier = Copier(table.base, table.journal_path, temporary, older_than, hold.closing.is_set)
    try:
        examined, dropped = copier.build(copied_to, progress)
        for _ in range(_CATCH_UP_ROUNDS):
            with hold.locked():
                if table.identity != identity:
                    return 0  # another process folded first
                appended_to = table.journal_end
            if appended_to - copied_to <= _LEFT_FOR_THE_LOCK or hold.closing.is_set():
                break
            copier.apply(copied_to, appended_to)
            copied_to = appended_to
        with hold.locked():
            if table.identity != identity:
                return 0
            if table.journal_end > copied_to:
                copier.apply(copied_to, table.journal_end, last=True)
            copier.finish()
            hold.note_write()  # others re-read
            os.rename(temporary, table.base)
            hold.count_fold()
            fsync_path(os.path.dirname(table.base) or ".")
            table.truncate_journal()
        if progress is not None:
            progress(examined)
    finally:
        copier.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
    return dropped
