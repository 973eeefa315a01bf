"""The copy half of a gdbm fold, run in a process of its own for a large file.

``python -m greylist.stores.gdbm_fold BASE JOURNAL JOURNAL_END TEMPORARY OLDER_THAN PARENT_PID``
writes TEMPORARY: every entry of the gdbm file BASE, overlaid with the
changes in the first JOURNAL_END bytes of JOURNAL, leaving out entries
stored before OLDER_THAN (``-``: none), then syncs it.  It prints
``progress N`` lines as it goes and ``built EXAMINED DROPPED`` at the end,
then takes orders on stdin, one a line, each answered with one line:

* ``apply START END``: apply the journal's bytes START..END (what was
  appended meanwhile) and sync; answers ``applied``;
* ``apply-last START END``: the same without the sync (``finish`` syncs,
  and this one runs while the dispatcher holds the store lock);
* ``finish``: close the file (gdbm syncs) and fsync it; answers ``finished``.

Why a process: gdbm's calls keep Python's GIL (its sync, an fsync of the
whole new file, too) and its bucket cache grows with the file; in a process
of its own, the copy of a million entries neither holds up the dispatcher's
threads nor grows the dispatcher's memory.  It reads and writes without
gdbm's memory mapping (see gdbm_memory), so it stays small itself.  The
dispatcher holds the store lock only for the last ``apply`` and ``finish``
and the rename.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, Optional

_PROGRESS_EVERY = 16384
# The copy is written out every this many entries (a few MB), not all at the
# end: during one sync of a whole new file (60 MB at a million entries) a
# decision in the dispatcher waited 18 ms, until the sync ended (measured).
_SYNC_EVERY = 65536


class FoldCopy:
    """The new file being written: built from the old one, then brought up to date."""

    def __init__(self, base: str, journal: str, temporary: str, older_than: Optional[float],
                 unmapped: bool = False) -> None:
        import dbm.gnu

        self._gnu = dbm.gnu
        self.base, self.journal, self.temporary, self.older_than = base, journal, temporary, older_than
        self.unmapped = unmapped
        self.target = None

    def _expired(self, raw: bytes) -> bool:
        from . import parse_timestamp

        if self.older_than is None:
            return False
        stamp = parse_timestamp(raw)
        return stamp is None or stamp < self.older_than

    def _journal_changes(self, start: int, end: int) -> dict:
        from .dbm import _decode_blocks

        changes: dict = {}
        if end > start:
            fd = os.open(self.journal, os.O_RDONLY | os.O_CLOEXEC)
            try:
                _decode_blocks(os.pread(fd, end - start, start), changes)
            finally:
                os.close(fd)
        return changes

    def build(self, journal_end: int, progress: Optional[Callable[[int], None]] = None) -> tuple:
        """Copy the old file and the journal's first bytes; returns (examined, dropped)."""
        from .dbm import _FILE_MODE
        from .gdbm_memory import unmap

        overlay = self._journal_changes(0, journal_end)
        examined = dropped = 0
        source = self._gnu.open(self.base, "ru")
        try:
            self.target = target = self._gnu.open(self.temporary, "nu", _FILE_MODE)
            if self.unmapped:
                # Neither file mapped: a copy of a million entries then peaks at
                # about 20 MB instead of 190 MB, and takes 6 s instead of 2 s, in
                # the background (measured; the lock is not held meanwhile).  If
                # the handles cannot be reached, the dispatcher has said so already.
                # A small file copied in the dispatcher itself stays mapped: it
                # costs little memory, and mapped it is copied 3 times faster.
                unmap(source, self.base)
                unmap(target, self.temporary)
            key = source.firstkey()
            while key is not None:
                if key not in overlay:
                    value = source[key]
                    if self._expired(value):
                        dropped += 1
                    else:
                        target[key] = value
                key = source.nextkey(key)
                examined += 1
                if examined % _PROGRESS_EVERY == 0:
                    if progress is not None:
                        progress(examined)
                    if examined % _SYNC_EVERY == 0:
                        target.sync()
        finally:
            source.close()
        for key, value in overlay.items():
            if value is None:
                continue
            examined += 1
            if self._expired(value):
                dropped += 1
            else:
                target[key] = value
        target.sync()
        return examined, dropped

    def apply(self, start: int, end: int, sync: bool = True) -> None:
        """Bring the new file up to date with what the journal got meanwhile.

        ``sync``: write it out now, so that the sync of ``finish``, made
        while the store is locked, finds little left to do.
        """
        for key, value in self._journal_changes(start, end).items():
            if value is None:
                try:
                    del self.target[key]
                except KeyError:
                    pass
            else:
                self.target[key] = value
        if sync:
            self.target.sync()

    def finish(self) -> None:
        """Close the new file and make it durable."""
        from .dbm import _fsync

        self.target.close()
        self.target = None
        _fsync(self.temporary)

    def abandon(self) -> None:
        if self.target is not None:
            self.target.close()
            self.target = None


def _die_with(parent: int) -> None:
    """Be killed when the process that started us dies (Linux), so no copy outlives its fold."""
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # it died before we asked
        sys.exit(1)


def main(argv: list) -> int:
    base, journal, journal_end, temporary, older_than, parent = argv
    _die_with(int(parent))
    try:
        os.nice(10)  # mail first
    except (OSError, AttributeError):
        pass

    def report(count: int) -> None:
        print(f"progress {count}", flush=True)

    copy = FoldCopy(base, journal, temporary, None if older_than == "-" else float(older_than),
                    unmapped=True)
    examined, dropped = copy.build(int(journal_end), report)
    print(f"built {examined} {dropped}", flush=True)
    for line in sys.stdin:
        order = line.split()
        if order[:1] in (["apply"], ["apply-last"]):
            copy.apply(int(order[1]), int(order[2]), sync=order[0] == "apply")
            print("applied", flush=True)
        elif order[:1] == ["finish"]:
            copy.finish()
            print("finished", flush=True)
            return 0
    copy.abandon()  # the dispatcher went away: no fold
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
