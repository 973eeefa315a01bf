"""What the running filter did, for Prometheus: counted here, written by a background thread.

With ``metrics_file`` set, the dispatcher writes the Prometheus text format
to that file every ``metrics_interval`` seconds and at exit, for
node_exporter's textfile collector (one file per producer, no timestamps,
written to a temporary name of its own beside it and renamed: safe_files.py).

A decision only queues what it did (a deque append, no lock); the writer
counts the queue and builds the exposition from the counts with a custom
collector when it writes the file.  The writer never touches the store, so
it never waits for the store lock nor delays a decision.
"""

from __future__ import annotations

import bisect
import collections
import errno
import os
import threading
import time
from typing import Callable, Dict, Iterator, Optional, Tuple

from .errors import GreylistError
from .extras import install_hint
from .safe_files import replace_file

# Decision latency buckets, seconds: a local store decides in well under a
# millisecond, a remote one in a few; the top ones catch lock waits and timeouts.
DECISION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# A store transaction that waited longer than this for the lock is counted.
LONG_LOCK_WAIT = 0.010

PREFIX = "courier_greylist"
_COUNT_EVERY = 1.0  # seconds between two countings of the queue of decisions


class MetricsUnavailable(GreylistError):
    """metrics_file is set but prometheus_client is not installed."""


def reason_label(reason: str) -> str:
    """The decision line's reason without a whitelist entry: the label's values stay few."""
    if reason.startswith("whitelisted:"):
        return ":".join(reason.split(":", 2)[:2])
    return reason


def error_kind(error: BaseException) -> str:
    """A short, bounded name for a store failure: ENOSPC, EIO, OperationalError, ..."""
    cause = error.__cause__ or error
    if isinstance(cause, OSError) and cause.errno in errno.errorcode:
        return errno.errorcode[cause.errno]
    return type(cause).__name__


