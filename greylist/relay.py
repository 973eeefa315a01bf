"""Courier's smtpaccess database: is this client a RELAYCLIENT?

``makesmtpaccess`` compiles ``/etc/courier/smtpaccess/*`` into
``smtpaccess.dat``, a dbm file whose keys are addresses and address
prefixes (``192.168``, ``:2001:0db8``), values the settings
(``allow,RELAYCLIENT``).  The lookup here is courier.config's (most specific
prefix first), but the file is opened once and again only when it changes,
not on every message.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Optional

from .courier_db import CourierDatabase, CourierDatabaseError, sysconfdir


class SmtpAccessError(CourierDatabaseError):
    """The smtpaccess database cannot be read."""


def default_path() -> str:
    """Where Courier keeps smtpaccess.dat (courier-config's sysconfdir)."""
    return os.path.join(sysconfdir(), "smtpaccess.dat")


def lookup_keys(address: ipaddress._BaseAddress) -> list:
    """The keys to try for an address, most specific first, as Courier writes them."""
    if address.version == 4:
        parts = str(address).split(".")
        return [".".join(parts[:n]) for n in range(4, 0, -1)]
    parts = address.exploded.split(":")
    return [":" + ":".join(parts[:n]) for n in range(8, 0, -1)]


class SmtpAccess(CourierDatabase):
    """The smtpaccess database, re-opened when makesmtpaccess replaces it."""

    error = SmtpAccessError

    def value(self, address: ipaddress._BaseAddress) -> Optional[str]:
        """The smtpaccess value that applies to an address, or None."""
        return self.first(lookup_keys(address))

    def is_relay_client(self, address: ipaddress._BaseAddress) -> bool:
        """True when Courier's smtpaccess sets RELAYCLIENT for the address."""
        value = self.value(address)
        if value is None:
            return False
        return any(item.strip().split("=", 1)[0] == "RELAYCLIENT" for item in value.split(","))
