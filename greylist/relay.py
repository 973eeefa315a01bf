"""Courier's smtpaccess database: is this client a RELAYCLIENT?

``makesmtpaccess`` compiles ``/etc/courier/smtpaccess/*`` into
``smtpaccess.dat``, a dbm file whose keys are addresses and address
prefixes (``192.168``, ``:2001:0db8``), values the settings
(``allow,RELAYCLIENT``).  The lookup here is courier.config's (most specific
prefix first), but the file is opened once and again only when it changes,
not on every message.
"""

from __future__ import annotations

import dbm
import errno
import ipaddress
import os
import threading
from typing import Callable, Optional, Tuple

from .errors import GreylistError
from .safe_files import dbm_flavour


class SmtpAccessError(GreylistError):
    """The smtpaccess database cannot be read."""


def default_path() -> str:
    """Where Courier keeps smtpaccess.dat (courier-config's sysconfdir)."""
    try:
        import courier.config

        sysconfdir = courier.config.sysconfdir
    except (ImportError, AttributeError):
        sysconfdir = "/etc/courier"
    return os.path.join(sysconfdir, "smtpaccess.dat")


def lookup_keys(address: ipaddress._BaseAddress) -> list:
    """The keys to try for an address, most specific first, as Courier writes them."""
    if address.version == 4:
        parts = str(address).split(".")
        return [".".join(parts[:n]) for n in range(4, 0, -1)]
    parts = address.exploded.split(":")
    return [":" + ":".join(parts[:n]) for n in range(8, 0, -1)]


def _signature(path: str) -> Tuple[int, int, int]:
    """What changes when the database at ``path`` is rebuilt: its file's time, size and inode.

    Courier's makedat writes one file (gdbm or Berkeley DB) and renames it into
    place; a database in dbm.dumb's flavour, which stdlib ``dbm.open`` reads
    too, is ``path.dat`` plus its index ``path.dir``, written last.
    """
    for candidate in (path, path + ".dir"):
        try:
            info = os.stat(candidate)
        except FileNotFoundError:
            continue
        return info.st_mtime_ns, info.st_size, info.st_ino
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)


class SmtpAccess:
    """The smtpaccess database, re-opened when makesmtpaccess replaces it."""

    def __init__(self, path: str, log: Callable[[str], None] = lambda line: None) -> None:
        """Open the database now; raises SmtpAccessError when it cannot be read.

        Later, a database that cannot be opened again (being replaced, or
        replaced by something that is not a database) keeps the last good
        copy, with one ``log`` line until it opens again.
        """
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
            raise SmtpAccessError(f"cannot read {self.path}: {error}{hint}") from None
        old, self._db = self._db, db
        self._signature = signature
        if old is not None:
            old.close()

    def value(self, address: ipaddress._BaseAddress) -> Optional[str]:
        """The smtpaccess value that applies to an address, or None."""
        with self._lock:
            try:
                if _signature(self.path) != self._signature:
                    self._open()
                    if self._failing is not None:
                        self._failing = None
                        self._log(f"greylist: {self.path} read again")
            except (OSError, SmtpAccessError) as error:
                # Keep the last good copy while the file is being replaced; say so
                # once, unless it is only missing for the moment of a rename.
                problem = str(error)
                if problem != self._failing and not isinstance(error, FileNotFoundError):
                    self._failing = problem
                    self._log(f"greylist: {problem}; keeping the last good copy")
            for key in lookup_keys(address):
                raw = self._db.get(key.encode("ascii"))
                if raw is not None:
                    return raw.decode("latin-1")
        return None

    def is_relay_client(self, address: ipaddress._BaseAddress) -> bool:
        """True when Courier's smtpaccess sets RELAYCLIENT for the address."""
        value = self.value(address)
        if value is None:
            return False
        return any(item.strip().split("=", 1)[0] == "RELAYCLIENT" for item in value.split(","))

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
