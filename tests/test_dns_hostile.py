"""DNS lists on a hostile day: stray datagrams, records of other classes and types, floods of
junk, truncated replies; and what the cache keeps, against real datagrams on loopback."""

from __future__ import annotations

import ipaddress
import time

import pytest
from dnslist_server import BL, BOTH_V4, WL, MisbehavingServer, Rbldnsd, ScriptedServer
from helpers import Clock, write_control
from hypothesis import given, settings
from hypothesis import strategies as st

from greylist.filter import GreylistFilter
from greylist.settings import Settings
from greylist.stores.dbm import DbmStore

pytest.importorskip("dns.message", reason="needs dnspython (pip install 'courier-greylist[dns]')")
import dns.flags  # noqa: E402
import dns.rrset  # noqa: E402

from greylist.reputation.dnslists import DnsLists  # noqa: E402

CLIENT = ipaddress.ip_address("192.0.2.99")


def listed(query, address: str = "127.0.0.4", ttl: int = 60) -> bytes:
    reply = dns.message.make_response(query)
    reply.answer.append(dns.rrset.from_text(query.question[0].name, ttl, "IN", "A", address))
    return reply.to_wire()


def junk(query) -> bytes:
    return query.to_wire()[:2] + b"\x81\x80" + b"\x00\x01\x00\x05garbage"


def with_record(query, rdclass: bytes, rdtype: bytes) -> bytes:
    """An answer whose only record is of another class or type (made by editing the wire)."""
    wire = bytearray(listed(query))
    at = wire.index(bytes.fromhex("c00c00010001"))
    wire[at + 2:at + 6] = rdtype + rdclass
    return bytes(wire)


def scripted(script) -> ScriptedServer:
    """A server whose ``script`` is given each query parsed."""
    return ScriptedServer(lambda wire: script(dns.message.from_wire(wire)))


def server_of(script):
    server = scripted(script)
    return server, (("127.0.0.1", server.port),)


def truncated(wire: bytes) -> bytes:
    """The same reply with its TC bit set (the server says it left records out)."""
    reply = dns.message.from_wire(wire)
    reply.flags |= dns.flags.TC
    return reply.to_wire()


def test_stray_datagrams_before_the_answer_lose_no_listing():
    """Junk from the server's own address and from another port, before every answer."""
    server, servers = server_of(lambda q: [(junk(q), True), (junk(q), False), (b"\x00", False),
                                           (listed(q), False)])
    try:
        lists = DnsLists(servers, 2.0)
        clients = [ipaddress.ip_address(f"192.0.2.{n}") for n in range(10)]
        answers = [lists.lookup(client, [BL])[0] for client in clients]
        assert [answer.result for answer in answers] == ["listed"] * 10
    finally:
        server.close()


@pytest.mark.parametrize("rdclass, rdtype", [(b"\x00\xff", b"\x00\x01"),  # class ANY, type A
                                             (b"\x00\x03", b"\x00\x01"),  # class CH, type A
                                             (b"\x00\x01", b"\x00\xff")])  # class IN, type ANY
def test_records_of_other_classes_or_types_never_raise(tmp_path, rdclass, rdtype):
    server, servers = server_of(lambda q: [(with_record(q, rdclass, rdtype), False)])
    try:
        assert DnsLists(servers, 2.0).lookup(CLIENT, [BL])[0].result == "unlisted"
        (tmp_path / "store").mkdir()
        lines: list = []
        settings = Settings(db_dir=str(tmp_path / "store"), dnsbl_zones=(BL,), dns_servers=servers)
        store = DbmStore(settings.db_dir)
        greylist = GreylistFilter(settings, store, clock=Clock(), log=lines.append, purge="never")
        assert greylist.do_filter("", [write_control(str(tmp_path / "C"), ip=str(CLIENT))]).startswith("451")
        assert "action=greylist, reason=new" in lines[-1]
        store.close()
    finally:
        server.close()


