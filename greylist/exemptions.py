"""What is known of a message before the store is asked, gathered as plain data (``policy.Facts``).

The whitelists (settings and files), Courier's smtpaccess database, the
``greylist_recipients`` opt-in and the DNS lists and name patterns, ready
for any number of threads.  The filter, ``greylist show`` and ``check
--explain`` all ask this one object, and hand what it says to
``policy.decide_message``: so the commands say what the filter does.

What it answers is only what matched; which rule wins is the policy's.
The DNS lists are asked only when the policy asks for them
(``policy.ASK_DNS_LISTS``): a whitelisted client costs no query.
"""

from __future__ import annotations

from typing import Callable, ContextManager, Optional, Sequence, Tuple

from .envelope import Envelope
from .policy import Facts
from .relay import SmtpAccess
from .relay import default_path as relay_default_path
from .reputation import Reputation, ReputationCheck
from .settings import Settings
from .triplet import InvalidClientAddress, parse_client_ip
from .whitelist import build as build_whitelist
from .whitelist_files import WhitelistFiles


def client_name(received_from: Optional[str]) -> Optional[str]:
    """The reverse-DNS name in Courier's ``f`` record: ``dns; HELO (NAME [IP])``."""
    if not received_from or "(" not in received_from:
        return None
    inside = received_from[received_from.rfind("(") + 1 :]
    name = inside.split("[", 1)[0].strip().rstrip(")")
    return name or None


def open_lists(settings: Settings, log: Callable[[str], None]
               ) -> Tuple[Optional[WhitelistFiles], Optional[SmtpAccess]]:
    """The whitelists and Courier's smtpaccess database the settings name, read now.

    Raises a GreylistError (WhitelistFileError, SmtpAccessError) when one cannot be read.
    """
    base = build_whitelist(settings.whitelist_clients, settings.whitelist_senders,
                           settings.whitelist_recipients)
    whitelists = (WhitelistFiles(base, settings.whitelist_files, log)
                  if base or settings.whitelist_files else None)
    smtpaccess = (SmtpAccess(settings.smtpaccess_file or relay_default_path(), log)
                  if settings.skip_relayclients else None)
    return whitelists, smtpaccess


def open_reputation(settings: Settings, on_query=None) -> Optional[ReputationCheck]:
    """The DNS lists and name patterns the settings ask for, or None.

    Raises a GreylistError when dnspython is missing (DnsListsUnavailable) or a pattern file
    is unusable (PatternFileError).
    """
    if not (settings.dnswl_zones or settings.dnsbl_zones or settings.greylist_clients == "suspicious"):
        return None
    return ReputationCheck(settings, on_query=on_query)


class Exemptions:
    """The settings' exemptions, read once and kept current; asked once per message."""

    def __init__(self, settings: Settings, log: Callable[[str], None], on_dns_query=None) -> None:
        """Raises a GreylistError when a whitelist file, smtpaccess or a pattern file cannot be read."""
        self.skip_authenticated = settings.skip_authenticated
        self.whitelists, self.smtpaccess = open_lists(settings, log)
        self.greylist_recipients = (build_whitelist((), (), settings.greylist_recipients)
                                    if settings.greylist_recipients else None)
        self.reputation = open_reputation(settings, on_dns_query)
        self.greytraps = (build_whitelist((), (), settings.greytrap_recipients)
                          if settings.greytrap_recipients else None)
        # With none of the exemptions on (the reference's settings), a message's facts are its envelope's.
        self.none_on = not self.skip_authenticated and self.whitelists is None and self.smtpaccess is None \
            and self.greylist_recipients is None and self.reputation is None and self.greytraps is None

    def facts(self, envelope: Envelope) -> Facts:
        """What matched, for a message's envelope (no DNS: see ``standing``)."""
        return self.facts_for(envelope.sender, envelope.recipients, envelope.client_ip,
                              client_name(envelope.received_from), envelope.auth_user, envelope.source)

    def facts_for(self, sender: Optional[str], recipients: Sequence[str], client_ip: Optional[str],
                  name: Optional[str] = None, auth_user: Optional[str] = None,
                  source: Optional[str] = None) -> Facts:
        """What matched, for a message of this sender, these recipients, from this client."""
        address = None
        if client_ip is not None:
            try:
                address = parse_client_ip(client_ip)
            except InvalidClientAddress:
                pass
        recipients = tuple(recipients)
        if not sender or address is None or not recipients or self.none_on:
            return Facts(sender, recipients, client_ip, address, name)  # decided before the lists
        whitelist = self.whitelists.current() if self.whitelists is not None else None
        client_rule = sender_rule = None
        recipient_rules: tuple = ()
        if whitelist is not None:
            client_rule = whitelist.match_client(address, name)
            sender_rule = whitelist.match_sender(sender.lower())
            if whitelist.has_recipient_rules:
                recipient_rules = tuple(whitelist.match_recipient(r) for r in recipients)
        opted_in = None
        if self.greylist_recipients is not None:
            opted_in = tuple(self.greylist_recipients.match_recipient(r) is not None for r in recipients)
        # In Facts' order, without keywords: built for every message, and a named
        # tuple takes keywords at twice the cost (0.52 us against 0.27).
        return Facts(sender, recipients, client_ip, address, name,
                     self.skip_authenticated and bool(auth_user),  # authenticated
                     client_rule,
                     self.smtpaccess is not None and self.smtpaccess.is_relay_client(address),  # relay_client
                     sender_rule, recipient_rules, opted_in,
                     self.reputation is not None,  # dns_lists
                     None, (),  # standing (asked later), reply_keys (the filter's)
                     self.skip_authenticated and source == "local",  # local_source
                     self.greytraps is not None  # trap
                     and any(self.greytraps.match_recipient(r) is not None for r in recipients))

    def standing(self, facts: Facts, while_waiting: Optional[ContextManager] = None) -> Reputation:
        """The client's answers from the DNS lists and its name; ``while_waiting`` around the waits."""
        return self.reputation.assess(facts.address, facts.client_name, while_waiting)
