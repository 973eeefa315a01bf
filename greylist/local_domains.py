"""Which mail domains are ours: Courier's ``locals`` and ``hosteddomains``.

``whitelist_replies`` records our users' mail to *remote* recipients only:
a pair recorded for one of our own addresses would let a forger who writes
as that address from outside reach the user without greylisting (forging
the recipient's own domain is a spammer's oldest trick).

The rules are courier(8)'s, as courier.config's ``is_local`` and
``is_hosteddomain`` apply them: a ``locals`` line is a domain, ``.suffix``
(every domain under it) or ``!domain`` (not local); without ``locals`` the
``me`` file's name (else the host's) is the one local domain.
``hosteddomains.dat`` (``makehosteddomains``) holds domains and ``.suffix``
keys.  The files are read again when they change.
"""

from __future__ import annotations

import os
import threading
from typing import Callable, Optional, Tuple

from .courier_db import CourierDatabase, CourierDatabaseError, me, sysconfdir
from .safe_files import read_regular

_LIMIT = 1 << 20  # a locals file larger than this is not one


def _signature(path: str) -> Optional[Tuple[int, int, int]]:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return info.st_mtime_ns, info.st_size, info.st_ino


class LocalDomains:
    """Asks Courier's configuration whether a domain is ours."""

    def __init__(self, directory: Optional[str] = None,
                 log: Callable[[str], None] = lambda line: None) -> None:
        directory = directory or sysconfdir()
        self._log = log
        self._locals_path = os.path.join(directory, "locals")
        self._directory = directory
        self._hosted_path = os.path.join(directory, "hosteddomains.dat")
        self._lock = threading.Lock()
        self._locals_signature: object = ()
        self._rules: Tuple[str, ...] = ()
        self._hosted: Optional[CourierDatabase] = None

    def _read_locals(self) -> None:
        signature = _signature(self._locals_path)
        if signature == self._locals_signature:
            return
        self._locals_signature = signature
        try:
            if signature is None:  # courier(8): without locals, me is the local domain
                self._rules = (me(self._directory).lower(),)
                return
            text = read_regular(self._locals_path, _LIMIT).decode("utf-8", "replace")
        except OSError as error:
            self._log(f"greylist: cannot read {self._locals_path}: {error}; keeping what was read before")
            return
        self._rules = tuple(line.strip().lower() for line in text.splitlines()
                            if line.strip() and not line.startswith("#"))

    def _hosted_has(self, domain: str) -> bool:
        if self._hosted is None:
            if not (os.path.exists(self._hosted_path) or os.path.exists(self._hosted_path + ".dir")):
                return False  # (".dir": a database in dbm.dumb's flavour, which dbm.open reads too)
            try:
                self._hosted = CourierDatabase(self._hosted_path, self._log)
            except CourierDatabaseError as error:
                self._log(f"greylist: {error}")
                return False
        parts = domain.split(".")
        keys = [domain] + ["." + ".".join(parts[n:]) for n in range(1, len(parts))]
        return self._hosted.first(keys) is not None

    def is_local(self, domain: str) -> bool:
        """True when Courier delivers mail for ``domain`` here (local or hosted)."""
        domain = domain.lower().rstrip(".")
        with self._lock:
            self._read_locals()
            for rule in self._rules:
                if rule.startswith("!") and rule[1:] == domain:
                    return False
                if (rule.startswith(".") and domain.endswith(rule)) or rule == domain:
                    return True
            return self._hosted_has(domain)

    def remote(self, addresses) -> Tuple[str, ...]:
        """Those of ``addresses`` whose domain is not ours (an address without a domain is ours)."""
        return tuple(address for address in addresses
                     if "@" in address and not self.is_local(address.rsplit("@", 1)[1]))
