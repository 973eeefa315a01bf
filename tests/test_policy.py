"""policy.py: the whole decision, pure: the greylisting rule, retries by Message-ID, the auto-whitelist,
and decide_message's rule order, held to docs/policy.md."""

import ipaddress
import os
import re

from helpers import REPO
from hypothesis import given, settings
from hypothesis import strategies as st

from greylist import policy
from greylist.policy import (
    ASK_DNS_LISTS,
    Facts,
    ReadStore,
    Rules,
    Stored,
    StoredState,
    Timing,
    Write,
    decide_message,
    decide_triplets,
)
from greylist.tables import AUTO_WHITELIST_TABLE, MESSAGE_ID_TABLE
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


# --- the whole decision: decide_message ------------------------------------------------------


ADDRESS = ipaddress.ip_address("192.0.2.10")
RULES = Rules(timing=T, auto_whitelist_clients=1, auto_whitelist_senders=True, auto_whitelist_domains=2,
              greytrap_time=86400)


class Answers:
    """A client's standing on the DNS lists (reputation.Reputation's shape)."""

    def __init__(self, dnswl=None, dnsbl=None, suspicious=None):
        self.dnswl, self.dnsbl, self.suspicious = dnswl, dnsbl, suspicious


def decided(facts: Facts, stored=None, now=NOW, rules=RULES):
    """decide_message, answering its requests as the filter does (the store: ``stored``)."""
    step = decide_message(facts, None, now, rules)
    if isinstance(step, ReadStore):
        step = decide_message(facts, stored or Stored(("k",), {}), now, rules)
    return step


def test_the_rules_apply_in_the_order_docs_policy_md_lists_them():
    """Every rule applies to this message; switching off the one that decided each time walks the
    rules in their order, which must be the document's."""
    facts = Facts("a@example.com", ("b@example.net",), "192.0.2.10", ADDRESS, authenticated=True,
                  client_rule="192.0.2.0/24", relay_client=True, sender_rule="@example.com",
                  recipient_rules=("b@example.net",), opted_in=(False,), dns_lists=True,
                  standing=Answers(dnswl="wl.example"), trap=True)
    stored = Stored(("k",), {}, client_key="192.0.2.0/24", client=(NOW - 10, 5), sender_key="s",
                    sender=NOW - 10, domain_key="d", domain=(NOW - 10, 2), replies=(NOW - 10,),
                    trap_key="192.0.2.0/24", trapped=NOW - 10)
    switches = [dict(authenticated=False), dict(client_rule=None), dict(relay_client=False),
                dict(sender_rule=None), dict(recipient_rules=()), dict(opted_in=None),
                dict(standing=Answers())]
    order = [decided(facts, stored).reason]
    for switch in switches:
        facts = facts._replace(**switch)
        order.append(decided(facts, stored).reason)
    # The store's rules; the trap goes with its recipient (a client that never passed and writes to
    # a trap would be trapped again).
    facts = facts._replace(trap=False)
    for switch in (dict(trapped=None), dict(client=None), dict(sender=None), dict(domain=None),
                   dict(replies=())):
        stored = stored._replace(**switch)
        order.append(decided(facts, stored).reason)
    documented = open(os.path.join(REPO, "docs", "policy.md")).read().split("## The order of the rules")[1]
    listed = re.findall(r"^\d+\. (.*?)(?=^\d+\. |^## |\Z)", documented, re.MULTILINE | re.DOTALL)
    # A whitelist entry or a zone is the message's own; the other reasons are named in full.
    names = [reason.split(":")[0] if reason.startswith(("whitelisted:", "dnswl:")) else reason
             for reason in order]
    assert len(listed) == len(names)
    for item, name in zip(listed, names):
        assert f"`{name}" in item, (name, item[:80])


