"""The rules: what a message gets, from what is known of it and what the store holds.

Pure: no files, no clock, no network.  What was learned before the store
comes in as ``Facts`` (exemptions.py gathers them), what the store holds as
``Stored``, the time as ``now``; ``decide_message`` returns the ``Decision``:
the action, the reason, the reply, and every write.

The order of the rules (docs/policy.md, which a test holds to this
function) is ``decide_message``'s; the first that applies decides.  Two of
them need what the message's facts alone cannot say: ``decide_message``
then answers ``ASK_DNS_LISTS`` (ask the DNS lists, and call again) or
``ReadStore`` (read the store for these recipients, and call again).

The greylisting rule (Harris' whitepaper, as the reference module applies
it), per triplet of a message, in recipient order:

* pending (in not-passed) and younger than ``greylist_time``: must wait;
* pending and old enough: passes now; it moves to passed;
* passed before: passes; its last-seen time is refreshed;
* unknown: recorded as pending, and must wait ``greylist_time``.

The message is accepted only when every triplet passes; otherwise the reply
carries the longest wait.  Entries older than their table's time-to-live
count as unknown whether or not a purge has removed them yet, so a decision
never depends on when the purge last ran.

A stored time after ``now`` was written while the clock was ahead (an NTP
step, a virtual machine resumed from a snapshot).  It is read as ``now``,
and a pending one is written back as ``now``: the wait it tells the sender
starts with this attempt, and the retry it asks for passes.  With a clock
that never goes back, no stored time is ever after ``now``, and every
decision is the reference's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, NamedTuple, Optional, Protocol, Tuple, Union

from .replies import DEFAULT_REPLY, INTERNAL_FAILURE_REPLY, tempfail_reply
from .tables import AUTO_WHITELIST_TABLE, MESSAGE_ID_TABLE, NOT_PASSED_TABLE, PASSED_TABLE
from .triplet import IPAddress


@dataclass(frozen=True)
class Timing:
    """The durations of the greylisting rule, in seconds."""

    greylist_time: float = 300
    passed_ttl: float = 60 * 60 * 24 * 36
    not_passed_ttl: float = 60 * 60 * 24


@dataclass(frozen=True)
class Rules:
    """Which rules the settings switch on, and their numbers."""

    timing: Timing = Timing()
    dnsbl_greylist_time: float = 1800
    suspicious_only: bool = False  # greylist_clients = 'suspicious'
    auto_whitelist_clients: int = 0
    learn_only: bool = False
    reply: str = DEFAULT_REPLY


class Standing(Protocol):
    """A client's standing on the DNS lists and by its name (reputation.Reputation)."""

    dnswl: Optional[str]
    dnsbl: Optional[str]

    @property
    def suspicious(self) -> Optional[str]: ...


# The small records below are named tuples, not frozen dataclasses: several
# are made for every message, and a frozen dataclass costs more than twice as
# much to build (each field goes through object.__setattr__): 790 ns against 350.


class Facts(NamedTuple):
    """What is known of a message before the store is asked (gathered by exemptions.py)."""

    sender: Optional[str]  # the envelope sender as written; None: no sender record
    recipients: Tuple[str, ...] = ()  # undelivered
    client_ip: Optional[str] = None  # as written; None: mail submitted locally
    address: Optional[IPAddress] = None  # client_ip parsed; None: it is not an IP address
    client_name: Optional[str] = None  # its reverse-DNS name, as Courier recorded it
    authenticated: bool = False  # an SMTP AUTH user, and skip_authenticated
    client_rule: Optional[str] = None  # the client whitelist entry covering it
    relay_client: bool = False  # RELAYCLIENT in smtpaccess, and skip_relayclients
    sender_rule: Optional[str] = None
    recipient_rules: Tuple[Optional[str], ...] = ()  # per recipient: the entry covering it
    opted_in: Optional[Tuple[bool, ...]] = None  # per recipient: in greylist_recipients (None: off)
    dns_lists: bool = False  # the settings ask DNS lists or names of the client
    standing: Optional[Standing] = None  # their answers, once asked


class StoredState(NamedTuple):
    """What the two tables hold for one triplet: Unix times, or None."""

    not_passed: Optional[float] = None
    passed: Optional[float] = None


_NOTHING_STORED = StoredState()
ClientRecord = Tuple[float, int]  # last seen, triplets passed


