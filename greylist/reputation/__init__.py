"""What is known of a client before the store is asked: DNS lists and its reverse-DNS name.

Returns plain data (``Reputation``) for the filter's rules; the lookups are
bounded by ``dns_timeout`` and fail open (a list that does not answer counts
as not listing the client).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ContextManager, List, Optional

from ..settings import Settings
from .dnslists import Answer, DnsLists, DnsListsUnavailable
from .rdns import PatternFileError, generic_reason, load_patterns

__all__ = ["Reputation", "ReputationCheck", "DnsListsUnavailable", "PatternFileError"]

# What couriertcpd sets as the host name when the reverse and forward lookups
# do not match, or DNS failed for a while: no name to trust.
_NO_NAME = {"softdnserr", ""}


@dataclass
class Reputation:
    """One client's standing."""

    answers: List[Answer] = field(default_factory=list)
    dnswl: Optional[str] = None  # the first DNSWL zone listing the client
    dnsbl: Optional[str] = None  # the first DNSBL zone listing it
    dns_failed: bool = False  # a zone gave no usable answer in time (counted as not listing)
    named: bool = True  # Courier recorded a (forward-confirmed) reverse-DNS name
    generic: Optional[str] = None  # why that name looks generic, or None

    @property
    def suspicious(self) -> Optional[str]:
        """Why greylist_clients = 'suspicious' greylists this client, or None."""
        if self.dnsbl:
            return "dnsbl"
        if not self.named:
            return "no-rdns"
        if self.generic:
            return "generic-rdns"
        return None


class ReputationCheck:
    """The settings' DNS lists and name patterns, ready to ask for any number of threads."""

    def __init__(self, settings: Settings,
                 on_query: Optional[Callable[[str, str], None]] = None) -> None:
        """Raises DnsListsUnavailable or PatternFileError (settings the dispatcher cannot start with)."""
        self.dnswl_zones = settings.dnswl_zones
        self.dnsbl_zones = settings.dnsbl_zones
        zones = self.dnswl_zones + self.dnsbl_zones
        self.lists = DnsLists(settings.dns_servers, settings.dns_timeout, on_query=on_query) \
            if zones else None
        self.check_names = settings.greylist_clients == "suspicious"
        self.patterns = load_patterns(settings.generic_rdns_files) if self.check_names else []

    def assess(self, address, client_name: Optional[str],
               while_waiting: Optional[ContextManager] = None) -> Reputation:
        """The client's reputation; ``while_waiting`` is entered around DNS waits."""
        reputation = Reputation()
        if self.lists is not None:
            zones = self.dnswl_zones + self.dnsbl_zones
            reputation.answers = self.lists.lookup(address, zones, while_waiting)
            for answer in reputation.answers:
                if answer.result in ("timeout", "error"):
                    reputation.dns_failed = True
                elif answer.listed:
                    if answer.zone in self.dnswl_zones and reputation.dnswl is None:
                        reputation.dnswl = answer.zone
                    elif answer.zone in self.dnsbl_zones and reputation.dnsbl is None:
                        reputation.dnsbl = answer.zone
        if self.check_names:
            name = (client_name or "").strip().lower()
            reputation.named = name not in _NO_NAME
            if reputation.named:
                reputation.generic = generic_reason(name, address, self.patterns)
        return reputation
