"""Whitelists: which clients, senders and recipients are never greylisted.

Pure: entries come in as text (from the settings or from whitelist files,
which ``whitelist_files.py`` reads), matching takes an address or a name.
Every match answers with the rule that matched, so that the log line and
``greylist check --explain`` can say why a message was let through.

Entry forms:

* clients: an IP address (``192.0.2.7``, ``2001:db8::7``), a network in CIDR
  notation (``192.0.2.0/24``, ``2001:db8::/32``), a host name
  (``mail.example.com``, matched exactly) or a domain with a leading dot
  (``.outlook.com``: the domain and every name under it).  Names are matched
  against the reverse-DNS name Courier recorded for the client, never
  looked up here.
* senders: an address (``alice@example.com``), ``@example.com`` (that
  domain) or ``@.example.com`` (that domain and its subdomains).
* recipients: the same as senders, plus ``postmaster@`` (that local part
  at any domain).

Matching is case-insensitive.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Iterable, List, Optional, Tuple

from .errors import GreylistError

CLIENT, SENDER, RECIPIENT = "client", "sender", "recipient"
KINDS = (CLIENT, SENDER, RECIPIENT)

_HOST_NAME = re.compile(r"^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*$")


class WhitelistEntryError(GreylistError, ValueError):
    """An entry that is none of the forms a whitelist accepts."""


def _host_name(text: str) -> Optional[str]:
    name = text.lower().rstrip(".")
    return name if len(name) <= 253 and _HOST_NAME.match(name) else None


@dataclass
class Whitelist:
    """Compiled entries of all three kinds, ready for fast matching."""

    # prefix length -> {network address as int: the entry as written}, per IP version
    networks: dict = field(default_factory=lambda: {4: {}, 6: {}})
    client_names: dict = field(default_factory=dict)  # exact host name -> entry
    client_domains: dict = field(default_factory=dict)  # domain -> ".domain" entry
    senders: dict = field(default_factory=dict)  # address -> entry
    sender_domains: dict = field(default_factory=dict)  # domain -> entry
    sender_subdomains: dict = field(default_factory=dict)
    recipients: dict = field(default_factory=dict)
    recipient_domains: dict = field(default_factory=dict)
    recipient_subdomains: dict = field(default_factory=dict)
    recipient_locals: dict = field(default_factory=dict)  # local part -> "local@" entry

    def __bool__(self) -> bool:
        return any((self.networks[4], self.networks[6], self.client_names, self.client_domains,
                    self.senders, self.sender_domains, self.sender_subdomains, self.recipients,
                    self.recipient_domains, self.recipient_subdomains, self.recipient_locals))

    @property
    def has_recipient_rules(self) -> bool:
        return bool(self.recipients or self.recipient_domains or self.recipient_subdomains
                    or self.recipient_locals)

    # --- building ----------------------------------------------------------------

    def add(self, kind: str, entry: str) -> None:
        """Add one entry; raises WhitelistEntryError when it is not a valid form."""
        text = entry.strip()
        if not text:
            raise WhitelistEntryError("empty entry")
        if kind == CLIENT:
            self._add_client(text)
        elif kind in (SENDER, RECIPIENT):
            self._add_address(kind, text)
        else:
            raise WhitelistEntryError(f"unknown kind {kind!r} (client, sender or recipient)")

    def _add_client(self, text: str) -> None:
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError:
            network = None
        if network is not None:
            if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96 \
                    and network.network_address.ipv4_mapped is not None:
                # ::ffff:192.0.2.0/120 means 192.0.2.0/24: clients are compared as IPv4.
                network = ipaddress.ip_network(
                    f"{network.network_address.ipv4_mapped}/{network.prefixlen - 96}")
            bits = network.max_prefixlen
            self.networks[network.version].setdefault(network.prefixlen, {})[
                int(network.network_address) >> (bits - network.prefixlen)] = text
            return
        if text.startswith("."):
            domain = _host_name(text[1:])
            if domain is None:
                raise WhitelistEntryError(f"{text!r} is not an IP address, network, host name "
                                          f"or .domain")
            self.client_domains[domain] = text
            return
        name = _host_name(text)
        if name is None:
            raise WhitelistEntryError(f"{text!r} is not an IP address, network, host name or .domain")
        if all(label.isdigit() for label in name.split(".")):
            # 300.1.2.3, 192.0.2: no host name is all numbers, and no client would match it
            raise WhitelistEntryError(f"{text!r} is not an IP address (nor a host name: those are not "
                                      f"all numbers)")
        self.client_names[name] = text

    def _add_address(self, kind: str, text: str) -> None:
        lowered = text.lower()
        if " " in lowered or "@" not in lowered:
            raise WhitelistEntryError(f"{text!r} is not an address, @domain"
                                      f"{', local@' if kind == RECIPIENT else ''} or @.domain")
        local, _, domain = lowered.rpartition("@")
        if not domain:
            if kind != RECIPIENT or not local:
                raise WhitelistEntryError(f"{text!r}: a {kind} entry needs a domain")
            self.recipient_locals[local] = text
            return
        subdomains = domain.startswith(".")
        checked = _host_name(domain[1:] if subdomains else domain)
        if checked is None and not (domain.startswith("[") and domain.endswith("]")):
            raise WhitelistEntryError(f"{text!r}: {domain!r} is not a domain")
        domain = checked or domain
        if local:
            if subdomains:
                raise WhitelistEntryError(f"{text!r}: an address cannot have a .domain")
            (self.senders if kind == SENDER else self.recipients)[f"{local}@{domain}"] = text
        elif subdomains:
            (self.sender_subdomains if kind == SENDER else self.recipient_subdomains)[domain] = text
        else:
            (self.sender_domains if kind == SENDER else self.recipient_domains)[domain] = text

    def extend(self, other: Whitelist) -> None:
        """Add every entry of another whitelist (a file's) to this one."""
        for version in (4, 6):
            for prefix, entries in other.networks[version].items():
                self.networks[version].setdefault(prefix, {}).update(entries)
        for name in ("client_names", "client_domains", "senders", "sender_domains",
                     "sender_subdomains", "recipients", "recipient_domains",
                     "recipient_subdomains", "recipient_locals"):
            getattr(self, name).update(getattr(other, name))

    # --- matching ----------------------------------------------------------------

    def match_client(self, address: Optional[ipaddress._BaseAddress],
                     name: Optional[str]) -> Optional[str]:
        """The client entry covering this address or reverse-DNS name, or None."""
        if address is not None:
            by_prefix = self.networks[address.version]
            if by_prefix:
                number, bits = int(address), address.max_prefixlen
                for prefix, entries in by_prefix.items():
                    entry = entries.get(number >> (bits - prefix))
                    if entry is not None:
                        return entry
        if name and (self.client_names or self.client_domains):
            lowered = name.lower().rstrip(".")
            entry = self.client_names.get(lowered)
            if entry is not None:
                return entry
            return _in_domains(lowered, self.client_domains)
        return None

    def match_sender(self, sender: str) -> Optional[str]:
        """The sender entry covering this envelope sender, or None."""
        return self._match_address(sender, self.senders, self.sender_domains,
                                   self.sender_subdomains, None)

    def match_recipient(self, recipient: str) -> Optional[str]:
        """The recipient entry covering this recipient, or None."""
        return self._match_address(recipient, self.recipients, self.recipient_domains,
                                   self.recipient_subdomains, self.recipient_locals)

    @staticmethod
    def _match_address(address: str, exact: dict, domains: dict, subdomains: dict,
                       locals_: Optional[dict]) -> Optional[str]:
        lowered = address.lower()
        entry = exact.get(lowered)
        if entry is not None:
            return entry
        local, _, domain = lowered.rpartition("@")
        if domain:
            entry = domains.get(domain)
            if entry is not None:
                return entry
            if subdomains:
                entry = _in_domains(domain, subdomains)
                if entry is not None:
                    return entry
        if locals_ and local:
            return locals_.get(local)
        return None


def _in_domains(name: str, domains: dict) -> Optional[str]:
    """The entry of the domain that is ``name`` or one of its parents, or None."""
    labels = name.split(".")
    for start in range(len(labels)):
        entry = domains.get(".".join(labels[start:]))
        if entry is not None:
            return entry
    return None


def build(clients: Iterable[str] = (), senders: Iterable[str] = (),
          recipients: Iterable[str] = ()) -> Whitelist:
    """A whitelist of the given entries; raises WhitelistEntryError on the first bad one."""
    whitelist = Whitelist()
    for kind, entries in ((CLIENT, clients), (SENDER, senders), (RECIPIENT, recipients)):
        for entry in entries:
            whitelist.add(kind, entry)
    return whitelist


def parse_lines(lines: Iterable[str]) -> Tuple[Whitelist, List[Tuple[int, str]]]:
    """Read a whitelist file's lines: ``kind: entry``, ``#`` comments, blank lines.

    A line without a ``client:``/``sender:``/``recipient:`` prefix is a client
    entry (the form of postgrey's client whitelists).  Returns the whitelist
    and the problems found, as (line number, message); bad lines are skipped
    so that one typo never disables the rest of a file.
    """
    whitelist = Whitelist()
    problems = []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        kind, entry = CLIENT, text
        head, colon, rest = text.partition(":")
        if colon and head.strip().lower() in KINDS:
            kind, entry = head.strip().lower(), rest.strip()
        try:
            whitelist.add(kind, entry)
        except WhitelistEntryError as error:
            problems.append((number, str(error)))
    return whitelist, problems
