from greylist import policy
from greylist.policy import NOT_PASSED, PASSED, StoredState, Timing, Write, decide, format_wait

NOW = 1_790_000_000.5
T = Timing(greylist_time=300, passed_ttl=36 * 86400, not_passed_ttl=86400)


def test_new_triplet_waits_and_is_recorded():
    d = decide(["k"], {}, NOW, T)
    assert not d.accept and d.wait == 300
    assert d.writes == [Write(NOT_PASSED, "k", int(NOW))]
    assert [o.reason for o in d.outcomes] == ["new"]


def test_early_retry_waits_the_rest():
    d = decide(["k"], {"k": StoredState(not_passed=NOW - 100)}, NOW, T)
    assert not d.accept and abs(d.wait - 200) < 1e-9 and d.writes == []


def test_retry_after_delay_moves_to_passed():
    d = decide(["k"], {"k": StoredState(not_passed=NOW - 300)}, NOW, T)
    assert d.accept
    assert d.writes == [Write(PASSED, "k", int(NOW)), Write(NOT_PASSED, "k", None)]
    assert d.outcomes[0].reason == "passed" and d.outcomes[0].pending_for == 300


def test_known_triplet_is_refreshed():
    d = decide(["k"], {"k": StoredState(passed=NOW - 5000)}, NOW, T)
    assert d.accept and d.writes == [Write(PASSED, "k", int(NOW))]


def test_one_unknown_recipient_greylists_the_message_with_longest_wait():
    stored = {"a": StoredState(passed=NOW - 10), "b": StoredState(not_passed=NOW - 250)}
    d = decide(["a", "b", "c"], stored, NOW, T)
    assert not d.accept and d.wait == 300
    assert [o.reason for o in d.outcomes] == ["known", "early-retry", "new"]


def test_repeated_triplet_sees_earlier_write_like_reference():
    # greylist_time 0: the second occurrence passes what the first recorded.
    d = decide(["k", "k"], {}, NOW, Timing(greylist_time=0))
    assert not d.accept and d.wait == 0
    assert [o.reason for o in d.outcomes] == ["new", "passed"]


def test_expired_entries_count_as_unknown():
    stale = {"k": StoredState(not_passed=NOW - 86400 - 1)}
    assert [o.reason for o in decide(["k"], stale, NOW, T).outcomes] == ["new"]
    old = {"k": StoredState(passed=NOW - 36 * 86400 - 1)}
    assert [o.reason for o in decide(["k"], old, NOW, T).outcomes] == ["new"]


def test_future_timestamp_never_waits_longer_than_greylist_time():
    d = decide(["k"], {"k": StoredState(not_passed=NOW + 10 * 86400)}, NOW, T)
    assert not d.accept and d.wait == 300


def test_tombstone_zero_is_absent():
    d = decide(["k"], {"k": StoredState(not_passed=0.0, passed=0.0)}, NOW, T)
    assert d.outcomes[0].reason == "new"


def test_format_wait_rounds_up_and_does_not_wrap():
    assert format_wait(0) == "00:00:00"
    assert format_wait(0.2) == "00:00:01"
    assert format_wait(299.4) == "00:05:00"
    assert format_wait(300) == "00:05:00"
    assert format_wait(25 * 3600) == "25:00:00"
    assert format_wait(100 * 3600 + 61) == "100:01:01"


def test_reply_template():
    assert policy.tempfail_reply(300) == "451 4.7.1 Greylisting in action, please come back in 00:05:00"
    assert policy.tempfail_reply(60, "450 4.2.0 Greylisted, retry in {wait}") == (
        "450 4.2.0 Greylisted, retry in 00:01:00")
