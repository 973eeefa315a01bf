"""The store keys of a message, as the settings shape them: triplets, the client network, Message-IDs,
proven senders and domains, replies.

Pure: the triplets' digests are the reference's (``triplet.py``); the
settings say the prefixes, whether senders are normalised, and what keys the
triplet when Courier's SPF check passed or a retry is matched by Message-ID.
Our own tables' keys are MD5 digests of their parts, each with its kind
first and NUL between the parts, so that no two kinds can collide.
"""

from __future__ import annotations

import hashlib
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

from .senders import normalize_sender
from .settings import Settings
from .triplet import IPAddress, client_network, network_of, triplet_key


class MessageKeys(NamedTuple):
    """Every key a message's decision reads, known before the store is asked."""

    triplets: Tuple[str, ...]  # in recipient order, repeats kept
    unique: Tuple[str, ...]  # each once
    client: Optional[str] = None  # its network, with auto_whitelist_clients or greytrap_recipients
    messages: Dict[str, str] = {}  # triplet key -> Message-ID key, with match_retry_by_message_id
    sender: Optional[str] = None  # sender and network, with auto_whitelist_senders or _domains
    domain: Optional[str] = None  # sender domain and network, with auto_whitelist_domains
    replies: Tuple[Tuple[str, ...], ...] = ()  # per recipient, the keys saying it wrote to the sender
    trap: Optional[str] = None  # its network, with greytrap_recipients


# The most Message-IDs of In-Reply-To and References looked up (the last ones:
# the newest in a thread); a long thread's References may name hundreds.
MOST_REFERENCES = 20


def digest(kind: str, *parts: str) -> str:
    """The key of an entry of our tables: MD5 hex of the kind and the parts."""
    text = "\0".join((kind,) + parts)
    return hashlib.md5(text.encode("utf-8", "surrogatepass"), usedforsecurity=False).hexdigest()


def domain_of(address: str) -> str:
    return address.rsplit("@", 1)[1] if "@" in address else ""


class Keys:
    """The settings' way of keying a message."""

    def __init__(self, settings: Settings) -> None:
        self.ipv4_prefix = settings.ipv4_prefix
        self.ipv6_prefix = settings.ipv6_prefix
        self.normalize = settings.normalize_senders
        self.greytraps = bool(settings.greytrap_recipients)
        # With greytraps the networks that passed are counted too: they are never trapped.
        self.auto_whitelist = settings.auto_whitelist_clients > 0 or self.greytraps
        self.senders = settings.auto_whitelist_senders or settings.auto_whitelist_domains > 0
        self.domains = settings.auto_whitelist_domains > 0
        self.domains_except = frozenset(settings.auto_whitelist_domains_except)
        self.replies = settings.whitelist_replies  # False, True or "in-reply-to"

    def address(self, address: str) -> str:
        """An address as our tables key it: lower-cased, normalised when the settings say so."""
        address = address.lower()
        return normalize_sender(address) if self.normalize else address

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
                   spf_domain: Optional[str] = None, message: Optional[str] = None,
                   references: Sequence[str] = ()) -> MessageKeys:
        """Every key of a message: its triplets', its client network's, its Message-ID's, its
        sender's and domain's, and its recipients' replies' (``references``: the Message-IDs of
        its In-Reply-To and References)."""
        triplets = self.triplets(sender, recipients, address, spf_domain)
        messages = (dict(zip(triplets, self.triplets(sender, recipients, address, message=message)))
                    if message is not None else {})
        keys = tuple(triplets)
        unique = keys if len(keys) == 1 else tuple(dict.fromkeys(keys))
        client = self.client(address) if self.auto_whitelist else None
        trap = client if self.greytraps else None
        if not (self.senders or self.replies):
            return MessageKeys(keys, unique, client, messages, None, None, (), trap)
        sender = self.address(sender)
        network = client_network(address, self.ipv4_prefix, self.ipv6_prefix)
        domain = domain_of(sender)
        return MessageKeys(
            keys, unique, client, messages,
            digest("sender", sender, network) if self.senders else None,
            digest("domain", domain, network) if self.domains and domain
            and domain not in self.domains_except else None,
            tuple(self.reply_keys(sender, recipient, references) for recipient in recipients)
            if self.replies else (), trap)

    def reply_keys(self, sender: str, recipient: str, references: Sequence[str]) -> Tuple[str, ...]:
        """The keys under which ``recipient`` (ours) would have recorded writing to ``sender``."""
        recipient = self.address(recipient)
        if self.replies == "in-reply-to":
            return tuple(digest("reply", sender, recipient, reference)
                         for reference in references[-MOST_REFERENCES:])
        return (digest("reply", sender, recipient),)

    def replies_sent(self, sender: str, remote: Sequence[str], message: Optional[str]) -> Tuple[str, ...]:
        """The keys recording that ``sender`` (ours) wrote to the ``remote`` addresses: a pair
        each, and with the message's Message-ID, a pair and that ID each (the strict form's)."""
        sender = self.address(sender)
        keys: list = []
        for recipient in dict.fromkeys(self.address(r) for r in remote):
            keys.append(digest("reply", recipient, sender))
            if message:
                keys.append(digest("reply", recipient, sender, message))
        return tuple(keys)

    def client(self, address: IPAddress) -> Optional[str]:
        """The auto-whitelist's key for a client (its network), or None when auto-whitelisting is off."""
        if not self.auto_whitelist:
            return None
        return network_of(address, self.ipv4_prefix, self.ipv6_prefix)