class Stored(NamedTuple):
    """What the store holds for a message: read in one transaction, before deciding."""

    keys: Tuple[str, ...]  # the triplets' keys, in recipient order (repeats kept)
    triplets: Mapping[str, StoredState]
    client_key: Optional[str] = None  # with auto_whitelist_clients
    client: Optional[ClientRecord] = None
    message_keys: Mapping[str, str] = {}  # triplet key -> its Message-ID key (match_retry_by_message_id)
    messages: Mapping[str, Optional[float]] = {}  # Message-ID key -> first greylisted


class Write(NamedTuple):
    """One change to a table: set ``key`` to ``timestamp`` (and ``count``), or delete it."""

    table: str
    key: str
    timestamp: Optional[int]  # None deletes
    count: Optional[int] = None  # the clients table's


class Outcome(NamedTuple):
    """How one triplet was decided, for the log and for ``check --explain``."""

    key: str
    reason: str  # new | early-retry | passed | known | retry-by-message-id
    wait: float = 0.0
    pending_for: Optional[float] = None  # for "passed": seconds since first attempt


@dataclass
class Decision:
    """What a message gets, why, and what to record."""

    action: str  # pass | greylist | whitelist | learn | error
    reason: str
    reply: str = ""
    wait: Optional[float] = None  # the longest wait, when a triplet must wait
    writes: list = field(default_factory=list)
    outcomes: list = field(default_factory=list)  # per triplet, when the store was read
    whitelisted_recipients: int = 0  # recipients a whitelist entry left out
    delay: Optional[float] = None  # for a triplet that passed: seconds since its first attempt


class ReadStore(NamedTuple):
    """``decide_message``'s request: read the store for these recipients, then call again
    (or ``decide_stored`` with this request: the same decision, the rules before the store skipped)."""

    recipients: Tuple[str, ...]
    timing: Timing  # the one that applies (a DNSBL listing lengthens greylist_time)
    left_out: int = 0  # recipients a whitelist entry left out


ASK_DNS_LISTS = "ask-dns-lists"  # decide_message's request: ask the DNS lists, then call again
Step = Union[Decision, ReadStore, str]


def decide_message(facts: Facts, stored: Optional[Stored], now: float, rules: Rules) -> Step:
    """The whole decision, in the order of docs/policy.md; the first rule that applies decides."""
    if facts.sender is None:
        return Decision("error", reason="no-sender-record", reply=INTERNAL_FAILURE_REPLY)
    if facts.sender == "":
        return Decision("pass", reason="null-sender")
    if facts.client_ip is None:
        return Decision("pass", reason="no-client-ip")
    if facts.address is None:
        return Decision("pass", reason="bad-client-ip")
    if not facts.recipients:
        return Decision("pass", reason="no-recipients")
    if facts.authenticated:  # 1
        return Decision("whitelist", reason="authenticated")
    if facts.client_rule is not None:  # 2
        return Decision("whitelist", reason=f"whitelisted:client:{facts.client_rule}")
    if facts.relay_client:  # 3
        return Decision("whitelist", reason="relayclient")
    if facts.sender_rule is not None:  # 4
        return Decision("whitelist", reason=f"whitelisted:sender:{facts.sender_rule}")
    recipients, opted_in = facts.recipients, facts.opted_in
    if facts.recipient_rules:  # 5: a whitelisted recipient is left out; the others still decide
        kept = [n for n, rule in enumerate(facts.recipient_rules) if rule is None]
        if not kept:
            return Decision("whitelist", reason=f"whitelisted:recipient:{facts.recipient_rules[0]}")
        recipients = tuple(recipients[n] for n in kept)
        opted_in = None if opted_in is None else tuple(opted_in[n] for n in kept)
    left_out = len(facts.recipients) - len(recipients)
    if opted_in is not None and not all(opted_in):
        # 6: greylisted only when every recipient asked for it (docs/policy.md says why)
        return Decision("pass", reason="recipient-not-greylisted", whitelisted_recipients=left_out)
    timing = rules.timing
    if facts.dns_lists:  # 7
        standing = facts.standing
        if standing is None:
            return ASK_DNS_LISTS
        if standing.dnswl:
            return Decision("pass", reason=f"dnswl:{standing.dnswl}", whitelisted_recipients=left_out)
        if standing.dnsbl:
            timing = Timing(rules.dnsbl_greylist_time, timing.passed_ttl, timing.not_passed_ttl)
        elif rules.suspicious_only and not standing.suspicious:
            return Decision("pass", reason="not-suspicious", whitelisted_recipients=left_out)
    request = ReadStore(recipients, timing, left_out)
    if stored is None:
        return request
    return decide_stored(request, stored, now, rules)