class Counts:
    """The numbers behind the metrics; every method is safe from any thread."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.Lock()
        self.clock = clock
        self._queued: collections.deque = collections.deque()  # decided, not yet counted
        self._decisions: Dict[Tuple[str, str], int] = {}
        self.latency_buckets = [0] * (len(DECISION_BUCKETS) + 1)  # the last: above every bound
        self.latency_sum = 0.0
        self._last_decision: Optional[float] = None  # time.perf_counter()
        self.store_errors: Dict[str, int] = {}
        self.long_lock_waits = 0
        self.purges: Dict[str, int] = {"ok": 0, "failed": 0}
        self.purge_seconds = 0.0
        self.purge_removed = 0
        self.last_purge: Optional[float] = None
        self.entries: Dict[str, int] = {}
        self.dns: Dict[Tuple[str, str], int] = {}

    def decided(self, action: str, reason: str, seconds: float, finished: float) -> None:
        """One message decided in ``seconds``; ``finished`` is time.perf_counter() at its end.

        Runs for every message, so it only queues: a deque's append is
        thread-safe without a lock, and the counting happens when the
        figures are read (``_count_queued``), off the message's path.
        """
        self._queued.append((action, reason, seconds, finished))

    def _count_queued(self) -> None:
        """Fold the queued decisions into the counts (under self._lock)."""
        take = self._queued.popleft
        while True:
            try:
                action, reason, seconds, finished = take()
            except IndexError:  # empty: appends may go on meanwhile, they wait for the next time
                return
            key = (action, reason_label(reason))
            self._decisions[key] = self._decisions.get(key, 0) + 1
            self.latency_buckets[bisect.bisect_left(DECISION_BUCKETS, seconds)] += 1
            self.latency_sum += seconds
            if action != "error":
                self._last_decision = finished

    def store_error(self, error: BaseException) -> None:
        kind = error_kind(error)
        with self._lock:
            self.store_errors[kind] = self.store_errors.get(kind, 0) + 1

    def lock_waited(self) -> None:
        """A message transaction waited more than LONG_LOCK_WAIT for the store lock."""
        with self._lock:
            self.long_lock_waits += 1

    def purged(self, seconds: float, removed: int, entries: Dict[str, int], failed: bool) -> None:
        with self._lock:
            self.purges["failed" if failed else "ok"] += 1
            self.purge_seconds += seconds
            self.purge_removed += removed
            self.entries.update(entries)
            if not failed:
                self.last_purge = self.clock()

    def dns_query(self, zone: str, result: str) -> None:
        with self._lock:
            self.dns[(zone, result)] = self.dns.get((zone, result), 0) + 1

    @property
    def decisions(self) -> Dict[Tuple[str, str], int]:
        """Messages by (action, reason label), a copy."""
        return self.snapshot()["decisions"]

    def snapshot(self) -> dict:
        """A consistent copy, taken under the lock, for one exposition."""
        with self._lock:
            self._count_queued()
            last = self._last_decision
            return {
                "decisions": dict(self._decisions),
                "latency_buckets": list(self.latency_buckets),
                "latency_sum": self.latency_sum,
                # perf_counter's time of it, as Unix time
                "last_decision": None if last is None else self.clock() - (time.perf_counter() - last),
                "store_errors": dict(self.store_errors),
                "long_lock_waits": self.long_lock_waits,
                "purges": dict(self.purges),
                "purge_seconds": self.purge_seconds,
                "purge_removed": self.purge_removed,
                "last_purge": self.last_purge,
                "entries": dict(self.entries),
                "dns": dict(self.dns),
            }


def _filled(family, values: dict):
    """A labelled family with one sample per key of ``values`` (a label value, or a tuple of them)."""
    for key, value in sorted(values.items()):
        family.add_metric(list(key) if isinstance(key, tuple) else [key], value)
    return family


def _when(family, timestamp: Optional[float]):
    """A time gauge, without a sample until the event has happened."""
    if timestamp is not None:
        family.add_metric([], timestamp)
    return family


def _families(snapshot: dict) -> Iterator:
    """The metric families of one snapshot, built with prometheus_client's own types."""
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    yield _filled(CounterMetricFamily(f"{PREFIX}_decisions", "Messages decided, by the decision line's "
                                      "action and reason (whitelist entries left out).",
                                      labels=["action", "reason"]), snapshot["decisions"])

    cumulative, buckets = 0, []
    for bound, count in zip(DECISION_BUCKETS + (float("inf"),), snapshot["latency_buckets"]):
        cumulative += count
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
    yield HistogramMetricFamily(f"{PREFIX}_decision_duration_seconds",
                                "Time the filter took to decide a message.",
                                buckets=buckets, sum_value=snapshot["latency_sum"])

    yield _when(GaugeMetricFamily(f"{PREFIX}_last_decision_timestamp_seconds",
                                  "When the last message was decided without an error (Unix time)."),
                snapshot["last_decision"])
    yield _filled(CounterMetricFamily(f"{PREFIX}_store_errors", "Store failures while deciding or "
                                      "purging, by kind (an errno name, or the driver's error class).",
                                      labels=["kind"]), snapshot["store_errors"])

    yield CounterMetricFamily(f"{PREFIX}_store_lock_waits",
                              f"Message transactions that waited more than {LONG_LOCK_WAIT * 1000:g} ms "
                              f"for the store lock.", value=snapshot["long_lock_waits"])

    yield _filled(CounterMetricFamily(f"{PREFIX}_purges", "Purge runs of this process, by result.",
                                      labels=["result"]), snapshot["purges"])
    yield CounterMetricFamily(f"{PREFIX}_purge_duration_seconds",
                              "Time spent purging, all runs together.", value=snapshot["purge_seconds"])
    yield CounterMetricFamily(f"{PREFIX}_purge_removed_entries",
                              "Expired entries the purges removed.", value=snapshot["purge_removed"])
    yield _when(GaugeMetricFamily(f"{PREFIX}_last_purge_timestamp_seconds",
                                  "When this process last finished a purge (Unix time)."),
                snapshot["last_purge"])
    yield _filled(GaugeMetricFamily(f"{PREFIX}_store_entries", "Entries per table after the last purge "
                                    "this process ran.", labels=["table"]), snapshot["entries"])
    if snapshot["dns"]:
        yield _filled(CounterMetricFamily(f"{PREFIX}_dns_queries", "DNS list queries, by zone and result "
                                          "(listed, unlisted, timeout, error).", labels=["zone", "result"]),
                      snapshot["dns"])


