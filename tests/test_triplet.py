import hashlib
import ipaddress

import pytest

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


def test_network_matches_reference_text():
    assert client_network(ipaddress.ip_address("198.51.100.7")) == "198.51.100"
    assert client_network(ipaddress.ip_address("2001:db8:1:2::5")) == "2001:0db8:0001"
    assert client_network(ipaddress.ip_address("::1")) == "0000:0000:0000"


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