def decide_stored(request: ReadStore, stored: Stored, now: float, rules: Rules) -> Decision:
    """The rules that need the store (8, 9), once it was read for ``decide_message``'s request."""
    timing, left_out = request.timing, request.left_out
    if rules.auto_whitelist_clients and auto_whitelisted(  # 8
            stored.client, now, timing.passed_ttl, rules.auto_whitelist_clients):
        decision = Decision("whitelist", reason="auto-whitelisted", whitelisted_recipients=left_out)
        _record_client(decision, stored, None, now, timing)
        return decision
    return _greylisting(stored, now, timing, rules, left_out)  # 9


def _greylisting(stored: Stored, now: float, timing: Timing, rules: Rules, left_out: int) -> Decision:
    """Rule 9: the greylisting rule on the triplets left, retries by Message-ID counted."""
    triplets = decide_triplets(stored.keys, stored.triplets, now, timing)
    if stored.message_keys and not triplets.accept:
        triplets = retried_by_message_id(triplets, stored.message_keys, stored.messages, now, timing)
    # One walk over the outcomes: the most telling reason, and the longest time a triplet waited.
    passed = by_message_id = early = False
    delay = None
    for outcome in triplets.outcomes:
        reason = outcome.reason
        if reason == "passed" or reason == "retry-by-message-id":
            passed, by_message_id = True, by_message_id or reason == "retry-by-message-id"
            if delay is None or outcome.pending_for > delay:
                delay = outcome.pending_for
        elif reason == "early-retry":
            early = True
    if triplets.accept:
        reason = "retry-by-message-id" if by_message_id else "passed" if passed else "known"
        decision = Decision("pass", reason, "", None, triplets.writes, triplets.outcomes, left_out, delay)
    else:
        reply = "" if rules.learn_only else tempfail_reply(triplets.wait, rules.reply)
        decision = Decision("learn" if rules.learn_only else "greylist", "early-retry" if early else "new",
                            reply, triplets.wait, triplets.writes, triplets.outcomes, left_out, delay)
    if stored.client_key is not None:
        _record_client(decision, stored, triplets, now, timing)
    return decision


def _record_client(decision: Decision, stored: Stored, triplets: Optional[TripletDecision],
                   now: float, timing: Timing) -> None:
    update = client_record_after(stored.client, triplets, now, timing.passed_ttl)
    if update is not None:
        decision.writes.append(Write(AUTO_WHITELIST_TABLE, stored.client_key, *update))


# --- the greylisting rule, per triplet ------------------------------------------------------


class TripletDecision(NamedTuple):
    """The greylisting rule's verdict on a message's triplets, and the writes that record it."""

    accept: bool
    wait: float
    outcomes: list = []
    writes: list = []


def live_time(timestamp: Optional[float], ttl: float, now: float) -> Optional[float]:
    """A stored time as the rule sees it: None when expired, never in the future."""
    if timestamp is None or timestamp <= 0:
        return None
    if timestamp > now:
        return now
    if now - timestamp > ttl:
        return None
    return timestamp


def decide_triplets(keys: Iterable[str], stored: Mapping[str, StoredState], now: float,
                    timing: Timing) -> TripletDecision:
    """Apply the greylisting rule to the triplets of one message.

    ``keys`` are the message's triplet keys in recipient order, repeats
    included: as in the reference, a repeated triplet sees what the earlier
    one wrote.
    """
    state = dict(stored)  # what this message has written so far shadows the tables
    accept, wait, outcomes, writes = True, 0.0, [], []
    stamp = int(now)
    for key in keys:
        current = state.get(key, _NOTHING_STORED)
        first_seen = live_time(current.not_passed, timing.not_passed_ttl, now)
        if first_seen is not None:
            time_to_go = first_seen + timing.greylist_time - now
            if time_to_go > 0:
                accept = False
                wait = max(wait, time_to_go)
                outcomes.append(Outcome(key, "early-retry", time_to_go))
                if current.not_passed > now:  # from a clock that was ahead: the wait starts now
                    writes.append(Write(NOT_PASSED_TABLE, key, stamp))
                    state[key] = StoredState(float(stamp), current.passed)
                continue
            writes.append(Write(PASSED_TABLE, key, stamp))
            writes.append(Write(NOT_PASSED_TABLE, key, None))
            state[key] = StoredState(None, float(stamp))
            outcomes.append(Outcome(key, "passed", 0.0, now - first_seen))
        elif live_time(current.passed, timing.passed_ttl, now) is not None:
            writes.append(Write(PASSED_TABLE, key, stamp))
            state[key] = StoredState(None, float(stamp))
            outcomes.append(Outcome(key, "known"))
        else:
            accept = False
            wait = max(wait, timing.greylist_time)
            writes.append(Write(NOT_PASSED_TABLE, key, stamp))
            state[key] = StoredState(float(stamp), current.passed)
            outcomes.append(Outcome(key, "new", timing.greylist_time))
    return TripletDecision(accept, wait, outcomes, writes)


