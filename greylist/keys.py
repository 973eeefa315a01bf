"""The store keys of a message, as the settings shape them: triplets, the client network, Message-IDs.

Pure: the digests are the reference's (``triplet.py``); the settings say
the prefixes, whether senders are normalised, and what keys the triplet
when Courier's SPF check passed or a retry is matched by Message-ID.
"""

from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

from .senders import normalize_sender
from .settings import Settings
from .triplet import IPAddress, client_network, network_of, triplet_key


class MessageKeys(NamedTuple):
    """Every key a message's decision reads, known before the store is asked."""

    triplets: Tuple[str, ...]  # in recipient order, repeats kept
    unique: Tuple[str, ...]  # each once
    client: Optional[str] = None  # its network, with auto_whitelist_clients
    messages: Dict[str, str] = {}  # triplet key -> Message-ID key, with match_retry_by_message_id


class Keys:
    """The settings' way of keying a message."""

    def __init__(self, settings: Settings) -> None:
        self.ipv4_prefix = settings.ipv4_prefix
        self.ipv6_prefix = settings.ipv6_prefix
        self.normalize = settings.normalize_senders
        self.auto_whitelist = settings.auto_whitelist_clients > 0

    def triplets(self, sender: str, recipients: Sequence[str], address: IPAddress,
                 spf_domain: Optional[str] = None, message: Optional[str] = None) -> List[str]:
        """The triplets' keys, in recipient order; with ``message`` (a Message-ID), the keys of
        the Message-ID table instead."""
        if message is not None:
            network = "message-id:" + message
        elif spf_domain:
            network = "spf:" + spf_domain
        else:
            network = client_network(address, self.ipv4_prefix, self.ipv6_prefix)
        sender = sender.lower()
        if self.normalize:
            sender = normalize_sender(sender)
        return [triplet_key(sender, recipient.lower(), network) for recipient in recipients]

    def of_message(self, sender: str, recipients: Sequence[str], address: IPAddress,
                   spf_domain: Optional[str] = None, message: Optional[str] = None) -> MessageKeys:
        """Every key of a message: its triplets', its client network's, its Message-ID's."""
        triplets = self.triplets(sender, recipients, address, spf_domain)
        messages = (dict(zip(triplets, self.triplets(sender, recipients, address, message=message)))
                    if message is not None else {})
        keys = tuple(triplets)
        unique = keys if len(keys) == 1 else tuple(dict.fromkeys(keys))
        return MessageKeys(keys, unique, self.client(address), messages)

    def client(self, address: IPAddress) -> Optional[str]:
        """The auto-whitelist's key for a client (its network), or None when auto-whitelisting is off."""
        if not self.auto_whitelist:
            return None
        return network_of(address, self.ipv4_prefix, self.ipv6_prefix)
