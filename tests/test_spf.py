"""spf.py: Courier's own SPF verdict on MAIL FROM, believed only above its own Received line."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from greylist.spf import spf_pass_domain

SPF = ("Received-SPF: {result} (mx.local: SPF record at example.com designates 192.0.2.1 (a; b))\n"
       "  SPF={check};\n  sender={sender};\n  remoteip=::ffff:192.0.2.1;\n  remotehost=;\n"
       "  helo=h.example.com;\n  receiver=mx.local;\n")
RECEIVED = "Received: from h (h [::ffff:192.0.2.1])\n  by mx.local with ESMTP\n"
GOOD = SPF.format(result="pass", check="MAILFROM", sender="alice@example.com")


@given(block=st.binary(max_size=400), sender=st.text(max_size=40))
def test_any_header_block_and_sender_give_the_senders_domain_or_none(block, sender):
    found = spf_pass_domain(block, sender)
    assert found is None or found == sender.rpartition("@")[2].lower()


@given(client_wrote=st.text(max_size=200).map(lambda t: t.replace("\n\n", "\n")))
def test_nothing_below_couriers_received_line_is_believed(client_wrote):
    block = (RECEIVED + client_wrote + "\n" + GOOD).encode()
    assert spf_pass_domain(block, "alice@example.com") is None


@given(line_end=st.sampled_from(["\n", "\r\n"]), case=st.sampled_from(["Received-SPF", "received-spf"]))
def test_couriers_own_pass_is_read_with_either_line_end(line_end, case):
    block = (GOOD.replace("Received-SPF", case) + RECEIVED).replace("\n", line_end).encode()
    assert spf_pass_domain(block, "Alice@Example.COM") == "example.com"


def test_spf_header_forms():
    good = SPF.format(result="pass", check="MAILFROM", sender="Alice@Example.com")
    assert spf_pass_domain((good + RECEIVED + "\n").encode(), "alice@example.com") == "example.com"
    helo = SPF.format(result="pass", check="HELO", sender="alice@example.com")
    assert spf_pass_domain((helo + good + RECEIVED).encode(), "alice@example.com") == "example.com"
    assert spf_pass_domain((RECEIVED + good).encode(), "alice@example.com") is None
    fail = SPF.format(result="fail", check="MAILFROM", sender="alice@example.com")
    assert spf_pass_domain((fail + good).encode(), "alice@example.com") is None  # Courier's first verdict
    # a comment that quotes fields is not read as fields
    tricky = ("Received-SPF: pass (x; SPF=MAILFROM; sender=alice@example.com;)\n  SPF=HELO;\n"
              "  sender=alice@example.com;\n")
    assert spf_pass_domain(tricky.encode(), "alice@example.com") is None
    assert spf_pass_domain(good.encode(), "") is None
    assert spf_pass_domain(b"\xff\xfe garbage\n\n", "alice@example.com") is None


def test_a_pass_for_another_sender_or_after_the_header_end_is_not_this_senders():
    other = SPF.format(result="pass", check="MAILFROM", sender="mallory@example.com")
    assert spf_pass_domain(other.encode(), "alice@example.com") is None
    assert spf_pass_domain(("Subject: hi\n\n" + GOOD).encode(), "alice@example.com") is None
    assert spf_pass_domain(GOOD.encode(), "alice") is None  # no domain to key by
