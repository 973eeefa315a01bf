"""Whitelist files: read at start, read again whenever one of them changes.

A file is checked with one ``stat`` per message; when its modification
time, size or inode changed, it is read again and the whitelist rebuilt.  A
file that cannot be read later on (deleted, half-written by an editor that
does not rename) keeps its last good entries and gets one log line, so that
editing a whitelist never stops or changes mail by accident.

``builtin:NAME`` names a file shipped with courier-greylist (in
``greylist/data/NAME.txt``), such as ``builtin:pool-senders``.
"""

from __future__ import annotations

import os
import threading
from typing import Callable, Dict, Optional, Sequence, Tuple

from .whitelist import Whitelist, parse_lines

BUILTIN_PREFIX = "builtin:"
DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


class WhitelistFileError(Exception):
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


def _signature(path: str) -> Tuple[int, int, int]:
    info = os.stat(path)
    return info.st_mtime_ns, info.st_size, info.st_ino


class WhitelistFiles:
    """The settings' whitelist plus the entries of the whitelist files, kept current."""

    def __init__(self, base: Whitelist, paths: Sequence[str],
                 log: Callable[[str], None]) -> None:
        """Read every file now; raises WhitelistFileError if one exists but cannot be read."""
        self._base = base
        self._paths = [resolve(path) for path in paths]
        self._log = log
        self._files: Dict[str, Tuple[Optional[Tuple[int, int, int]], Whitelist]] = {}
        self._broken: Dict[str, str] = {}
        self._lock = threading.Lock()
        for path in self._paths:
            try:
                self._files[path] = self._read(path)
            except FileNotFoundError:
                # Not there yet (a list the postmaster means to write): mail flows,
                # and the file is read when it appears.
                self._files[path] = (None, Whitelist())
                self._report(path, "does not exist yet; read when it appears")
            except OSError as error:
                raise WhitelistFileError(f"whitelist file {path}: {error.strerror or error}") from None
        self._merged = self._merge()

    def _read(self, path: str) -> Tuple[Tuple[int, int, int], Whitelist]:
        signature = _signature(path)
        with open(path, encoding="utf-8", errors="replace") as handle:
            whitelist, problems = parse_lines(handle)
        for number, problem in problems:
            self._log(f"greylist: {path}:{number}: {problem}; line ignored")
        return signature, whitelist

    def _merge(self) -> Whitelist:
        merged = Whitelist()
        merged.extend(self._base)
        for _, whitelist in self._files.values():
            merged.extend(whitelist)
        return merged

    def current(self) -> Whitelist:
        """The whitelist as the files are now (reads a file again if it changed)."""
        if not self._paths:
            return self._merged
        changed = False
        for path in self._paths:
            try:
                signature = _signature(path)
            except FileNotFoundError:
                if self._files[path][0] is not None:
                    self._report(path, "cannot read it any more (No such file or directory); "
                                       "keeping its last entries")
                continue
            except OSError as error:
                self._report(path, f"cannot read it any more ({error.strerror}); "
                                   f"keeping its last entries")
                continue
            if signature == self._files[path][0]:
                continue
            with self._lock:
                if signature == self._files[path][0]:
                    continue  # another thread read it meanwhile
                try:
                    self._files[path] = self._read(path)
                except OSError as error:
                    self._report(path, f"cannot read it ({error.strerror}); keeping its last entries")
                    continue
                self._broken.pop(path, None)
                self._log(f"greylist: whitelist file {path} read again")
                changed = True
        if changed:
            self._merged = self._merge()
        return self._merged

    def _report(self, path: str, message: str) -> None:
        if self._broken.get(path) != message:  # one line per change of state, not per message
            self._broken[path] = message
            self._log(f"greylist: whitelist file {path}: {message}")
