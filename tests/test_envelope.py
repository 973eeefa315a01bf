import os

import courier.control
import pytest
from helpers import write_control
from hypothesis import given, settings
from hypothesis import strategies as st

from greylist.envelope import EnvelopeError, decode_value, read_envelope


def test_reads_sender_recipients_ip(tmp_path):
    path = write_control(str(tmp_path / "C1"), "Alice@Example.COM", ["b@x.example", "c@x.example"],
                         "::ffff:192.0.2.10")
    env = read_envelope([path])
    assert env.sender == "Alice@Example.COM"
    assert env.recipients == ["b@x.example", "c@x.example"]
    assert env.client_ip == "::ffff:192.0.2.10"
    assert env.received_from == "dns; helo.example.org (mx.example.org [::ffff:192.0.2.10])"


def test_delivered_recipients_are_skipped_per_file(tmp_path):
    first = write_control(str(tmp_path / "C1"), recipients=["a@x", "b@x", "c@x"], delivered=[1])
    second = write_control(str(tmp_path / "C2"), recipients=["d@x", "e@x"], delivered=[0])
    assert read_envelope([first, second]).recipients == ["a@x", "c@x", "e@x"]
    assert courier.control.get_recipients([first, second]) == ["a@x", "c@x", "e@x"]


def test_status_record_beyond_the_list_is_ignored(tmp_path):
    path = write_control(str(tmp_path / "C1"), recipients=["a@x", "b@x"], delivered=[0, 7],
                         extra=b"Sjunk 1\nF\n")
    env = read_envelope([path])
    assert env.recipients == ["b@x"]  # recipient 0 delivered; S7, "Sjunk 1" and "F" change nothing


def test_missing_file_raises_envelope_error(tmp_path):
    with pytest.raises(EnvelopeError, match="nope"):
        read_envelope([str(tmp_path / "nope")])


def test_decode_value_matches_courier_control():
    for raw in [b" a@b \r", b"\xff\xfe@x", b"a\x00b", b"caf\xc3\xa9@x", b"", b"  "]:
        assert decode_value(raw) == courier.control.try_decode(raw)


def _reference_view(path):
    """What courier.control sees, or None where it raises (its known defects)."""
    try:
        return (courier.control.get_sender([path]), courier.control.get_recipients([path]),
                courier.control.get_senders_ip([path]))
    except (IndexError, ValueError):
        return None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes_never_raise_and_agree_with_courier_control(tmp_path_factory, data):
    path = os.path.join(str(tmp_path_factory.mktemp("fuzz")), "C")
    with open(path, "wb") as handle:
        handle.write(data)
    env = read_envelope([path])
    assert isinstance(env.recipients, list)
    reference = _reference_view(path)
    if reference is not None:
        assert (env.sender, env.recipients, env.client_ip) == reference


record = st.sampled_from([b"s", b"r", b"R", b"N", b"S", b"F", b"O", b"OTCPREMOTEIP=", b"O TCPREMOTEIP=\xc3",
                         b"f", b"i", b"x"])
line = st.tuples(record, st.binary(max_size=30)).map(lambda t: t[0] + t[1])


@settings(max_examples=300, deadline=None)
@given(st.lists(line, max_size=40))
def test_record_shaped_fuzz(tmp_path_factory, lines):
    path = os.path.join(str(tmp_path_factory.mktemp("fuzz")), "C")
    with open(path, "wb") as handle:
        handle.write(b"\n".join(lines) + b"\n")
    env = read_envelope([path])
    reference = _reference_view(path)
    if reference is not None:
        assert (env.sender, env.recipients, env.client_ip) == reference


def test_the_first_client_address_of_a_control_file_is_the_one(tmp_path):
    """As courier.control.get_senders_ip: a second OTCPREMOTEIP record changes nothing."""
    path = write_control(str(tmp_path / "C1"), ip="192.0.2.10", extra=b"OTCPREMOTEIP=198.51.100.99\n")
    assert read_envelope([path]).client_ip == "192.0.2.10"
    assert courier.control.get_senders_ip([path]) == "192.0.2.10"
