"""The copy half of a gdbm fold, run in a process of its own.

``python -m greylist.stores.gdbm_fold BASE JOURNAL JOURNAL_END TEMPORARY OLDER_THAN PARENT_PID``
writes TEMPORARY: every entry of the gdbm file BASE, overlaid with the
changes in the first JOURNAL_END bytes of JOURNAL, leaving out entries
stored before OLDER_THAN (``-``: none), then fsyncs it.  It prints
``progress N`` lines as it goes and ``done EXAMINED DROPPED`` at the end.

Why a process: gdbm's calls keep Python's GIL (its sync, an fsync of the
whole new file, too) and its bucket cache grows with the file; in a process
of its own, the copy of a million entries neither holds up the dispatcher's
threads nor grows the dispatcher's memory.  The dispatcher takes the lock
only to add what was appended meanwhile and rename the new file into place.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, Optional, Tuple

_PROGRESS_EVERY = 16384


def build(base: str, journal: str, journal_end: int, temporary: str, older_than: Optional[float],
          progress: Optional[Callable[[int], None]] = None) -> Tuple[int, int]:
    """Write the folded file; returns (entries examined, entries dropped as expired)."""
    import dbm.gnu

    from . import parse_timestamp
    from .dbm import _FILE_MODE, _decode_blocks

    overlay: dict = {}
    if journal_end:
        fd = os.open(journal, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _decode_blocks(os.pread(fd, journal_end, 0), overlay)
        finally:
            os.close(fd)

    def expired(raw: bytes) -> bool:
        if older_than is None:
            return False
        stamp = parse_timestamp(raw)
        return stamp is None or stamp < older_than

    examined = dropped = 0
    source = dbm.gnu.open(base, "ru")
    try:
        target = dbm.gnu.open(temporary, "nu", _FILE_MODE)
        try:
            key = source.firstkey()
            while key is not None:
                if key not in overlay:
                    value = source[key]
                    if expired(value):
                        dropped += 1
                    else:
                        target[key] = value
                key = source.nextkey(key)
                examined += 1
                if progress is not None and examined % _PROGRESS_EVERY == 0:
                    progress(examined)
            for key, value in overlay.items():
                if value is None:
                    continue
                examined += 1
                if expired(value):
                    dropped += 1
                else:
                    target[key] = value
        finally:
            target.close()  # gdbm writes out its cache and syncs
    finally:
        source.close()
    fd = os.open(temporary, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return examined, dropped


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
    with_nice = getattr(os, "nice", None)
    if with_nice is not None:
        try:
            with_nice(10)  # mail first
        except OSError:
            pass

    def report(count: int) -> None:
        print(f"progress {count}", flush=True)

    examined, dropped = build(base, journal, int(journal_end), temporary,
                              None if older_than == "-" else float(older_than), report)
    print(f"done {examined} {dropped}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
