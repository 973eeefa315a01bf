"""A fold's copy, and the protocol of the process that makes it for a large file.

The copy (``FoldCopy``) writes a new gdbm file: every entry of the old file,
overlaid with the journal's first bytes, leaving out entries stored before
``older_than``; then it brings the copy up to date with what the journal got
meanwhile, and closes and fsyncs it.

For a large file the copy runs in a process of its own, because gdbm's calls
keep Python's GIL (its sync, an fsync of the whole new file, too): in the
dispatcher they would hold up its threads.  The child is started as::

    python -c _CHILD BASE JOURNAL JOURNAL_END TEMPORARY OLDER_THAN PARENT_PID

prints ``progress N`` lines as it goes and ``built EXAMINED DROPPED`` at the
end, then takes orders on stdin, one a line, each answered with one line:

* ``apply START END``: apply the journal's bytes START..END and sync; answers ``applied``;
* ``apply-last START END``: the same without the sync (``finish`` syncs; this one
  runs while the dispatcher holds the store lock); answers ``applied``;
* ``finish``: close the file (gdbm syncs) and fsync it; answers ``finished``.

``Copier`` is the dispatcher's side: it runs the copy here for a small file
and in a child for a large one, and never waits for an answer while the store
lock is held for longer than ``UNDER_LOCK`` seconds.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
from typing import Callable, Optional, Tuple

from ...errors import GreylistError
from ..base import parse_timestamp
from . import journal
from .files import FILE_MODE, fsync_path

_PROGRESS_EVERY = 16384
# The copy is written out every this many entries (a few MB), not all at the
# end: during one sync of a whole new file (60 MB at a million entries) a
# decision in the dispatcher waited 18 ms, until the sync ended (measured).
_SYNC_EVERY = 65536
# gdbm files smaller than this are copied without a child process.  A copy made
# in the dispatcher holds the GIL in slices of 5 ms, each decision needing it a
# few times: a 2 MB file (20,000 entries) copied there made decisions wait up
# to 16 ms (measured); one of 256 KB is copied in a few milliseconds in all.
IN_PROCESS_BELOW = 256 << 10
# The longest the dispatcher waits for the child while it holds the store lock
# (the last changes and the final sync): past it the fold is given up, and mail
# goes on.  Outside the lock the child may take as long as the copy takes.
UNDER_LOCK = 2.0
_CHILD = "import sys; from greylist.stores.dbm.fold_copy import main; sys.exit(main(sys.argv[1:]))"


class FoldError(GreylistError, OSError):
    """The copy failed, or its process did not answer in time."""


class FoldCopy:
    """The new file being written: built from the old one, then brought up to date."""

    def __init__(self, base: str, journal_path: str, temporary: str, older_than: Optional[float]) -> None:
        import dbm.gnu

        self._gnu = dbm.gnu
        self.base, self.journal, self.temporary, self.older_than = base, journal_path, temporary, older_than
        self.target = None

    def _expired(self, raw: bytes) -> bool:
        if self.older_than is None:
            return False
        stamp = parse_timestamp(raw)
        return stamp is None or stamp < self.older_than

    def _journal_changes(self, start: int, end: int) -> dict:
        changes: dict = {}
        if end > start:
            fd = os.open(self.journal, os.O_RDONLY | os.O_CLOEXEC)
            try:
                journal.decode_blocks(os.pread(fd, end - start, start), changes)
            finally:
                os.close(fd)
        return changes

    def build(self, journal_end: int, progress: Optional[Callable[[int], None]] = None) -> tuple:
        """Copy the old file and the journal's first bytes; returns (examined, dropped)."""
        overlay = self._journal_changes(0, journal_end)
        examined = dropped = 0
        source = self._gnu.open(self.base, "ru")
        try:
            self.target = target = self._gnu.open(self.temporary, "nu", FILE_MODE)
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
        self.target.close()
        self.target = None
        fsync_path(self.temporary)

    def abandon(self) -> None:
        if self.target is not None:
            self.target.close()
            self.target = None


