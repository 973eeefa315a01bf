"""Keeping the store small while mail flows: the TTL purge and the compaction, in the background.

A purge runs at most once per ``senders_purge_interval`` among all processes
sharing the store (the store's ``claim_purge`` says who), in a thread of its
own, and never fails a message: its failure is one log line.
"""

from __future__ import annotations

import functools
import threading
import time
from typing import Callable, Optional

from .decision_line import log_safe
from .metrics import Counts
from .settings import Settings
from .stores import Store, StoreError
from .tables import ttl_of


class Upkeep:
    """When to purge and compact a filter's store, and doing it."""

    def __init__(self, settings: Settings, store: Store, log: Callable[[str], None],
                 mode: str = "background", counts: Optional[Counts] = None) -> None:
        """``mode``: background (a thread), inline (tests, benchmarks) or never."""
        self.settings = settings
        self.store = store
        self.log = log
        self.mode = mode
        self.counts = counts
        self._purging = threading.Lock()
        self._last_purge_check = float("-inf")
        self._next_compaction_check = float("-inf")

    def maybe_start(self, now: float) -> None:
        """Called for every message: start a purge or a compaction in the background when due."""
        # Asking the store takes its lock: ask at most once per interval
        # (and again if the clock was stepped back).
        if now < self._next_compaction_check and \
                self._last_purge_check <= now < self._last_purge_check + self.settings.senders_purge_interval:
            return  # the usual message: nothing is due
        if self.mode == "never" or self._purging.locked():
            return
        if now >= self._next_compaction_check:
            self._next_compaction_check = now + 60  # a failing compaction is not retried per message
            if self.store.wants_compaction():  # a busy server between two purges
                self._in_background(self.compact)
                return
        if self._last_purge_check <= now < self._last_purge_check + self.settings.senders_purge_interval:
            return
        self._last_purge_check = now
        try:
            if not self.store.claim_purge(now, self.settings.senders_purge_interval):
                return
        except (StoreError, OSError) as error:
            self.log(f"greylist: purge not started: {log_safe(error)}")
            return
        self._in_background(self.purge, now)

    def _in_background(self, job: Callable, *args) -> None:
        if self.mode == "inline":
            job(*args)
        else:
            threading.Thread(target=job, args=args, name="greylist-purge", daemon=True).start()

    def compact(self) -> None:
        """Fold what piled up in the store (the gdbm journals); logs and swallows failures."""
        if not self._purging.acquire(blocking=False):
            return
        try:
            self.store.compact()
        except Exception as error:
            self.log(f"greylist: compaction failed: {log_safe(repr(error))}")
            if self.counts is not None:
                self.counts.store_error(error)
        finally:
            self._purging.release()

    def purge(self, now: float, progress: Optional[Callable[[str, int], None]] = None) -> int:
        """Drop expired entries from every table; logs and swallows failures."""
        if not self._purging.acquire(blocking=False):
            return 0
        removed, failed, started = 0, False, time.monotonic()
        try:
            for table in self.store.tables:
                ttl = ttl_of(table, self.settings)
                report = None if progress is None else functools.partial(progress, table)
                removed += self.store.purge(table, now - ttl, report)
        except Exception as error:
            failed = True
            self.log(f"greylist: purge failed: {log_safe(repr(error))}")
            if self.counts is not None:
                self.counts.store_error(error)
        finally:
            self._purging.release()
        if self.counts is not None:
            self.counts.purged(time.monotonic() - started, removed,
                               self.store.entries_after_purge, failed)
        return removed
