"""The greylisting rule, per triplet of a message, and retries matched by Message-ID.

Pure: no files, no clock, no network (``policy.py`` calls it).

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

from dataclasses import dataclass
from typing import Iterable, Mapping, NamedTuple, Optional

from .tables import MESSAGE_ID_TABLE, NOT_PASSED_TABLE, PASSED_TABLE


@dataclass(frozen=True)
class Timing:
    """The durations of the greylisting rule, in seconds."""

    greylist_time: float = 300
    passed_ttl: float = 60 * 60 * 24 * 36
    not_passed_ttl: float = 60 * 60 * 24



class StoredState(NamedTuple):
    """What the two tables hold for one triplet: Unix times, or None.

    The rules unpack it, so a store may hand a plain ``(not_passed, passed)`` pair
    (``Transaction.triplet_states`` does: a named tuple per triplet costs more than its read).
    """

    not_passed: Optional[float] = None
    passed: Optional[float] = None


_NOTHING_STORED = StoredState()


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
        not_passed, passed = state.get(key, _NOTHING_STORED)
        first_seen = live_time(not_passed, timing.not_passed_ttl, now)
        if first_seen is not None:
            time_to_go = first_seen + timing.greylist_time - now
            if time_to_go > 0:
                accept = False
                wait = max(wait, time_to_go)
                outcomes.append(Outcome(key, "early-retry", time_to_go))
                if not_passed > now:  # from a clock that was ahead: the wait starts now
                    writes.append(Write(NOT_PASSED_TABLE, key, stamp))
                    state[key] = (float(stamp), passed)
                continue
            writes.append(Write(PASSED_TABLE, key, stamp))
            writes.append(Write(NOT_PASSED_TABLE, key, None))
            state[key] = (None, float(stamp))
            outcomes.append(Outcome(key, "passed", 0.0, now - first_seen))
        elif live_time(passed, timing.passed_ttl, now) is not None:
            writes.append(Write(PASSED_TABLE, key, stamp))
            state[key] = (None, float(stamp))
            outcomes.append(Outcome(key, "known"))
        else:
            accept = False
            wait = max(wait, timing.greylist_time)
            writes.append(Write(NOT_PASSED_TABLE, key, stamp))
            state[key] = (float(stamp), passed)
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
