"""The pure rooms of issue 6: whitelist matching, sender normalisation, SPF headers, auto-whitelist rule."""

from __future__ import annotations

import ipaddress

import pytest

from greylist import policy
from greylist.senders import normalize_sender
from greylist.spf import spf_pass_domain
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


@pytest.mark.parametrize("sender, normal", [
    ("alice@example.com", "alice@example.com"),
    ("list-bounces+bob=example.net@lists.example.org", "list-bounces@lists.example.org"),
    ("bounce-12345-678@mail.example.org", "bounce-#-#@mail.example.org"),
    ("b.7f3a9c21e0@bounce.example.org", "b.#@bounce.example.org"),
    ("user2024@example.com", "user2024@example.com"),  # a number inside a word stays
    ("deadbeef@example.com", "deadbeef@example.com"),  # hex without a digit is a word
    ("prvs=1234abcdef=alice@example.com", "alice@example.com"),
    ("msprvs1=19abcDEF12=bounces-42@example.com".lower(), "bounces-#@example.com"),
    ("btv1==1234abcdef==alice@example.com", "alice@example.com"),
    ("prvs=alice/1234abcdef@example.com", "alice@example.com"),
    ("srs0=hhh=tt=example.org=alice@forwarder.example", "alice@example.org"),
    ("srs0+hhh=tt=example.org=alice@forwarder.example", "alice@example.org"),
    ("srs1=hhh=first.example==hhh=tt=example.org=alice@second.example", "alice@example.org"),
    ("nodomain", "nodomain"),
])
def test_normalize_sender(sender, normal):
    assert normalize_sender(sender) == normal


SPF = ("Received-SPF: {result} (mx.local: SPF record at example.com designates 192.0.2.1 (a; b))\n"
       "  SPF={check};\n  sender={sender};\n  remoteip=::ffff:192.0.2.1;\n  remotehost=;\n"
       "  helo=h.example.com;\n  receiver=mx.local;\n")


def test_spf_header_forms():
    good = SPF.format(result="pass", check="MAILFROM", sender="Alice@Example.com")
    received = "Received: from h (h [::ffff:192.0.2.1])\n  by mx.local with ESMTP\n"
    assert spf_pass_domain((good + received + "\n").encode(), "alice@example.com") == "example.com"
    helo = SPF.format(result="pass", check="HELO", sender="alice@example.com")
    assert spf_pass_domain((helo + good + received).encode(), "alice@example.com") == "example.com"
    assert spf_pass_domain((received + good).encode(), "alice@example.com") is None
    fail = SPF.format(result="fail", check="MAILFROM", sender="alice@example.com")
    assert spf_pass_domain((fail + good).encode(), "alice@example.com") is None  # Courier's first verdict
    # a comment that quotes fields is not read as fields
    tricky = ("Received-SPF: pass (x; SPF=MAILFROM; sender=alice@example.com;)\n  SPF=HELO;\n"
              "  sender=alice@example.com;\n")
    assert spf_pass_domain(tricky.encode(), "alice@example.com") is None
    assert spf_pass_domain(good.encode(), "") is None
    assert spf_pass_domain(b"\xff\xfe garbage\n\n", "alice@example.com") is None


def test_auto_whitelist_rule():
    now, ttl = 1_000_000.0, 1000.0
    assert not policy.auto_whitelisted(None, now, ttl, 3)
    assert not policy.auto_whitelisted((now, 2), now, ttl, 3)
    assert policy.auto_whitelisted((now - 10, 3), now, ttl, 3)
    assert not policy.auto_whitelisted((now - 1001, 30), now, ttl, 3)  # silent too long
    assert not policy.auto_whitelisted((now, 30), now, ttl, 0)  # off
    passed = policy.TripletDecision(True, 0, outcomes=[policy.Outcome("k1", "passed"),
                                                policy.Outcome("k1", "passed"),
                                                policy.Outcome("k2", "passed")])
    assert policy.client_record_after(None, passed, now, ttl) == (int(now), 2)
    assert policy.client_record_after((now - 2000, 5), passed, now, ttl) == (int(now), 2)  # expired
    known = policy.TripletDecision(True, 0, outcomes=[policy.Outcome("k", "known")])
    assert policy.client_record_after(None, known, now, ttl) is None
    assert policy.client_record_after((now - 5, 1), known, now, ttl) == (int(now), 1)
    refused = policy.TripletDecision(False, 300, outcomes=[policy.Outcome("k", "new", 300)])
    assert policy.client_record_after((now - 5, 1), refused, now, ttl) is None
    assert policy.client_record_after((now - 5, 4), None, now, ttl) == (int(now), 4)


def test_an_address_with_a_prefix_is_the_network_it_is_in():
    """``192.0.2.7/24`` means 192.0.2.0/24 (not the one address), as in postgrey's lists."""
    whitelist = build(clients=["192.0.2.7/24", "2001:db8::7/64"])
    assert whitelist.match_client(ipaddress.ip_address("192.0.2.99"), None) == "192.0.2.7/24"
    assert whitelist.match_client(ipaddress.ip_address("192.0.3.7"), None) is None
    assert whitelist.match_client(ipaddress.ip_address("2001:db8::ffff"), None) == "2001:db8::7/64"
    assert whitelist.match_client(ipaddress.ip_address("2001:db8:0:1::7"), None) is None