def test_reading_and_parsing_count_against_the_timeout():
    """Six zones, three servers, each answering with a flood of junk, large and small."""
    def flood(query):
        return [(b"\x81\x80" + b"\xff" * 60000, False)] + [(junk(query), False)] * 200

    servers = [scripted(flood) for _ in range(3)]
    try:
        lists = DnsLists([("127.0.0.1", server.port) for server in servers], 0.5)
        zones = [f"z{n}.test" for n in range(6)]
        started = time.monotonic()
        answers = lists.lookup(CLIENT, zones)
        took = time.monotonic() - started
        assert [answer.result for answer in answers] == ["error"] * 6
        assert 0.5 <= took < 0.7, took
    finally:
        for server in servers:
            server.close()


def test_a_truncated_reply_without_records_is_not_taken_for_unlisted():
    server, servers = server_of(lambda q: [(truncated(dns.message.make_response(q).to_wire()), False)])
    try:
        lists = DnsLists(servers, 0.3)
        assert lists.lookup(CLIENT, [BL])[0].result == "error"
        assert lists.lookup(CLIENT, [BL])[0].result == "error"
        assert server.queries == 2  # not kept: asked again
    finally:
        server.close()


def test_a_truncated_reply_with_a_listing_counts_and_is_not_kept():
    server, servers = server_of(lambda q: [(truncated(listed(q)), False)])
    try:
        lists = DnsLists(servers, 2.0)
        assert lists.lookup(CLIENT, [BL])[0].result == "listed"
        assert lists.lookup(CLIENT, [BL])[0].cached is False and server.queries == 2
    finally:
        server.close()


def test_cached_answers_expire_with_their_ttl_and_timeouts_are_never_kept():
    clock = Clock(1000.0)
    server, servers = server_of(lambda q: [(listed(q, ttl=60), False)])
    silent = MisbehavingServer()
    try:
        lists = DnsLists(servers, 2.0, clock=clock)
        assert lists.lookup(CLIENT, [BL])[0].cached is False
        clock.advance(59)
        assert lists.lookup(CLIENT, [BL])[0].cached is True and server.queries == 1
        clock.advance(2)
        assert lists.lookup(CLIENT, [BL])[0].cached is False and server.queries == 2
        quiet = DnsLists((("127.0.0.1", silent.port),), 0.1, clock=clock)
        assert [quiet.lookup(CLIENT, [BL])[0].result for _ in range(2)] == ["timeout"] * 2
        assert silent.queries == 2
    finally:
        server.close()
        silent.close()


def test_a_client_on_both_a_dnswl_and_a_dnsbl_passes(tmp_path):
    zones = tmp_path / "zones"
    zones.mkdir()
    lists = Rbldnsd(str(zones))
    try:
        (tmp_path / "store").mkdir()
        lines: list = []
        settings = Settings(db_dir=str(tmp_path / "store"), dnswl_zones=(WL,), dnsbl_zones=(BL,),
                            dns_servers=(("127.0.0.1", lists.port),))
        store = DbmStore(settings.db_dir)
        greylist = GreylistFilter(settings, store, clock=Clock(), log=lines.append, purge="never")
        assert greylist.do_filter("", [write_control(str(tmp_path / "C"), ip=BOTH_V4)]) == ""
        assert lines[-1].startswith(f"greylist: action=pass, reason=dnswl:{WL}, ")
        assert f"dnsbl={BL}" in lines[-1]  # both answers were had; the whitelist wins
        store.close()
    finally:
        lists.stop()


@settings(max_examples=500, deadline=None)
@given(changes=st.lists(st.tuples(st.integers(2, 50), st.integers(0, 255)), min_size=1, max_size=6),
       tail=st.binary(max_size=40))
def test_a_damaged_reply_is_a_verdict_or_ignored_never_an_exception(changes, tail):
    query = dns.message.make_query(f"99.2.0.192.{BL}", "A")
    wire = bytearray(listed(query))
    for position, byte in changes:
        wire[position % len(wire)] = byte
    verdict = DnsLists((("127.0.0.1", 53),), 1.0)._parse(BL, query, bytes(wire) + tail)
    assert verdict is not None
