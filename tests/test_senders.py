"""senders.py: per-message tags taken out of envelope senders (normalize_senders)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from greylist.senders import normalize_sender

LOCAL = st.text("abcdef0123456789-_.+=/", min_size=1, max_size=30)
DOMAIN = st.sampled_from(["example.com", "lists.example.org", "bounce.example.net"])


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


@given(local=LOCAL, domain=DOMAIN)
def test_normalizing_twice_changes_nothing_more(local, domain):
    once = normalize_sender(f"{local}@{domain}")
    assert normalize_sender(once) == once


@given(local=LOCAL.filter(lambda text: not text.startswith(("srs0", "srs1"))), domain=DOMAIN)
def test_the_domain_is_kept_unless_srs_names_the_original(local, domain):
    assert normalize_sender(f"{local}@{domain}").rpartition("@")[2] == domain


@given(st.text(max_size=60))
def test_any_text_is_taken_and_an_address_stays_an_address(sender):
    normal = normalize_sender(sender)
    assert ("@" in normal) == ("@" in sender)


@given(tag=st.integers(0, 10**12), hex_tag=st.binary(min_size=4, max_size=8).map(bytes.hex))
def test_messages_of_one_list_share_one_sender(tag, hex_tag):
    forms = [f"bounce-{tag}@lists.example.org", f"bounce-{hex_tag}@lists.example.org"
             if any(c.isdigit() for c in hex_tag) else f"bounce-{tag + 1}@lists.example.org"]
    assert {normalize_sender(form) for form in forms} == {"bounce-#@lists.example.org"}
