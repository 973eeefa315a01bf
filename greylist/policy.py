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

The greylisting rule itself is in ``greylisting.py``; the records of
clients, senders and domains that proved themselves in ``proven.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, NamedTuple, Optional, Protocol, Tuple, Union

from .greylisting import (  # noqa: F401  (the rule's vocabulary, imported from here too)
    Outcome,
    StoredState,
    Timing,
    TripletDecision,
    Write,
    decide_triplets,
    live_time,
    retried_by_message_id,
)
from .proven import (  # noqa: F401
    ClientRecord,
    auto_whitelisted,
    client_record_after,
    domain_record_after,
)
from .replies import DEFAULT_REPLY, INTERNAL_FAILURE_REPLY, tempfail_reply
from .tables import AUTO_WHITELIST_TABLE, DOMAINS_TABLE, GREYTRAPS_TABLE, REPLIES_TABLE, SENDERS_TABLE
from .triplet import IPAddress


@dataclass(frozen=True)
class Rules:
    """Which rules the settings switch on, and their numbers."""

    timing: Timing = Timing()
    dnsbl_greylist_time: float = 1800
    suspicious_only: bool = False  # greylist_clients = 'suspicious'
    auto_whitelist_clients: int = 0
    auto_whitelist_senders: bool = False
    auto_whitelist_domains: int = 0
    greytrap_time: float = 0.0  # 0: no greytraps
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
    # With whitelist_replies, for our users' mail (authenticated, relay client, local):
    # the keys recording that the sender wrote to each remote recipient (keys.replies_sent).
    reply_keys: Tuple[str, ...] = ()
    local_source: bool = False  # Courier's "local" mail source (sendmail), and skip_authenticated
    trap: bool = False  # a recipient is one of greytrap_recipients

    @property
    def ours(self) -> bool:
        """Our users' mail, as the rules below let it pass as theirs."""
        return self.client_ip is None or self.authenticated or self.local_source or self.relay_client


class Stored(NamedTuple):
    """What the store holds for a message: read in one transaction, before deciding."""

    keys: Tuple[str, ...]  # the triplets' keys, in recipient order (repeats kept)
    triplets: Mapping[str, StoredState]
    client_key: Optional[str] = None  # with auto_whitelist_clients
    client: Optional[ClientRecord] = None
    message_keys: Mapping[str, str] = {}  # triplet key -> its Message-ID key (match_retry_by_message_id)
    messages: Mapping[str, Optional[float]] = {}  # Message-ID key -> first greylisted
    sender_key: Optional[str] = None  # with auto_whitelist_senders or _domains
    sender: Optional[float] = None  # when a message of the sender last passed from the network
    domain_key: Optional[str] = None  # with auto_whitelist_domains (not for excepted domains)
    domain: Optional[ClientRecord] = None  # last seen, distinct senders passed
    replies: Tuple[Optional[float], ...] = ()  # per recipient: when it last wrote to the sender
    trap_key: Optional[str] = None  # the client network, with greytrap_recipients
    trapped: Optional[float] = None  # when it was trapped


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
    trap: bool = False  # a recipient is a greytrap


ASK_DNS_LISTS = "ask-dns-lists"  # decide_message's request: ask the DNS lists, then call again
Step = Union[Decision, ReadStore, str]


def decide_message(facts: Facts, stored: Optional[Stored], now: float, rules: Rules) -> Step:
    """The whole decision, in the order of docs/policy.md; the first rule that applies decides."""
    if facts.sender is None:
        return Decision("error", reason="no-sender-record", reply=INTERNAL_FAILURE_REPLY)
    if facts.sender == "":
        return Decision("pass", reason="null-sender")
    if facts.client_ip is None:  # submitted here: our users' mail
        return _ours(Decision("pass", reason="no-client-ip"), facts, now)
    if facts.address is None:
        return Decision("pass", reason="bad-client-ip")
    if not facts.recipients:
        return Decision("pass", reason="no-recipients")
    if facts.authenticated:  # 1
        return _ours(Decision("whitelist", reason="authenticated"), facts, now)
    if facts.local_source:  # 1: a logged-on user's, through sendmail
        return _ours(Decision("whitelist", reason="local"), facts, now)
    if facts.client_rule is not None:  # 2
        return Decision("whitelist", reason=f"whitelisted:client:{facts.client_rule}")
    if facts.relay_client:  # 3
        return _ours(Decision("whitelist", reason="relayclient"), facts, now)
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
    request = ReadStore(recipients, timing, left_out, facts.trap)
    if stored is None:
        return request
    return decide_stored(request, stored, now, rules)


