"""A dbm database of Courier's (``makedat``'s: smtpaccess.dat, hosteddomains.dat), kept open.

Courier's makedat writes one file (gdbm or Berkeley DB) and renames it into
place.  The file is opened once, and again only when it changes, not on
every message; a copy that cannot be opened again (being replaced, or
replaced by something that is not a database) keeps the last good one, with
one log line until it opens again.
"""

from __future__ import annotations

import dbm
import errno
import os
import socket
import threading
from typing import Callable, Iterable, Optional, Tuple

from .errors import GreylistError
from .safe_files import dbm_flavour, read_regular


def sysconfdir() -> str:
    """Courier's configuration directory (courier-config's sysconfdir)."""
    try:
        import courier.config

        return courier.config.sysconfdir
    except (ImportError, AttributeError):
        return "/etc/courier"


def me(directory: Optional[str] = None) -> str:
    """Courier's name for this host (the ``me`` file's first line), else the system's."""
    try:
        name = read_regular(os.path.join(directory or sysconfdir(), "me"), 4096).decode("utf-8", "replace")
    except OSError:
        name = ""
    return name.split("\n", 1)[0].strip() or socket.gethostname()


class CourierDatabaseError(GreylistError):
    """A database of Courier's cannot be read."""


def _signature(path: str) -> Tuple[int, int, int]:
    """What changes when the database at ``path`` is rebuilt: its file's time, size and inode.

    A database in dbm.dumb's flavour, which stdlib ``dbm.open`` reads too, is
    ``path.dat`` plus its index ``path.dir``, written last.
    """
    for candidate in (path, path + ".dir"):
        try:
            info = os.stat(candidate)
        except FileNotFoundError:
            continue
        return info.st_mtime_ns, info.st_size, info.st_ino
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)


class CourierDatabase:
    """One of Courier's dbm databases, re-opened when it is rebuilt."""

    error = CourierDatabaseError  # what a database that cannot be read raises (a subclass names it)

    def __init__(self, path: str, log: Callable[[str], None] = lambda line: None) -> None:
        """Open the database now; raises CourierDatabaseError when it cannot be read."""
        self.path = path
        self._log = log
        self._lock = threading.Lock()
        self._db = None
        self._signature: Optional[Tuple[int, int, int]] = None
        self._failing: Optional[str] = None
        self._open()

    def _open(self) -> None:
        try:
            signature = _signature(self.path)
            dbm_flavour(self.path, follow_links=True)  # a FIFO there would block dbm.open forever
            db = dbm.open(self.path, "r")
        except (OSError, ImportError, *dbm.error) as error:
            hint = ""
            if "dbm.gnu" in str(error) or isinstance(error, ImportError):
                hint = " (install python3-gdbm: Courier writes it with gdbm)"
            raise self.error(f"cannot read {self.path}: {error}{hint}") from None
        old, self._db = self._db, db
        self._signature = signature
        if old is not None:
            old.close()

    def first(self, keys: Iterable[str]) -> Optional[str]:
        """The value of the first of ``keys`` the database has, or None."""
        with self._lock:
            try:
                if _signature(self.path) != self._signature:
                    self._open()
                    if self._failing is not None:
                        self._failing = None
                        self._log(f"greylist: {self.path} read again")
            except (OSError, CourierDatabaseError) as error:
                # Keep the last good copy while the file is being replaced; say so
                # once, unless it is only missing for the moment of a rename.
                problem = str(error)
                if problem != self._failing and not isinstance(error, FileNotFoundError):
                    self._failing = problem
                    self._log(f"greylist: {problem}; keeping the last good copy")
            for key in keys:
                raw = self._db.get(key.encode("utf-8", "surrogateescape"))
                if raw is not None:
                    return raw.decode("latin-1")
        return None

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