# --- a retry of the same message from another address of the sender's pool ----------
#
# Big senders retry from any address of a pool, often in another network, so
# the retry's triplet is new again.  With match_retry_by_message_id a message
# that waits is also remembered by sender, recipient and Message-ID; a
# triplet still waiting passes when the same message was first greylisted
# at least greylist_time ago, from wherever it came.


def retried_by_message_id(decision: TripletDecision, message_keys: Mapping[str, str],
                          seen: Mapping[str, Optional[float]], now: float,
                          timing: Timing) -> TripletDecision:
    """The decision once retries of the same message count.

    ``message_keys`` maps a triplet key to its message key; ``seen`` maps a
    message key to when that message was first greylisted (or None).
    """
    stamp = int(now)
    outcomes, passing, wait = [], set(), 0.0
    remember: dict = {}
    for outcome in decision.outcomes:
        key = outcome.key
        if outcome.reason not in ("new", "early-retry") or key not in message_keys:
            outcomes.append(outcome)
            wait = max(wait, outcome.wait) if outcome.reason in ("new", "early-retry") else wait
            continue
        message_key = message_keys[key]
        written = seen.get(message_key)
        first = live_time(written, timing.not_passed_ttl, now)
        if first is not None and first + timing.greylist_time <= now:
            passing.add(key)
            outcomes.append(Outcome(key, "retry-by-message-id", pending_for=now - first))
            continue
        left = outcome.wait if first is None else min(outcome.wait, first + timing.greylist_time - now)
        outcomes.append(outcome._replace(wait=left))
        wait = max(wait, left)
        if first is None or written > now:  # new, or from a clock that was ahead
            remember[message_key] = stamp
    writes = [w for w in decision.writes if w.key not in passing]
    for key in dict.fromkeys(k for k in message_keys if k in passing):
        writes += [Write(PASSED_TABLE, key, stamp), Write(NOT_PASSED_TABLE, key, None)]
    writes += [Write(MESSAGE_ID_TABLE, message_key, when) for message_key, when in remember.items()]
    accept = all(o.reason not in ("new", "early-retry") for o in outcomes)
    return TripletDecision(accept=accept, wait=0.0 if accept else wait, outcomes=outcomes, writes=writes)


# --- auto-whitelisting of client networks ------------------------------------------
#
# A network's record is (last seen, passes): passes counts the triplets of
# that network that passed greylisting.  Once it reaches the threshold the
# network is let through without greylisting, until it has been silent for
# the time-to-live (then the record is expired and counting starts again).


def _live_record(record: Optional[ClientRecord], ttl: float, now: float) -> Optional[ClientRecord]:
    if record is None or live_time(record[0], ttl, now) is None:
        return None
    return record


def auto_whitelisted(record: Optional[ClientRecord], now: float, ttl: float, threshold: int) -> bool:
    """True when the client network has earned its way past greylisting."""
    live = _live_record(record, ttl, now)
    return threshold > 0 and live is not None and live[1] >= threshold


def client_record_after(record: Optional[ClientRecord], decision: Optional[TripletDecision],
                        now: float, ttl: float) -> Optional[Tuple[int, int]]:
    """The network's new record after a message, or None when nothing changes.

    ``decision`` is None for a message let through by the auto-whitelist
    itself (it only refreshes the time).  Triplets that passed greylisting
    with this message add to the count; any accepted message from a network
    with a record keeps it alive.
    """
    live = _live_record(record, ttl, now)
    passes = live[1] if live else 0
    if decision is None:
        return (int(now), passes) if live else None
    newly = len({o.key for o in decision.outcomes if o.reason == "passed"})
    if newly:
        return int(now), passes + newly
    if live and decision.accept:
        return int(now), passes
    return None
