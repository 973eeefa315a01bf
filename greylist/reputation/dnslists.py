"""DNS lists (DNSWL, DNSBL): is a client listed?  Asked concurrently, cached, bounded in time.

Queries and answers are built and parsed by dnspython; this module only
sends each query over UDP to every configured server at once and waits, with
one deadline for all of a message's queries, for the first valid answer to
each.  A zone that does not answer in time, answers SERVFAIL, or sends
something that does not parse counts as "not listed": greylisting falls back
to what it does without DNS lists.
"""

from __future__ import annotations

import collections
import contextlib
import ipaddress
import selectors
import socket
import threading
import time
from typing import Callable, ContextManager, Dict, List, NamedTuple, Optional, Sequence, Tuple

from ..errors import GreylistError
from ..extras import install_hint

# Answers a list gives for "the query was refused" (a public resolver, a
# query limit): these are not listings.
_REFUSED = {ipaddress.ip_address(a) for a in ("127.0.0.255", "127.255.255.254", "127.255.255.255")}
_LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
_CACHE_SIZE = 10_000
# A reply to a query without EDNS fits in 512 bytes (RFC 1035, 4.2.1); a larger
# datagram is not one, and parsing it would only cost time.
_LONGEST_REPLY = 512
_JUNK, _UNUSABLE = object(), object()  # what _parse says of a datagram that is no verdict
_LONGEST_TTL = 3600.0  # a listing may end: ask again within the hour at the latest
_NEGATIVE_TTL = 300.0  # "not listed" without a SOA to say how long


class DnsListsUnavailable(GreylistError):
    """A zone is configured but dnspython is not installed."""


class Answer(NamedTuple):
    """One zone's verdict on one client."""

    zone: str
    result: str  # listed | unlisted | refused | timeout | error
    addresses: Tuple[str, ...] = ()  # the A records it answered
    cached: bool = False

    @property
    def listed(self) -> bool:
        return self.result == "listed"


def query_name(address, zone: str) -> str:
    """The name a DNS list is asked: reversed octets (IPv4) or nibbles (IPv6), then the zone."""
    if address.version == 4:
        return ".".join(reversed(str(address).split("."))) + "." + zone
    return ".".join(reversed(address.exploded.replace(":", ""))) + "." + zone


def _dns():
    try:
        import dns.exception
        import dns.flags
        import dns.message
        import dns.rcode
        import dns.rdataclass
        import dns.rdatatype
        import dns.resolver
    except ImportError:
        raise DnsListsUnavailable("DNS list zones are set, but dnspython is not installed "
                                  f"({install_hint('dns')})") from None
    return dns


def system_servers() -> Tuple[Tuple[str, int], ...]:
    """The resolvers of /etc/resolv.conf, as dnspython reads them."""
    dns = _dns()
    try:
        resolver = dns.resolver.Resolver()
    except dns.exception.DNSException:
        return ()
    return tuple((str(server), resolver.port) for server in resolver.nameservers)


