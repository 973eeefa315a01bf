from hypothesis import given, settings
from hypothesis import strategies as st

from greylist import policy
from greylist.policy import StoredState, Timing, Write, decide_triplets, format_wait
from greylist.tables import MESSAGE_ID_TABLE
from greylist.tables import NOT_PASSED_TABLE as NOT_PASSED
from greylist.tables import PASSED_TABLE as PASSED

NOW = 1_790_000_000.5
T = Timing(greylist_time=300, passed_ttl=36 * 86400, not_passed_ttl=86400)


def test_new_triplet_waits_and_is_recorded():
    d = decide_triplets(["k"], {}, NOW, T)
    assert not d.accept and d.wait == 300
    assert d.writes == [Write(NOT_PASSED, "k", int(NOW))]
    assert [o.reason for o in d.outcomes] == ["new"]


def test_early_retry_waits_the_rest():
    d = decide_triplets(["k"], {"k": StoredState(not_passed=NOW - 100)}, NOW, T)
    assert not d.accept and abs(d.wait - 200) < 1e-9 and d.writes == []


def test_retry_after_delay_moves_to_passed():
    d = decide_triplets(["k"], {"k": StoredState(not_passed=NOW - 300)}, NOW, T)
    assert d.accept
    assert d.writes == [Write(PASSED, "k", int(NOW)), Write(NOT_PASSED, "k", None)]
    assert d.outcomes[0].reason == "passed" and d.outcomes[0].pending_for == 300


def test_known_triplet_is_refreshed():
    d = decide_triplets(["k"], {"k": StoredState(passed=NOW - 5000)}, NOW, T)
    assert d.accept and d.writes == [Write(PASSED, "k", int(NOW))]


def test_one_unknown_recipient_greylists_the_message_with_longest_wait():
    stored = {"a": StoredState(passed=NOW - 10), "b": StoredState(not_passed=NOW - 250)}
    d = decide_triplets(["a", "b", "c"], stored, NOW, T)
    assert not d.accept and d.wait == 300
    assert [o.reason for o in d.outcomes] == ["known", "early-retry", "new"]


def test_repeated_triplet_sees_earlier_write_like_reference():
    # greylist_time 0: the second occurrence passes what the first recorded.
    d = decide_triplets(["k", "k"], {}, NOW, Timing(greylist_time=0))
    assert not d.accept and d.wait == 0
    assert [o.reason for o in d.outcomes] == ["new", "passed"]


def test_expired_entries_count_as_unknown():
    stale = {"k": StoredState(not_passed=NOW - 86400 - 1)}
    assert [o.reason for o in decide_triplets(["k"], stale, NOW, T).outcomes] == ["new"]
    old = {"k": StoredState(passed=NOW - 36 * 86400 - 1)}
    assert [o.reason for o in decide_triplets(["k"], old, NOW, T).outcomes] == ["new"]


def test_future_timestamp_never_waits_longer_than_greylist_time():
    d = decide_triplets(["k"], {"k": StoredState(not_passed=NOW + 10 * 86400)}, NOW, T)
    assert not d.accept and d.wait == 300


def test_tombstone_zero_is_absent():
    d = decide_triplets(["k"], {"k": StoredState(not_passed=0.0, passed=0.0)}, NOW, T)
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


# --- the clock steps -----------------------------------------------------------------------



def _apply(store: dict, decision) -> None:
    for write in decision.writes:
        table = store.setdefault(write.table, {})
        if write.timestamp is None:
            table.pop(write.key, None)
        else:
            table[write.key] = float(write.timestamp)


def _attempt(store: dict, now: float, timing: Timing = T):
    stored = {"k": StoredState(store.get(NOT_PASSED, {}).get("k"), store.get(PASSED, {}).get("k"))}
    decision = decide_triplets(["k"], stored, now, timing)
    _apply(store, decision)
    return decision


def test_a_pending_time_from_a_clock_that_was_ahead_is_written_back_as_now():
    d = decide_triplets(["k"], {"k": StoredState(not_passed=NOW + 86400)}, NOW, T)
    assert not d.accept and d.wait == 300 and [o.reason for o in d.outcomes] == ["early-retry"]
    assert d.writes == [Write(NOT_PASSED, "k", int(NOW))]
    # a past one is left as it is (the reference's rule)
    assert decide_triplets(["k"], {"k": StoredState(not_passed=NOW - 10)}, NOW, T).writes == []


