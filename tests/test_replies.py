"""replies.py: the replies' texts, and the wait a greylisted sender is told."""

from greylist.replies import UNAVAILABLE_REPLY, format_wait, tempfail_reply


def test_format_wait_rounds_up_and_does_not_wrap():
    assert format_wait(0) == "00:00:00"
    assert format_wait(0.2) == "00:00:01"
    assert format_wait(299.4) == "00:05:00"
    assert format_wait(300) == "00:05:00"
    assert format_wait(25 * 3600) == "25:00:00"
    assert format_wait(100 * 3600 + 61) == "100:01:01"


def test_reply_template():
    assert tempfail_reply(300) == "451 4.7.1 Greylisting in action, please come back in 00:05:00"
    assert tempfail_reply(60, "450 4.2.0 Greylisted, retry in {wait}") == (
        "450 4.2.0 Greylisted, retry in 00:01:00")


def test_the_fixed_replies_are_temporary_failures():
    assert UNAVAILABLE_REPLY.startswith("451 4.3.0 ")