class DnsLists:
    """Looks clients up in DNS lists, for any number of threads."""

    def __init__(self, servers: Sequence[Tuple[str, int]], timeout: float,
                 clock: Callable[[], float] = time.monotonic,
                 on_query: Optional[Callable[[str, str], None]] = None) -> None:
        self._dns = _dns()
        self.servers = tuple(servers) or system_servers()
        self.timeout = timeout
        self.clock = clock
        self.on_query = on_query  # (zone, result) of every query sent: the metrics
        self._cache: collections.OrderedDict = collections.OrderedDict()
        self._cache_lock = threading.Lock()

    def lookup(self, address, zones: Sequence[str],
               while_waiting: Optional[ContextManager] = None) -> List[Answer]:
        """Every zone's answer for a client, in the order of ``zones``.

        ``while_waiting`` is entered around the network wait (not for answers
        from the cache): the filter lets other messages go meanwhile.
        """
        address = getattr(address, "ipv4_mapped", None) or address
        now = self.clock()
        answers: Dict[str, Answer] = {}
        with self._cache_lock:
            for zone in zones:
                hit = self._cache.get((zone, address))
                if hit is not None and hit[0] > now:
                    self._cache.move_to_end((zone, address))
                    answers[zone] = hit[1]._replace(cached=True)
        missing = [zone for zone in zones if zone not in answers]
        if missing:
            with while_waiting or contextlib.nullcontext():
                asked = self._ask(address, missing)
            for answer, ttl in asked:
                answers[answer.zone] = answer
                if self.on_query is not None:
                    self.on_query(answer.zone, answer.result)
                if ttl > 0:
                    self._remember(address, answer, now + ttl)
        return [answers[zone] for zone in zones]

    def _remember(self, address, answer: Answer, until: float) -> None:
        with self._cache_lock:
            self._cache[(answer.zone, address)] = (until, answer)
            self._cache.move_to_end((answer.zone, address))
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)

    def _ask(self, address, zones: Sequence[str]) -> List[Tuple[Answer, float]]:
        """Send every query to every server at once; wait for all until the deadline.

        A datagram that is not the answer (junk, another id, from elsewhere,
        too large to be a reply to a query without EDNS) is ignored, and its
        socket keeps waiting: a stray packet cannot lose a listing.  Reading
        and parsing count against the same deadline.
        """
        dns = self._dns
        deadline = time.monotonic() + self.timeout
        selector = selectors.DefaultSelector()
        pending: Dict[str, object] = {}
        results: List[Tuple[Answer, float]] = []
        failed: Dict[str, str] = {}
        try:
            for zone in zones:
                try:
                    query = dns.message.make_query(query_name(address, zone), dns.rdatatype.A)
                    wire = query.to_wire()
                except dns.exception.DNSException:  # a name DNS cannot carry: counts as no answer
                    results.append((Answer(zone, "error"), 0.0))
                    continue
                pending[zone] = query
                for server in self.servers:
                    sock = _sent(wire, server)
                    if sock is None:  # no IPv6 here, no descriptor left, no route
                        failed[zone] = "error"
                        continue
                    selector.register(sock, selectors.EVENT_READ, (zone, query, server))
            while pending and selector.get_map():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                for key, _ in selector.select(remaining):
                    zone, query, server = key.data
                    sock = key.fileobj
                    try:
                        wire, source = sock.recvfrom(_LONGEST_REPLY + 1)
                    except BlockingIOError:
                        continue
                    except OSError:  # ICMP port unreachable: nobody there
                        _forget(selector, sock)
                        failed.setdefault(zone, "error")
                        continue
                    if zone not in pending:  # answered by another server already
                        _forget(selector, sock)
                        continue
                    if not _same_peer(source, server) or time.monotonic() >= deadline:
                        continue  # from elsewhere, or no time left to read it
                    parsed = self._parse(zone, query, wire) if len(wire) <= _LONGEST_REPLY else _JUNK
                    if parsed is _JUNK:  # from the server's address, but no answer: keep waiting
                        failed[zone] = "error"
                        continue
                    _forget(selector, sock)
                    if parsed is _UNUSABLE:  # SERVFAIL, REFUSED, truncated: maybe another server knows
                        failed[zone] = "error"
                        continue
                    del pending[zone]
                    results.append(parsed)
        finally:
            for key in list(selector.get_map().values()):
                key.fileobj.close()
            selector.close()
        for zone in pending:  # no usable answer in time: count as not listed, not cached
            results.append((Answer(zone, "timeout" if failed.get(zone) != "error" else "error"), 0.0))
        return results

    def _parse(self, zone: str, query, wire: bytes):
        """A reply's verdict and how long it may be kept; _JUNK for a datagram that is not the
        reply, _UNUSABLE for a reply that says nothing of the listing."""
        dns = self._dns
        try:
            reply = dns.message.from_wire(wire)
        except (dns.exception.DNSException, ValueError, UnicodeError):
            return _JUNK
        if not query.is_response(reply):
            return _JUNK
        rcode = reply.rcode()
        if rcode == dns.rcode.NXDOMAIN:
            return Answer(zone, "unlisted"), _negative_ttl(dns, reply)
        if rcode != dns.rcode.NOERROR:
            return _UNUSABLE
        addresses, ttl = [], _LONGEST_TTL
        for rrset in reply.answer:
            if rrset.rdclass == dns.rdataclass.IN and rrset.rdtype == dns.rdatatype.A:
                ttl = min(ttl, rrset.ttl)
                addresses += [ipaddress.ip_address(rdata.address) for rdata in rrset]
        truncated = bool(reply.flags & dns.flags.TC)
        if not addresses:
            # A truncated reply may have lost the records: it says nothing.
            return _UNUSABLE if truncated else (Answer(zone, "unlisted"), _negative_ttl(dns, reply))
        listed = [a for a in addresses if a in _LOOPBACK and a not in _REFUSED]
        result = "listed" if listed else ("refused" if any(a in _REFUSED for a in addresses)
                                          else "unlisted")
        if result == "refused":
            ttl = min(ttl, _NEGATIVE_TTL)
        if truncated:
            ttl = 0  # what it holds counts, but is not kept: another look may see more
        return Answer(zone, result, tuple(sorted(str(a) for a in addresses))), float(ttl)


def _sent(wire: bytes, server: Tuple[str, int]):
    """A non-blocking socket that sent ``wire`` to ``server``, or None when it could not."""
    family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
    try:
        sock = socket.socket(family, socket.SOCK_DGRAM)
    except OSError:
        return None
    try:
        sock.setblocking(False)
        sock.sendto(wire, server)
    except OSError:
        sock.close()
        return None
    return sock


def _forget(selector, sock) -> None:
    selector.unregister(sock)
    sock.close()


def _negative_ttl(dns, reply) -> float:
    for rrset in reply.authority:
        if rrset.rdtype == dns.rdatatype.SOA:
            return float(min(rrset.ttl, rrset[0].minimum, _LONGEST_TTL))
    return _NEGATIVE_TTL


def _same_peer(source: tuple, server: Tuple[str, int]) -> bool:
    return source[1] == server[1] and ipaddress.ip_address(source[0]) == ipaddress.ip_address(server[0])