def test_a_day_ahead_then_corrected_costs_one_greylist_time_not_a_day():
    """The clock is a day ahead when a new sender tries, and right again 60 s later."""
    store: dict = {}
    real = NOW
    assert _attempt(store, real + 86400).wait == 300  # told 00:05:00
    real += 300  # the clock was corrected meanwhile; the sender retries when told
    retry = _attempt(store, real)
    assert not retry.accept and retry.wait == 300  # told 00:05:00 again, from now
    real += 300
    assert _attempt(store, real).accept  # and it passes when told


def test_an_hour_back_and_staying_costs_one_greylist_time_more():
    store: dict = {}
    assert _attempt(store, NOW).wait == 300
    stepped = NOW + 300 - 3600  # the retry, five minutes later, on a clock an hour behind
    assert _attempt(store, stepped).wait == 300
    assert _attempt(store, stepped + 300).accept


@settings(max_examples=300, deadline=None)
@given(offsets=st.lists(st.integers(-10 * 86400, 10 * 86400), min_size=1, max_size=6),
       greylist_time=st.sampled_from([1, 60, 300, 1800]),
       late=st.lists(st.integers(0, 200), min_size=8, max_size=8))
def test_once_the_clock_is_right_every_promise_is_kept(offsets, greylist_time, late):
    """Whatever the clock did before, a sender that retries no sooner than it is told passes
    at its second attempt on the right clock at the latest, and never before it was told."""
    timing = Timing(greylist_time=greylist_time)
    store: dict = {}
    real = NOW
    for offset in offsets:  # attempts while the clock is off by these
        _attempt(store, real + offset, timing)
        real += greylist_time
    attempts = 0
    while True:  # the clock is right from here on
        decision = _attempt(store, real, timing)
        attempts += 1
        if decision.accept:
            break
        assert 0 < decision.wait <= greylist_time
        real += decision.wait + late[attempts]
        assert attempts < 3, "the sender was told a wait that did not end"
    assert attempts <= 2


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(st.integers(0, 3 * 86400), min_size=1, max_size=10))
def test_on_a_clock_that_never_goes_back_nothing_is_rewritten(steps):
    """With a monotonic clock the extra rule never fires: the reference's decisions, write for write."""
    store: dict = {}
    now = NOW
    for step in steps:
        now += step
        stored = {"k": StoredState(store.get(NOT_PASSED, {}).get("k"), store.get(PASSED, {}).get("k"))}
        decision = decide_triplets(["k"], stored, now, T)
        if any(o.reason == "early-retry" for o in decision.outcomes):
            assert decision.writes == []  # the reference writes nothing for an early retry
        _apply(store, decision)


def test_a_message_id_time_from_a_clock_that_was_ahead_is_written_back_as_now():
    d = decide_triplets(["k"], {}, NOW, T)
    retried = policy.retried_by_message_id(d, {"k": "m"}, {"m": NOW + 86400}, NOW, T)
    assert not retried.accept and retried.wait == 300
    assert Write(MESSAGE_ID_TABLE, "m", int(NOW)) in retried.writes
    past = policy.retried_by_message_id(d, {"k": "m"}, {"m": NOW - 10}, NOW, T)
    assert not [w for w in past.writes if w.table == MESSAGE_ID_TABLE]


@settings(max_examples=200, deadline=None)
@given(left=st.lists(st.integers(1, 299), min_size=0, max_size=4), new=st.integers(0, 3),
       known=st.integers(0, 3), seed=st.randoms(use_true_random=False))
def test_the_reply_carries_the_longest_wait_whatever_the_order(left, new, known, seed):
    """Early retries with various waits left, new and known triplets, in any order."""
    stored = {f"e{n}": StoredState(not_passed=NOW - 300 + wait) for n, wait in enumerate(left)}
    stored.update({f"k{n}": StoredState(passed=NOW - 10) for n in range(known)})
    keys = list(stored) + [f"n{n}" for n in range(new)]
    seed.shuffle(keys)
    waits = list(left) + [300] * new
    d = decide_triplets(keys, stored, NOW, T)
    assert d.accept == (not waits)
    assert d.wait == (max(waits) if waits else 0)
