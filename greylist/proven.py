"""Clients, senders and domains that proved themselves: their records, and when they pass.

Pure (``policy.py`` calls it).  A record is (last seen, count); it is alive
until it has been silent for ``senders_passed_ttl``, and then counting
starts again.

* A client network (``auto_whitelist_clients``): the count is how many
  triplets of it passed greylisting; at the threshold the network passes.
* A sender from a client network (``auto_whitelist_senders``): one message
  that passed greylisting is enough; the record is a time only.
* A sender domain from a client network (``auto_whitelist_domains``): the
  count is how many distinct senders of the domain passed greylisting from
  there (a sender counts when its own record is new); at the threshold
  every sender of the domain passes.
"""

from __future__ import annotations

from typing import Optional, Tuple

from .greylisting import TripletDecision, live_time

ClientRecord = Tuple[float, int]  # last seen, count


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

def domain_record_after(record: Optional[ClientRecord], sender_was: Optional[float],
                        now: float, ttl: float) -> Tuple[int, int]:
    """The domain's new record after one of its senders passed greylisting.

    ``sender_was``: that sender's record before (None: none).  A sender whose
    record was alive counted already; a new one adds one.
    """
    live = _live_record(record, ttl, now)
    passes = live[1] if live else 0
    if live_time(sender_was, ttl, now) is None:
        passes += 1
    return int(now), passes
