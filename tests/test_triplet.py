import hashlib
import ipaddress
import subprocess
import sys

import pytest
from helpers import REPO
from hypothesis import example, given
from hypothesis import strategies as st

from greylist.triplet import InvalidClientAddress, client_network, parse_client_ip, triplet_key


@pytest.mark.parametrize(
    "text, expected",
    [
        ("192.0.2.10", "192.0.2.10"),
        ("::ffff:192.0.2.10", "192.0.2.10"),
        ("2001:db8::1", "2001:db8::1"),
        ("fe80::1%eth0", "fe80::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        (" 192.0.2.1 ", "192.0.2.1"),
    ],
)
def test_parse_client_ip(text, expected):
    assert str(parse_client_ip(text)) == expected


@pytest.mark.parametrize("text", ["", "localhost", "192.0.2", "1.2.3.4.5", "::g", "%eth0", "x" * 5000])
def test_parse_client_ip_refuses_garbage(text):
    with pytest.raises(InvalidClientAddress):
        parse_client_ip(text)


def _ipaddress_answer(text):
    """What ipaddress alone makes of a client address: the reference's parser."""
    candidate = text.strip()
    if candidate.startswith("[") and candidate.endswith("]"):
        candidate = candidate[1:-1]
    try:
        address = ipaddress.ip_address(candidate.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


_OCTETS = st.sampled_from(["0", "00", "01", "010", "1", "9", "10", "99", "100", "199", "249", "250",
                           "255", "256", "300", "999", "0255", "", " 1", "1 ", "+1", "-1", "\u0663",
                           "1\x00", "0x1"])


@given(st.one_of(st.lists(_OCTETS, min_size=1, max_size=6).map(".".join),
                 st.text(alphabet="0123456789.:abcdefx% []\x00", max_size=20)))
@example("01.2.3.4")
@example("1.2.3.04")
@example("1.2.3")
@example("\u0661.2.3.4")
def test_parse_client_ip_accepts_exactly_what_ipaddress_accepts(text):
    # The IPv4 fast path (inet_pton) must neither accept more nor answer
    # differently: an address it let through that ipaddress refuses would be
    # greylisted instead of accepted as bad-client-ip.
    expected = _ipaddress_answer(text)
    try:
        got = parse_client_ip.__wrapped__(text)
    except InvalidClientAddress:
        got = None
    assert got == expected
    assert got is None or type(got) is type(expected)


def test_network_matches_reference_text():
    assert client_network(ipaddress.ip_address("198.51.100.7")) == "198.51.100"
    assert client_network(ipaddress.ip_address("2001:db8:1:2::5")) == "2001:0db8:0001"
    assert client_network(ipaddress.ip_address("::1")) == "0000:0000:0000"


@given(st.integers(min_value=0, max_value=2**32 - 1))
@example(0)
@example(2**32 - 1)
def test_ipv4_network_is_the_first_three_octets_of_the_text(number):
    address = ipaddress.IPv4Address(number)
    text = str(address)
    assert client_network(address) == text[: text.rindex(".")]


def test_other_prefixes_use_cidr():
    assert client_network(ipaddress.ip_address("198.51.100.7"), ipv4_prefix=16) == "198.51.0.0/16"
    assert client_network(ipaddress.ip_address("2001:db8:1:2::5"), ipv6_prefix=64) == "2001:db8:1:2::/64"


def test_key_is_md5_of_concatenation():
    expected = hashlib.md5(b"a@b.example" + b"c@d.example" + b"192.0.2").hexdigest()
    assert triplet_key("a@b.example", "c@d.example", "192.0.2") == expected


def test_key_collision_is_kept_for_compatibility():
    # The reference joins without a separator; stores depend on it.
    assert triplet_key("x@example.com", "o@example.net", "1.2.3") == triplet_key(
        "x@example.co", "mo@example.net", "1.2.3")


def test_key_is_the_same_without_cpython_md5_module():
    # A Python built without CPython's own hash modules falls back to hashlib's MD5.
    code = ("import sys; sys.modules['_md5'] = None\n"
            "from greylist import triplet\n"
            "assert triplet._md5.__module__ != '_md5'\n"
            "print(triplet.triplet_key('a@b.example', 'c@d.example', '192.0.2'))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == hashlib.md5(b"a@b.example" + b"c@d.example" + b"192.0.2").hexdigest()


def test_the_widest_and_narrowest_prefixes():
    """/32 and /128 keep the whole address; /0 makes every client one network."""
    v4, v6 = parse_client_ip("192.0.2.7"), parse_client_ip("2001:db8::7")
    assert client_network(v4, 32, 128) == "192.0.2.7/32"
    assert client_network(v6, 32, 128) == "2001:db8::7/128"
    assert client_network(parse_client_ip("192.0.2.8"), 32) != client_network(v4, 32)
    assert client_network(v4, 0, 0) == "0.0.0.0/0" == client_network(parse_client_ip("203.0.113.1"), 0)
    assert client_network(v6, 24, 0) == "::/0"
