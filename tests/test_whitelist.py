"""whitelist.py: the entries of whitelists (settings and files) and what they cover."""

from __future__ import annotations

import ipaddress

import pytest

from greylist.whitelist import WhitelistEntryError, build, parse_lines


@pytest.mark.parametrize("entry", ["", "not a host", "-bad-.example", "192.0.2.0/33", "..x"])
def test_bad_client_entries(entry):
    with pytest.raises(WhitelistEntryError):
        build(clients=[entry])


@pytest.mark.parametrize("kind, entry", [("sender", "postmaster@"), ("sender", "nodomain"),
                                         ("recipient", "@"), ("recipient", "a@.example.com"),
                                         ("sender", "a@bad domain")])
def test_bad_address_entries(kind, entry):
    with pytest.raises(WhitelistEntryError):
        build(**{kind + "s": [entry]})


def test_networks_of_every_prefix_length():
    whitelist = build(clients=["10.0.0.0/8", "192.0.2.128/25", "::ffff:198.51.100.0/120", "2001:db8::/32",
                               "2001:db8:ffff::1"])
    ip = ipaddress.ip_address
    assert whitelist.match_client(ip("10.255.1.1"), None) == "10.0.0.0/8"
    assert whitelist.match_client(ip("192.0.2.200"), None) == "192.0.2.128/25"
    assert whitelist.match_client(ip("192.0.2.100"), None) is None
    assert whitelist.match_client(ip("198.51.100.3"), None) == "::ffff:198.51.100.0/120"
    assert whitelist.match_client(ip("2001:db8:ffff::1"), None) in ("2001:db8::/32", "2001:db8:ffff::1")
    assert whitelist.match_client(ip("2001:db9::1"), None) is None


def test_recipient_forms():
    whitelist = build(recipients=["postmaster@", "abuse@example.net", "@example.org", "@.example.com"])
    assert whitelist.match_recipient("PostMaster@anything.example") == "postmaster@"
    assert whitelist.match_recipient("abuse@example.net") == "abuse@example.net"
    assert whitelist.match_recipient("abuse@example.org") == "@example.org"
    assert whitelist.match_recipient("x@sub.example.com") == "@.example.com"
    assert whitelist.match_recipient("x@sub.example.org") is None
    assert whitelist.match_recipient("abuse@other.example") is None


def test_file_lines():
    whitelist, problems = parse_lines([
        "# comment", "", "client: .example.com  # trailing comment", "sender:@lists.example.org",
        "RECIPIENT: postmaster@", "203.0.113.0/24", "2001:db8::/32", "client: no such thing", "sender: x",
    ])
    assert whitelist.match_client(None, "mx.example.com") == ".example.com"
    assert whitelist.match_sender("a@lists.example.org") == "@lists.example.org"
    assert whitelist.match_recipient("postmaster@x.example") == "postmaster@"
    assert whitelist.match_client(ipaddress.ip_address("2001:db8::5"), None) == "2001:db8::/32"
    assert [number for number, _ in problems] == [8, 9]


def test_an_address_with_a_prefix_is_the_network_it_is_in():
    """``192.0.2.7/24`` means 192.0.2.0/24 (not the one address), as in postgrey's lists."""
    whitelist = build(clients=["192.0.2.7/24", "2001:db8::7/64"])
    assert whitelist.match_client(ipaddress.ip_address("192.0.2.99"), None) == "192.0.2.7/24"
    assert whitelist.match_client(ipaddress.ip_address("192.0.3.7"), None) is None
    assert whitelist.match_client(ipaddress.ip_address("2001:db8::ffff"), None) == "2001:db8::7/64"
    assert whitelist.match_client(ipaddress.ip_address("2001:db8:0:1::7"), None) is None