class _Collector:
    """prometheus_client's custom-collector protocol over a Counts."""

    def __init__(self, counts: Counts) -> None:
        self.counts = counts

    def collect(self) -> Iterator:
        return _families(self.counts.snapshot())


def registry_for(counts: Counts):
    """A prometheus_client registry holding only this filter's metrics."""
    try:
        from prometheus_client import CollectorRegistry
    except ImportError:
        raise MetricsUnavailable("metrics_file is set, but prometheus_client is not installed "
                                 f"({install_hint('metrics')})") from None
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(counts))
    return registry


def directory_problem(path: str) -> Optional[str]:
    """Why the metrics file's directory will not take it, or None."""
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        return f"directory {directory} does not exist"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"directory {directory} is not writable by uid {os.geteuid()}"
    return None


class MetricsFile:
    """Writes the metrics file every ``interval`` seconds from a thread of its own, and at close."""

    def __init__(self, counts: Counts, path: str, interval: float,
                 log: Callable[[str], None]) -> None:
        self.counts = counts
        self.path = path
        self.interval = interval
        self.log = log
        self._registry = registry_for(counts)
        self._stop = threading.Event()
        self._failing = False
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        problem = directory_problem(self.path)
        if problem:
            self.log(f"greylist: metrics file {self.path}: {problem}; trying again every {self.interval:g} s")
            self._failing = True
        self._thread = threading.Thread(target=self._run, name="greylist-metrics", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # The queue of decisions is counted every second at least, so that it
        # stays short (about a second of mail) whatever the interval.
        due = time.monotonic() + self.interval
        while not self._stop.wait(min(_COUNT_EVERY, max(0.0, due - time.monotonic()))):
            if time.monotonic() >= due:
                self.write()
                due = time.monotonic() + self.interval
            else:
                self.counts.snapshot()

    def write(self) -> bool:
        """Write the file now; a failure is logged once until a write succeeds again.

        Through a temporary name of its own, never through a link: the
        directory is often node_exporter's, shared with other users
        (prometheus_client's ``write_to_textfile`` uses a predictable name and
        follows links there).
        """
        from prometheus_client import generate_latest

        try:
            replace_file(self.path, generate_latest(self._registry), 0o644)  # node_exporter: another user
        except OSError as error:
            if not self._failing:
                self.log(f"greylist: metrics file {self.path}: {error.strerror or error}; "
                         f"trying again every {self.interval:g} s")
                self._failing = True
            return False
        if self._failing:
            self.log(f"greylist: metrics file {self.path} written again")
            self._failing = False
        return True

    def close(self) -> None:
        """Stop the thread and write the last figures."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.write()


def store_figures(stats: dict) -> str:
    """``greylist stats --prometheus``: what admin.stats counted, in the text format.

    Names of their own (``_stats_``), so that a cron job's file and the
    dispatcher's can both be collected without a clash.
    """
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import GaugeMetricFamily

    entries = GaugeMetricFamily(f"{PREFIX}_stats_entries", "Entries per table, counted by "
                                "greylist stats.", labels=["table"])
    expired = GaugeMetricFamily(f"{PREFIX}_stats_expired_entries", "Entries past their TTL, "
                                "waiting for the purge.", labels=["table"])
    families = [entries, expired]
    for table, entry in sorted(stats["tables"].items()):
        entries.add_metric([table], entry["entries"])
        expired.add_metric([table], entry["expired"])
        if "whitelisted_networks" in entry:
            families.append(GaugeMetricFamily(
                f"{PREFIX}_stats_auto_whitelisted_networks",
                "Client networks auto_whitelist_clients accepts without greylisting.",
                value=entry["whitelisted_networks"]))

    class Figures:
        def collect(self) -> Iterator:
            return iter(families)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Figures())
    return generate_latest(registry).decode("utf-8")