def test_the_requests_come_in_the_rules_order():
    facts = Facts("a@example.com", ("b@example.net",), "192.0.2.10", ADDRESS, dns_lists=True)
    assert decide_message(facts, None, NOW, RULES) == ASK_DNS_LISTS
    listed = facts._replace(standing=Answers(dnsbl="bl.example"))
    request = decide_message(listed, None, NOW, RULES)
    assert request == ReadStore(("b@example.net",), Timing(1800, T.passed_ttl, T.not_passed_ttl), 0)
    assert decide_message(facts._replace(client_rule="x"), None, NOW, RULES).reason == "whitelisted:client:x"


recipients_strategy = st.lists(st.sampled_from(["a@x.example", "b@x.example", "c@y.example", "d@y.example"]),
                               min_size=1, max_size=4, unique=True)


@settings(max_examples=200, deadline=None)
@given(recipients=recipients_strategy, data=st.data())
def test_the_same_facts_in_any_order_give_the_same_decision(recipients, data):
    states = {r: data.draw(st.sampled_from([StoredState(), StoredState(NOW - 100), StoredState(NOW - 400),
                                            StoredState(None, NOW - 50)])) for r in recipients}
    whitelisted = {r: data.draw(st.sampled_from([None, "@y.example"])) if r.endswith("y.example") else None
                   for r in recipients}
    order = data.draw(st.permutations(recipients))

    def decision(recipients_in_order):
        rules = tuple(whitelisted[r] for r in recipients_in_order)
        facts = Facts("s@example.com", tuple(recipients_in_order), "192.0.2.10", ADDRESS,
                      recipient_rules=rules if any(rules) else ())
        step = decide_message(facts, None, NOW, RULES)
        if isinstance(step, ReadStore):
            step = decide_message(facts, Stored(step.recipients, {r: states[r] for r in step.recipients}),
                                  NOW, RULES)
        return step.action, step.reason, step.wait, sorted(step.writes), step.whitelisted_recipients

    assert decision(recipients) == decision(order)


@settings(max_examples=200, deadline=None)
@given(recipients=recipients_strategy, data=st.data())
def test_writes_applied_and_decided_again_never_greylist_what_just_passed(recipients, data):
    """And the reply carries the longest wait of the triplets, retries by Message-ID counted."""
    states = {r: data.draw(st.sampled_from([StoredState(), StoredState(NOW - 100), StoredState(NOW - 400),
                                            StoredState(None, NOW - 50), StoredState(NOW + 999)]))
              for r in recipients}
    messages = {r: data.draw(st.sampled_from([None, NOW - 500, NOW - 10])) for r in recipients}
    facts = Facts("s@example.com", tuple(recipients), "192.0.2.10", ADDRESS)
    stored = Stored(tuple(recipients), states, message_keys={r: "m" + r for r in recipients},
                    messages={"m" + r: messages[r] for r in recipients})
    first = decide_message(facts, stored, NOW, RULES)
    waits = [o.wait for o in first.outcomes if o.reason in ("new", "early-retry")]
    assert first.wait == (max(waits) if waits else None)
    assert (first.action == "greylist") == bool(waits)
    table: dict = {r: [s.not_passed, s.passed] for r, s in states.items()}
    for write in first.writes:
        if write.table in (PASSED, NOT_PASSED) and write.key in table:
            table[write.key][write.table == PASSED] = write.timestamp
    again = decide_message(facts, stored._replace(triplets={r: StoredState(*v) for r, v in table.items()}),
                           NOW, RULES)
    passed = {o.key for o in first.outcomes if o.reason in ("passed", "known", "retry-by-message-id")}
    assert all(o.reason == "known" for o in again.outcomes if o.key in passed)


def test_an_auto_whitelisted_network_is_refreshed_and_its_triplets_untouched():
    facts = Facts("a@example.com", ("b@example.net",), "192.0.2.10", ADDRESS)
    stored = Stored(("k",), {}, client_key="192.0.2.0/24", client=(NOW - 10, 3))
    decision = decided(facts, stored)
    assert (decision.action, decision.reason) == ("whitelist", "auto-whitelisted")
    assert decision.writes == [Write(AUTO_WHITELIST_TABLE, "192.0.2.0/24", int(NOW), 3)]


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