def _ours(decision: Decision, facts: Facts, now: float) -> Decision:
    """Our users' mail passes; with whitelist_replies it records whom they wrote to."""
    decision.writes = [Write(REPLIES_TABLE, key, int(now)) for key in facts.reply_keys]
    return decision


def decide_stored(request: ReadStore, stored: Stored, now: float, rules: Rules) -> Decision:
    """The rules that need the store (8-13), once it was read for ``decide_message``'s request."""
    timing, left_out = request.timing, request.left_out
    ttl = timing.passed_ttl
    if stored.trap_key is not None and rules.greytrap_time:  # 8
        if live_time(stored.trapped, rules.greytrap_time, now) is not None:
            return _greytrapped(timing, rules, [], left_out)
        if request.trap and not auto_whitelisted(stored.client, now, ttl, 1):  # it never passed
            return _greytrapped(timing, rules, [Write(GREYTRAPS_TABLE, stored.trap_key, int(now))], left_out)
    if rules.auto_whitelist_clients and auto_whitelisted(  # 9
            stored.client, now, ttl, rules.auto_whitelist_clients):
        decision = Decision("whitelist", reason="auto-whitelisted", whitelisted_recipients=left_out)
        _record_client(decision, stored, None, now, timing)
        return decision
    if rules.auto_whitelist_senders and live_time(stored.sender, ttl, now) is not None:  # 10
        return Decision("whitelist", "auto-whitelisted:sender", writes=[
            Write(SENDERS_TABLE, stored.sender_key, int(now))], whitelisted_recipients=left_out)
    if stored.domain_key is not None and rules.auto_whitelist_domains and auto_whitelisted(  # 11
            stored.domain, now, ttl, rules.auto_whitelist_domains):
        return Decision("whitelist", "auto-whitelisted:domain", writes=[
            Write(DOMAINS_TABLE, stored.domain_key, int(now), stored.domain[1])],
            whitelisted_recipients=left_out)
    if stored.replies:  # 12: a recipient who wrote to the sender is left out; the others still decide
        kept = [n for n, when in enumerate(stored.replies) if live_time(when, ttl, now) is None]
        if not kept:
            return Decision("whitelist", "reply", whitelisted_recipients=left_out)
        if len(kept) < len(stored.keys):
            left_out += len(stored.keys) - len(kept)
            stored = stored._replace(keys=tuple(stored.keys[n] for n in kept))
    return _greylisting(stored, now, timing, rules, left_out)  # 13


def _greytrapped(timing: Timing, rules: Rules, writes: list, left_out: int) -> Decision:
    """A trapped client gets the reply of a new triplet, word for word: the trap is not told."""
    if rules.learn_only:
        return Decision("learn", "greytrap", "", timing.greylist_time, writes, [], left_out)
    return Decision("greylist", "greytrap", tempfail_reply(timing.greylist_time, rules.reply),
                    timing.greylist_time, writes, [], left_out)


def _greylisting(stored: Stored, now: float, timing: Timing, rules: Rules, left_out: int) -> Decision:
    """Rule 13: the greylisting rule on the triplets left, retries by Message-ID counted."""
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
    if stored.sender_key is not None and triplets.accept and not rules.learn_only:
        _record_sender(decision, stored, now, timing.passed_ttl)
    return decision


def _record_client(decision: Decision, stored: Stored, triplets: Optional[TripletDecision],
                   now: float, timing: Timing) -> None:
    update = client_record_after(stored.client, triplets, now, timing.passed_ttl)
    if update is not None:
        decision.writes.append(Write(AUTO_WHITELIST_TABLE, stored.client_key, *update))


def _record_sender(decision: Decision, stored: Stored, now: float, ttl: float) -> None:
    """A message that passed greylisting proves its sender from its network (and counts
    towards its domain, when the sender is new there)."""
    decision.writes.append(Write(SENDERS_TABLE, stored.sender_key, int(now)))
    if stored.domain_key is not None:
        decision.writes.append(Write(DOMAINS_TABLE, stored.domain_key,
                                     *domain_record_after(stored.domain, stored.sender, now, ttl)))
