"""The greylisting rule: given what the stores know and the time, decide.

Pure: no files, no clock.  Time comes in as ``now``; the stored states come
in as a mapping; the decision says what to reply and what to write back.

The rule (Harris' whitepaper, as the reference module applies it), per
triplet of a message, in recipient order:

* pending (in not-passed) and younger than ``greylist_time``: must wait;
* pending and old enough: passes now; it moves to passed;
* passed before: passes; its last-seen time is refreshed;
* unknown: recorded as pending, and must wait ``greylist_time``.

The message is accepted only when every triplet passes; otherwise the reply
carries the longest wait.  Entries older than their store's time-to-live
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

import functools
import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping, NamedTuple, Optional, Tuple

PASSED = "passed"
NOT_PASSED = "not_passed"
MESSAGE_ID = "message_id"  # sender, recipient and Message-ID -> first greylisted

DEFAULT_REPLY = "451 4.7.1 Greylisting in action, please come back in {wait}"


@dataclass(frozen=True)
class Timing:
    """The four durations of the rule, in seconds."""

    greylist_time: float = 300
    passed_ttl: float = 60 * 60 * 24 * 36
    not_passed_ttl: float = 60 * 60 * 24


# The small records below are named tuples, not frozen dataclasses: several
# are made for every message, and a frozen dataclass costs more than twice as
# much to build (each field goes through object.__setattr__): 790 ns against 350.


class StoredState(NamedTuple):
    """What the two stores hold for one triplet: Unix times, or None."""

    not_passed: Optional[float] = None
    passed: Optional[float] = None


_NOTHING_STORED = StoredState()


class Write(NamedTuple):
    """One change to a store: set ``key`` to ``timestamp``, or delete it."""

    store: str
    key: str
    timestamp: Optional[int]  # None deletes


class Outcome(NamedTuple):
    """How one triplet was decided, for the log and for ``check --explain``."""

    key: str
    reason: str  # new | early-retry | passed | known | retry-by-message-id
    wait: float = 0.0
    pending_for: Optional[float] = None  # for "passed": seconds since first attempt


@dataclass
class Decision:
    """The verdict on a message and the writes that record it."""

    accept: bool
    wait: float
    outcomes: list = field(default_factory=list)
    writes: list = field(default_factory=list)


def _live(timestamp: Optional[float], ttl: float, now: float) -> Optional[float]:
    """A stored time as the rule sees it: None when expired, never in the future.

    A time after ``now`` means the clock was stepped back; it is read as
    ``now`` so that no sender is ever told to wait longer than greylist_time.
    """
    if timestamp is None or timestamp <= 0:
        return None
    if timestamp > now:
        return now
    if now - timestamp > ttl:
        return None
    return timestamp


def decide(
    keys: Iterable[str],
    stored: Mapping[str, StoredState],
    now: float,
    timing: Timing,
) -> Decision:
    """Apply the greylisting rule to the triplets of one message.

    ``keys`` are the message's triplet keys in recipient order, repeats
    included: as in the reference, a repeated triplet sees what the earlier
    one wrote.
    """
    state = dict(stored)  # what this message has written so far shadows the stores
    decision = Decision(accept=True, wait=0.0)
    stamp = int(now)
    for key in keys:
        current = state.get(key, _NOTHING_STORED)
        first_seen = _live(current.not_passed, timing.not_passed_ttl, now)
        last_passed = _live(current.passed, timing.passed_ttl, now)
        if first_seen is not None:
            time_to_go = first_seen + timing.greylist_time - now
            if time_to_go > 0:
                decision.accept = False
                decision.wait = max(decision.wait, time_to_go)
                decision.outcomes.append(Outcome(key, "early-retry", time_to_go))
                if current.not_passed > now:  # from a clock that was ahead: the wait starts now
                    decision.writes.append(Write(NOT_PASSED, key, stamp))
                    state[key] = StoredState(float(stamp), current.passed)
                continue
            decision.writes.append(Write(PASSED, key, stamp))
            decision.writes.append(Write(NOT_PASSED, key, None))
            state[key] = StoredState(None, float(stamp))
            decision.outcomes.append(Outcome(key, "passed", pending_for=now - first_seen))
        elif last_passed is not None:
            decision.writes.append(Write(PASSED, key, stamp))
            state[key] = StoredState(None, float(stamp))
            decision.outcomes.append(Outcome(key, "known"))
        else:
            decision.accept = False
            decision.wait = max(decision.wait, timing.greylist_time)
            decision.writes.append(Write(NOT_PASSED, key, stamp))
            state[key] = StoredState(float(stamp), current.passed)
            decision.outcomes.append(Outcome(key, "new", timing.greylist_time))
    return decision


# --- a retry of the same message from another address of the sender's pool ----------
#
# Big senders retry from any address of a pool, often in another network, so
# the retry's triplet is new again.  With match_retry_by_message_id a message
# that waits is also remembered by sender, recipient and Message-ID; a
# triplet still waiting passes when the same message was first greylisted
# at least greylist_time ago, from wherever it came.


def retried_by_message_id(decision: Decision, message_keys: Mapping[str, str],
                          seen: Mapping[str, Optional[float]], now: float, timing: Timing) -> Decision:
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
        stored = seen.get(message_key)
        first = _live(stored, timing.not_passed_ttl, now)
        if first is not None and first + timing.greylist_time <= now:
            passing.add(key)
            outcomes.append(Outcome(key, "retry-by-message-id", pending_for=now - first))
            continue
        left = outcome.wait if first is None else min(outcome.wait, first + timing.greylist_time - now)
        outcomes.append(outcome._replace(wait=left))
        wait = max(wait, left)
        if first is None or stored > now:  # new, or from a clock that was ahead
            remember[message_key] = stamp
    writes = [w for w in decision.writes if w.key not in passing]
    for key in dict.fromkeys(k for k in message_keys if k in passing):
        writes += [Write(PASSED, key, stamp), Write(NOT_PASSED, key, None)]
    writes += [Write(MESSAGE_ID, message_key, when) for message_key, when in remember.items()]
    accept = all(o.reason not in ("new", "early-retry") for o in outcomes)
    return Decision(accept=accept, wait=0.0 if accept else wait, outcomes=outcomes, writes=writes)


# --- auto-whitelisting of client networks ------------------------------------------
#
# A network's record is (last seen, passes): passes counts the triplets of
# that network that passed greylisting.  Once it reaches the threshold the
# network is let through without greylisting, until it has been silent for
# the time-to-live (then the record is expired and counting starts again).

ClientRecord = Tuple[float, int]


def _live_record(record: Optional[ClientRecord], ttl: float, now: float) -> Optional[ClientRecord]:
    if record is None or _live(record[0], ttl, now) is None:
        return None
    return record


def auto_whitelisted(record: Optional[ClientRecord], now: float, ttl: float, threshold: int) -> bool:
    """True when the client network has earned its way past greylisting."""
    live = _live_record(record, ttl, now)
    return threshold > 0 and live is not None and live[1] >= threshold


def client_record_after(record: Optional[ClientRecord], decision: Optional[Decision],
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


def format_wait(seconds: float) -> str:
    """``HH:MM:SS`` for a wait, rounded up, hours not wrapping at 24.

    Rounding up means a sender still refused is never told ``00:00:00``
    (unless greylist_time itself is 0) and never retries a second early.
    """
    return _hours_minutes_seconds(max(0, math.ceil(seconds - 1e-6)))


@functools.lru_cache(maxsize=1024)
def _hours_minutes_seconds(total: int) -> str:
    # Every greylisted message's reply and log line: mostly the same few waits.
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}"


def tempfail_reply(wait: float, template: str = DEFAULT_REPLY) -> str:
    """The SMTP reply for a message that must wait ``wait`` seconds."""
    return template.format(wait=format_wait(wait))