class Copier:
    """The dispatcher's side of a fold's copy: here for a small file, else in a child."""

    def __init__(self, base: str, journal_path: str, temporary: str, older_than: Optional[float],
                 stopping: Callable[[], bool]) -> None:
        self.base = base
        self._args = (base, journal_path, temporary, older_than)
        self._stopping = stopping
        self._here: Optional[FoldCopy] = None
        self._child: Optional[subprocess.Popen] = None

    def build(self, journal_end: int, progress: Optional[Callable[[int], None]]) -> Tuple[int, int]:
        base, journal_path, temporary, older_than = self._args
        if sys.executable and os.path.getsize(base) + journal_end >= IN_PROCESS_BELOW:
            package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
                os.path.abspath(__file__)))))
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(
                filter(None, [package_root, os.environ.get("PYTHONPATH")])))
            command = [sys.executable, "-c", _CHILD, base, journal_path, str(journal_end), temporary,
                       "-" if older_than is None else repr(float(older_than)), str(os.getpid())]
            try:
                # Unbuffered: the answers are waited for with poll, with a deadline.
                self._child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                               stderr=subprocess.PIPE, env=env, close_fds=True,
                                               bufsize=0)
            except OSError:
                self._child = None  # no interpreter to start (embedded Python): copy here
        if self._child is None:
            self._here = FoldCopy(base, journal_path, temporary, older_than)
            return self._here.build(journal_end, progress)
        while True:
            words = self._answer(timeout=1.0)
            if words is None:
                continue
            if words[0] == b"progress":
                if progress is not None:
                    progress(int(words[1]))
            elif words[0] == b"built":
                return int(words[1]), int(words[2])

    def _answer(self, timeout: float, give_up: bool = False) -> Optional[list]:
        """The child's next line, or None when ``timeout`` passed (``give_up``: raise then).

        Between two waits, a store that is closing stops the copy.
        """
        waiter = select.poll()
        waiter.register(self._child.stdout.fileno(), select.POLLIN)
        if not waiter.poll(timeout * 1000):
            if give_up:
                raise FoldError(f"folding {self.base}: no answer from the copying process "
                                f"within {timeout:g} s; the fold is given up")
            if self._stopping():
                raise FoldError(f"folding {self.base}: stopped, the store is closing")
            return None
        line = self._child.stdout.readline()
        if not line.strip():
            self._child.wait()
            errors = self._child.stderr.read().decode("utf-8", "replace").strip().splitlines()
            raise FoldError(f"folding {self.base} failed: "
                            f"{errors[-1] if errors else f'exit {self._child.returncode}'}")
        return line.split()

    def _order(self, order: str, answer: bytes, under_lock: bool) -> None:
        self._child.stdin.write(order.encode() + b"\n")
        self._child.stdin.flush()
        while True:
            words = self._answer(UNDER_LOCK if under_lock else 1.0, give_up=under_lock)
            if words is not None and words[0] == answer:
                return

    def apply(self, start: int, end: int, last: bool = False) -> None:
        """Apply journal bytes start..end to the copy; ``last``: under the lock, just before finish."""
        if self._here is not None:
            self._here.apply(start, end, sync=not last)
        else:
            self._order(f"{'apply-last' if last else 'apply'} {start} {end}", b"applied", last)

    def finish(self) -> None:
        """Under the lock: close and fsync the copy."""
        if self._here is not None:
            self._here.finish()
        else:
            self._order("finish", b"finished", under_lock=True)

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


# --- the child ---------------------------------------------------------------------


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
    base, journal_path, journal_end, temporary, older_than, parent = argv
    _die_with(int(parent))
    try:
        os.nice(10)  # mail first
    except (OSError, AttributeError):
        pass

    def report(count: int) -> None:
        print(f"progress {count}", flush=True)

    copy = FoldCopy(base, journal_path, temporary, None if older_than == "-" else float(older_than))
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
