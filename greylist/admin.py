"""What the operator's commands do to a store: show, allow, delete, stats.

Each works through the store's transactions, so it is safe while the
dispatcher runs (the same locks, the same database transactions).  The
command line (``cli.py``) prints what these return.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

from . import policy
from .filter import GreylistFilter, read_stored
from .stores import AUTO_WHITELIST_TABLE, COUNTED_TABLES, GREYTRAPS_TABLE, NOT_PASSED_TABLE, PASSED_TABLE
from .tables import ttl_of
from .triplet import IPAddress, network_of

# Age buckets of the stats histogram: (upper bound in seconds, label).
AGE_BUCKETS = (
    (3600, "< 1 hour"),
    (86400, "1 hour - 1 day"),
    (7 * 86400, "1 - 7 days"),
    (36 * 86400, "7 - 36 days"),
    (float("inf"), "> 36 days"),
)


def when(timestamp: float) -> str:
    """A Unix time for people: UTC, to the second."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))


def ago(seconds: float) -> str:
    """A duration for people: the largest two units."""
    seconds = int(max(0, seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


@dataclass
class TripletState:
    """One triplet as the tables know it."""

    recipient: str
    key: str
    state: str  # pending | passed | unknown
    first_seen: Optional[float] = None
    last_seen: Optional[float] = None
    passes_at: Optional[float] = None
    expires: Optional[float] = None
    whitelisted: Optional[str] = None  # the rule that lets its messages through, if any

    def describe(self, now: float) -> str:
        if self.whitelisted:
            stored = "" if self.state == "unknown" else f" (the store: {self._stored(now)})"
            return f"{self.whitelisted}: its messages pass without greylisting{stored}"
        if self.state == "unknown":
            return "unknown (never seen, or forgotten)"
        return self._stored(now)

    def _stored(self, now: float) -> str:
        if self.state == "pending":
            wait = self.passes_at - now
            retry = (f"a retry passes from {when(self.passes_at)} (in {ago(wait)})" if wait > 0
                     else "a retry passes now")
            return (f"pending since {when(self.first_seen)} ({ago(now - self.first_seen)} ago); "
                    f"{retry}; forgotten after {when(self.expires)}")
        if self.state == "passed":
            return (f"passed; last seen {when(self.last_seen)} ({ago(now - self.last_seen)} ago); "
                    f"remembered until {when(self.expires)}")
        return "unknown"


@dataclass
class ClientState:
    """A client network in the auto-whitelist."""

    network: str
    needed: int  # passes that earn the auto-whitelist (auto_whitelist_clients)
    passes: int = 0
    last_seen: Optional[float] = None
    whitelisted: bool = False


@dataclass
class Lookup:
    """What ``greylist show`` reports: what the filter would do with the next such message, and why."""

    network: str
    action: str = ""  # the next message's, as the filter would decide it now
    reason: str = ""
    reply: str = ""
    triplets: list = field(default_factory=list)
    client: Optional[ClientState] = None
    trapped_until: Optional[float] = None  # greytrap_recipients: the client network is trapped until then


def _state(recipient: str, key: str, stored: policy.StoredState, now: float,
           timing: policy.Timing) -> TripletState:
    not_passed, passed = stored
    first = policy.live_time(not_passed, timing.not_passed_ttl, now)
    last = policy.live_time(passed, timing.passed_ttl, now)
    if first is not None:
        return TripletState(recipient, key, "pending", first_seen=first,
                            passes_at=first + timing.greylist_time,
                            expires=first + timing.not_passed_ttl)
    if last is not None:
        return TripletState(recipient, key, "passed", last_seen=last,
                            expires=last + timing.passed_ttl)
    return TripletState(recipient, key, "unknown")


def show(greylist: GreylistFilter, sender: str, recipients: Sequence[str], address: IPAddress,
         now: float, client_name: Optional[str] = None) -> Lookup:
    """What the filter would do with a message from ``sender`` to ``recipients`` from ``address``:
    the same rules, asked the same way (DNS lists included), writing nothing."""
    settings, rules = greylist.settings, greylist.rules
    facts = greylist.exemptions.facts_for(sender, recipients, str(address), client_name)
    step = policy.decide_message(facts, None, now, rules)
    if step is policy.ASK_DNS_LISTS:
        facts = facts._replace(standing=greylist.exemptions.standing(facts))
        step = policy.decide_message(facts, None, now, rules)
    lookup = Lookup(network=network_of(address, settings.ipv4_prefix, settings.ipv6_prefix))
    keys = greylist.keys.of_message(sender, recipients, address)
    with greylist.store.transaction() as tx:  # read only: nothing is written
        every = read_stored(tx, keys)
        if isinstance(step, policy.ReadStore):
            wanted = greylist.keys.of_message(sender, step.recipients, address)
            step = policy.decide_stored(step, read_stored(tx, wanted), now, rules)
    lookup.action, lookup.reason, lookup.reply = step.action, step.reason, step.reply
    rules_of = facts.recipient_rules or (None,) * len(recipients)
    for recipient, key, rule in zip(recipients, every.keys, rules_of):
        triplet = _state(recipient, key, every.triplets[key], now, rules.timing)
        triplet.whitelisted = f"whitelisted:recipient:{rule}" if rule else None
        lookup.triplets.append(triplet)
    if every.trap_key is not None and settings.greytrap_recipients and \
            policy.live_time(every.trapped, settings.greytrap_time, now) is not None:
        lookup.trapped_until = every.trapped + settings.greytrap_time
    if every.client_key is not None and settings.auto_whitelist_clients:
        record = every.client
        lookup.client = ClientState(every.client_key, settings.auto_whitelist_clients)
        if record is not None and policy.live_time(record[0], settings.senders_passed_ttl, now):
            lookup.client.last_seen, lookup.client.passes = record
            lookup.client.whitelisted = policy.auto_whitelisted(
                record, now, settings.senders_passed_ttl, settings.auto_whitelist_clients)
    return lookup


def allow(greylist: GreylistFilter, sender: str, recipients: Sequence[str], address: IPAddress,
          now: float) -> list:
    """Let the triplets through from now on (as if they had passed), the client's network out of
    a greytrap; returns the triplets' keys."""
    keys = greylist.keys.triplets(sender, recipients, address)
    trap = _trap_key(greylist, address)
    with greylist.store.transaction() as tx:
        tx.lock_and_load(keys, {GREYTRAPS_TABLE: (trap,)} if trap else {})
        for key in keys:
            tx.set(PASSED_TABLE, key, int(now))
            tx.delete(NOT_PASSED_TABLE, key)
        if trap:
            tx.delete(GREYTRAPS_TABLE, trap)
    return keys


def _trap_key(greylist: GreylistFilter, address: IPAddress) -> Optional[str]:
    """The client network's key in the greytraps table, when the store has that table."""
    if GREYTRAPS_TABLE not in greylist.store.tables:
        return None
    settings = greylist.settings
    return network_of(address, settings.ipv4_prefix, settings.ipv6_prefix)


def delete(greylist: GreylistFilter, sender: str, recipients: Sequence[str],
           address: IPAddress) -> int:
    """Forget the triplets, and the client network's greytrap; returns how many entries there were."""
    keys = greylist.keys.triplets(sender, recipients, address)
    trap = _trap_key(greylist, address)
    found = 0
    with greylist.store.transaction() as tx:
        tx.lock_and_load(keys, {GREYTRAPS_TABLE: (trap,)} if trap else {})
        for table, key in [(table, key) for key in keys for table in (PASSED_TABLE, NOT_PASSED_TABLE)] \
                + ([(GREYTRAPS_TABLE, trap)] if trap else []):
            if tx.get(table, key) is not None:
                found += 1
                tx.delete(table, key)
    return found


def stats(greylist: GreylistFilter, now: float, top: int = 20) -> dict:
    """Entries per table, their ages, the auto-whitelisted and the trapped networks."""
    store, settings = greylist.store, greylist.settings
    result: dict = {"store": store.description, "now": int(now), "tables": {}}
    for table in store.tables:
        ttl = ttl_of(table, settings)
        ages = {label: 0 for _, label in AGE_BUCKETS}
        total = expired = unreadable = 0
        networks = []
        if table in COUNTED_TABLES:
            rows = ((key, stamp, count) for key, stamp, count in store.counted_items(table))
        else:
            rows = ((key, stamp, None) for key, stamp in store.items(table))
        for key, stamp, count in rows:
            total += 1
            if stamp is None:
                unreadable += 1
                continue
            age = max(0.0, now - stamp)
            if age > ttl:
                expired += 1
            for bound, label in AGE_BUCKETS:
                if age < bound:
                    ages[label] += 1
                    break
            if table == AUTO_WHITELIST_TABLE and age <= ttl:
                networks.append({"network": key, "passes": count, "last_seen": int(stamp),
                                 "whitelisted": 0 < settings.auto_whitelist_clients <= count})
            elif table == GREYTRAPS_TABLE and age <= ttl:
                networks.append({"network": key, "until": int(stamp + ttl)})
        entry = {"entries": total, "expired": expired, "unreadable": unreadable, "ages": ages}
        if table == AUTO_WHITELIST_TABLE:
            networks.sort(key=lambda n: (-n["passes"], n["network"]))
            entry["whitelisted_networks"] = sum(1 for n in networks if n["whitelisted"])
            entry["networks"] = networks[:top]
        elif table == GREYTRAPS_TABLE:
            entry["trapped_networks"] = len(networks)
            entry["trapped"] = sorted(networks, key=lambda n: -n["until"])[:top]
        result["tables"][table] = entry
    return result
