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
from .filter import GreylistFilter, network_of
from .stores import AUTO_WHITELIST_TABLE, NOT_PASSED_TABLE, PASSED_TABLE
from .triplet import IPAddress

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
    """One triplet as the stores know it."""

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
            return "unknown: the next message is greylisted"
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
    """What ``greylist show`` reports."""

    network: str
    triplets: list = field(default_factory=list)
    whitelist_rule: Optional[str] = None
    client: Optional[ClientState] = None


def _state(recipient: str, key: str, stored: policy.StoredState, now: float,
           timing: policy.Timing) -> TripletState:
    first = policy._live(stored.not_passed, timing.not_passed_ttl, now)
    last = policy._live(stored.passed, timing.passed_ttl, now)
    if first is not None:
        return TripletState(recipient, key, "pending", first_seen=first,
                            passes_at=first + timing.greylist_time,
                            expires=first + timing.not_passed_ttl)
    if last is not None:
        return TripletState(recipient, key, "passed", last_seen=last,
                            expires=last + timing.passed_ttl)
    return TripletState(recipient, key, "unknown")


def whitelist_rule(greylist: GreylistFilter, sender: str, recipients: Sequence[str],
                   address: IPAddress, client_name: Optional[str]) -> Optional[str]:
    """The whitelist rule that lets this mail through, as the filter would name it."""
    whitelist = greylist.whitelists.current() if greylist.whitelists is not None else None
    if whitelist is not None:
        rule = whitelist.match_client(address, client_name)
        if rule is not None:
            return f"whitelisted:client:{rule}"
    if greylist.smtpaccess is not None and greylist.smtpaccess.is_relay_client(address):
        return "relayclient"
    if whitelist is not None:
        rule = whitelist.match_sender(sender)
        if rule is not None:
            return f"whitelisted:sender:{rule}"
        rules = [whitelist.match_recipient(r) for r in recipients]
        if rules and all(rules):
            return f"whitelisted:recipient:{rules[0]}"
    return None


def show(greylist: GreylistFilter, sender: str, recipients: Sequence[str], address: IPAddress,
         now: float, client_name: Optional[str] = None) -> Lookup:
    """The state of each triplet, and of the client network, without changing anything."""
    settings = greylist.settings
    keys = greylist.triplet_keys(sender, recipients, address)
    lookup = Lookup(network=network_of(address, settings.ipv4_prefix if address.version == 4
                                       else settings.ipv6_prefix))
    lookup.whitelist_rule = whitelist_rule(greylist, sender.lower(), recipients, address, client_name)
    client_key = greylist.client_key(address)
    with greylist.store.transaction() as tx:
        tx.lock_and_load(keys, (client_key,) if client_key else ())
        for recipient, key in zip(recipients, keys):
            stored = policy.StoredState(not_passed=tx.get(NOT_PASSED_TABLE, key),
                                        passed=tx.get(PASSED_TABLE, key))
            lookup.triplets.append(_state(recipient, key, stored, now, greylist.timing))
        if client_key is not None:
            record = tx.get_counted(AUTO_WHITELIST_TABLE, client_key)
            lookup.client = ClientState(client_key, settings.auto_whitelist_clients)
            if record is not None and policy._live(record[0], settings.senders_passed_ttl, now):
                lookup.client.last_seen, lookup.client.passes = record
                lookup.client.whitelisted = policy.auto_whitelisted(
                    record, now, settings.senders_passed_ttl, settings.auto_whitelist_clients)
    whitelist = greylist.whitelists.current() if greylist.whitelists is not None else None
    for triplet in lookup.triplets:
        recipient_rule = whitelist.match_recipient(triplet.recipient) if whitelist is not None else None
        triplet.whitelisted = (lookup.whitelist_rule
                               or (f"whitelisted:recipient:{recipient_rule}" if recipient_rule else None)
                               or ("auto-whitelisted" if lookup.client and lookup.client.whitelisted
                                   else None))
    return lookup


def allow(greylist: GreylistFilter, sender: str, recipients: Sequence[str], address: IPAddress,
          now: float) -> list:
    """Let the triplets through from now on (as if they had passed); returns their keys."""
    keys = greylist.triplet_keys(sender, recipients, address)
    with greylist.store.transaction() as tx:
        tx.lock_and_load(keys)
        for key in keys:
            tx.set(PASSED_TABLE, key, int(now))
            tx.delete(NOT_PASSED_TABLE, key)
    return keys


def delete(greylist: GreylistFilter, sender: str, recipients: Sequence[str],
           address: IPAddress) -> int:
    """Forget the triplets; returns how many entries there were."""
    keys = greylist.triplet_keys(sender, recipients, address)
    found = 0
    with greylist.store.transaction() as tx:
        tx.lock_and_load(keys)
        for key in keys:
            for table in (PASSED_TABLE, NOT_PASSED_TABLE):
                if tx.get(table, key) is not None:
                    found += 1
                    tx.delete(table, key)
    return found


def stats(greylist: GreylistFilter, now: float, top: int = 20) -> dict:
    """Entries per store, their ages, and the auto-whitelisted networks."""
    store, settings = greylist.store, greylist.settings
    result: dict = {"store": store.description, "now": int(now), "tables": {}}
    for table in store.tables:
        ttl = settings.senders_not_passed_ttl if table == NOT_PASSED_TABLE else settings.senders_passed_ttl
        ages = {label: 0 for _, label in AGE_BUCKETS}
        total = expired = unreadable = 0
        networks = []
        if table == AUTO_WHITELIST_TABLE:
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
            if count is not None and age <= ttl:
                networks.append({"network": key, "passes": count, "last_seen": int(stamp),
                                 "whitelisted": 0 < settings.auto_whitelist_clients <= count})
        entry = {"entries": total, "expired": expired, "unreadable": unreadable, "ages": ages}
        if table == AUTO_WHITELIST_TABLE:
            networks.sort(key=lambda n: (-n["passes"], n["network"]))
            entry["whitelisted_networks"] = sum(1 for n in networks if n["whitelisted"])
            entry["networks"] = networks[:top]
        result["tables"][table] = entry
    return result
