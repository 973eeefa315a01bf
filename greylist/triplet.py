"""Triplets: the client network of an IP address and the store key of a triplet.

Pure functions, no I/O.  The key format is the reference's, byte for byte,
so that stores written by courier-pythonfilter's greylist module keep
working here and the other way round.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import socket
from typing import Union

from .errors import GreylistError

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

try:
    # CPython's own MD5 costs 0.6 us for a key, OpenSSL's (hashlib.md5) 1.5 us:
    # its context set-up outweighs the hashing of 50 bytes.  Not a security use.
    from _md5 import md5 as _md5
except ImportError:  # a build without CPython's hash modules (a FIPS build, say)
    _md5 = functools.partial(hashlib.md5, usedforsecurity=False)


class InvalidClientAddress(GreylistError, ValueError):
    """The client address from the control file is not an IP address."""


@functools.lru_cache(maxsize=4096)
def parse_client_ip(text: str) -> IPAddress:
    """Parse the address Courier recorded for the client.

    A scope (``fe80::1%eth0``) is dropped: it names an interface of this
    host, not part of the client's address.  An IPv4-mapped IPv6 address
    (``::ffff:192.0.2.1``, which Courier writes for IPv4 clients on a dual
    stack socket) becomes the IPv4 address, as in the reference.
    """
    try:
        # Most clients are IPv4, written plainly.  The C library's inet_pton
        # accepts exactly the texts ipaddress does for them (four decimal
        # octets, no leading zeros; a property test holds it to that) at a
        # third of the cost.
        return ipaddress.IPv4Address(socket.inet_pton(socket.AF_INET, text))
    except (OSError, ValueError):
        pass
    candidate = text.strip()
    if candidate.startswith("[") and candidate.endswith("]"):
        candidate = candidate[1:-1]
    candidate = candidate.split("%", 1)[0]
    try:
        address = ipaddress.ip_address(candidate)
    except ValueError:
        raise InvalidClientAddress(f"not an IP address: {text[:80]!r}") from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def client_network(address: IPAddress, ipv4_prefix: int = 24, ipv6_prefix: int = 48) -> str:
    """The network part of a client address as it goes into the triplet.

    The default prefixes give the reference's text: the first three octets
    of an IPv4 address (``198.51.100``) and the first three hextets of the
    exploded IPv6 address (``2001:0db8:0001``).  Other prefixes give the
    network in CIDR notation, which cannot collide with the default form.
    """
    if ipv4_prefix == 24 and isinstance(address, ipaddress.IPv4Address):
        # The common case, computed from the number: cheaper than the cache
        # below, whose key hashes the address in Python code.
        number = int(address)
        return f"{number >> 24}.{number >> 16 & 255}.{number >> 8 & 255}"
    return _client_network(address, ipv4_prefix, ipv6_prefix)


@functools.lru_cache(maxsize=4096)
def _client_network(address: IPAddress, ipv4_prefix: int, ipv6_prefix: int) -> str:
    if isinstance(address, ipaddress.IPv6Address) and ipv6_prefix == 48:
        return address.exploded[:14]
    return network_of(address, ipv4_prefix, ipv6_prefix)


def network_of(address: IPAddress, ipv4_prefix: int = 24, ipv6_prefix: int = 48) -> str:
    """The client's network in CIDR notation (``192.0.2.0/24``): the auto-whitelist's key, the report's."""
    prefix = ipv4_prefix if address.version == 4 else ipv6_prefix
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


def triplet_key(sender: str, recipient: str, network: str) -> str:
    """The store key of a triplet: MD5 hex of sender, recipient and network.

    The three parts are joined with no separator, exactly as the reference
    does; the key must stay that way for its stores to remain valid.
    Callers pass the sender and recipient already lower-cased.
    """
    return _md5(sender.encode("utf-8", "surrogatepass") + recipient.encode("utf-8", "surrogatepass")
                + network.encode("utf-8")).hexdigest()
