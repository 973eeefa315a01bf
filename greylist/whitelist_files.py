"""Whitelist files: read at start, read again whenever one of them changes, never on mail's time.

A file is checked with one ``stat`` per message; when its modification
time, size or inode changed, it is read again in a thread of its own and the
new whitelist swapped in when it is whole.  The message that noticed waits
for it ``RELOAD_WAIT`` seconds at most (enough for a file of thousands of
lines), and every other message meanwhile is decided with the last whole
whitelist: a million-line file read again costs mail nothing.

A file written twice within the same tick of the file system's clock (a
second on some) may keep its time and size: a file whose time was that
close to when it was read is read once more, ``RACY`` seconds later.

A file that cannot be read later on (deleted, half-written by an editor that
does not rename, replaced by a FIFO) keeps its last good entries and gets
one log line, so that editing a whitelist never stops or changes mail by
accident.  A whitelist file must be a regular file of at most
``LIMIT`` bytes.

``builtin:NAME`` names a file shipped with courier-greylist (in
``greylist/data/NAME.txt``), such as ``builtin:pool-senders``.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from typing import Callable, Dict, NamedTuple, Optional, Sequence, Tuple

from .errors import GreylistError
from .safe_files import read_with_stat
from .whitelist import Whitelist, parse_lines

BUILTIN_PREFIX = "builtin:"
DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
LIMIT = 64 << 20  # about four million entries
RELOAD_WAIT = 0.1  # seconds the message that noticed a change waits for it to be read
RACY = 2.0  # seconds: a file modified this close to its reading is read once more
NOT_THERE_YET = "does not exist yet; read when it appears"


class WhitelistFileError(GreylistError):
    """A whitelist file named in the settings cannot be read at start (one that does not
    exist yet is not an error: it is read when it appears)."""


def resolve(path: str) -> str:
    """The file a ``whitelist_files`` entry names."""
    if path.startswith(BUILTIN_PREFIX):
        return os.path.join(DATA_DIR, path[len(BUILTIN_PREFIX):] + ".txt")
    return path


def builtin_names() -> list:
    """The names ``builtin:`` accepts."""
    try:
        return sorted(name[:-4] for name in os.listdir(DATA_DIR) if name.endswith(".txt"))
    except OSError:
        return []


Signature = Tuple[int, int, int]  # modification time (ns), size, inode


def _signature(info: os.stat_result) -> Signature:
    return info.st_mtime_ns, info.st_size, info.st_ino


class _Read(NamedTuple):
    """One file as last read."""

    signature: Optional[Signature]  # None: not there yet
    whitelist: Whitelist
    digest: bytes = b""
    read_at: float = 0.0
    settled: bool = True  # its time was well before its reading: the signature can be trusted


def _yielding(lines: Sequence[str], every: int = 64):
    """The lines, letting other threads run every few hundred: a message waiting for the
    interpreter then waits microseconds for a reading in the background, not milliseconds."""
    for start in range(0, len(lines), every):
        time.sleep(0)
        yield from lines[start:start + every]


class WhitelistFiles:
    """The settings' whitelist plus the entries of the whitelist files, kept current."""

    def __init__(self, base: Whitelist, paths: Sequence[str], log: Callable[[str], None],
                 clock: Callable[[], float] = time.time) -> None:
        """Read every file now; raises WhitelistFileError if one exists but cannot be read."""
        self._base = base
        self._paths = [resolve(path) for path in paths]
        self._log = log
        self._clock = clock
        self._files: Dict[str, _Read] = {}
        self._broken: Dict[str, str] = {}
        self._unreadable: Dict[str, Signature] = {}  # what a file was when reading it failed
        self._reloading = threading.Lock()
        self._reload_thread: Optional[threading.Thread] = None
        for path in self._paths:
            try:
                self._files[path] = self._read(path)
            except FileNotFoundError:
                # Not there yet (a list the postmaster means to write): mail flows,
                # and the file is read when it appears.
                self._files[path] = _Read(None, Whitelist())
                self._report(path, NOT_THERE_YET)
            except OSError as error:
                raise WhitelistFileError(f"whitelist file {path}: {error.strerror or error}") from None
        self._merged = self._merge()

    def _read(self, path: str) -> _Read:
        read_at = self._clock()
        data, info = read_with_stat(path, LIMIT)
        whitelist, problems = parse_lines(_yielding(data.decode("utf-8", "replace").splitlines()))
        for number, problem in problems:
            self._log(f"greylist: {path}:{number}: {problem}; line ignored")
        settled = info.st_mtime_ns / 1e9 < read_at - RACY
        return _Read(_signature(info), whitelist, hashlib.sha256(data).digest(), read_at, settled)

    def _merge(self) -> Whitelist:
        merged = Whitelist()
        merged.extend(self._base)
        for read in self._files.values():
            merged.extend(read.whitelist)
        return merged

    def current(self) -> Whitelist:
        """The whitelist as the files are now, or as they were until a reading in progress ends."""
        if not self._paths:
            return self._merged
        due = [(path, signature) for path in self._paths for signature in self._changed(path)]
        if due and self._reloading.acquire(blocking=False):
            thread = threading.Thread(target=self._reload, args=(due,), name="greylist-whitelist",
                                      daemon=True)
            self._reload_thread = thread
            thread.start()
            thread.join(RELOAD_WAIT)
        return self._merged

    def _changed(self, path: str) -> Tuple[Signature, ...]:
        """``(signature,)`` when ``path`` must be read again, else ``()``: one stat.

        A file gone is reported, not read; one that could not be read is tried
        again only once it changed again.
        """
        known = self._files[path]
        try:
            signature = _signature(os.stat(path))
        except FileNotFoundError:
            if known.signature is not None:
                self._report(path, "cannot read it any more (No such file or directory); "
                                   "keeping its last entries")
            return ()
        except OSError as error:
            self._report(path, f"cannot read it any more ({error.strerror}); keeping its last entries")
            return ()
        if signature != known.signature:
            return () if self._unreadable.get(path) == signature else (signature,)
        return (signature,) if not known.settled and self._clock() >= known.read_at + RACY else ()

    def _reload(self, due: Sequence[Tuple[str, Signature]]) -> None:
        try:
            changed = False
            for path, signature in due:
                before = self._files[path]
                try:
                    read = self._read(path)
                except OSError as error:
                    self._unreadable[path] = signature
                    self._report(path, f"cannot read it ({error.strerror or error}); "
                                       f"keeping its last entries")
                    continue
                self._unreadable.pop(path, None)
                self._broken.pop(path, None)
                if read.digest == before.digest:  # touched, or read again only to be sure
                    self._files[path] = before._replace(signature=read.signature, read_at=read.read_at,
                                                        settled=read.settled)
                    continue
                self._files[path] = read
                self._log(f"greylist: whitelist file {path} read again")
                changed = True
            if changed:
                self._merged = self._merge()
        finally:
            self._reloading.release()

    def wait_for_reload(self, timeout: float = 60.0) -> None:
        """Until a reading in progress has ended (for commands and tests; mail never waits here)."""
        thread = self._reload_thread
        if thread is not None:
            thread.join(timeout)

    def _report(self, path: str, message: str) -> None:
        if self._broken.get(path) != message:  # one line per change of state, not per message
            self._broken[path] = message
            self._log(f"greylist: whitelist file {path}: {message}")
