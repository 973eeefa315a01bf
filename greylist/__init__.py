"""courier-greylist: greylisting for the Courier mail server.

This module is the dispatcher's door.  courier-pythonfilter's ``pythonfilter``
program calls ``initFilter()`` once, then ``doFilter(body_path,
control_paths)`` for every message, each in its own thread.  Only the
camelCase names are defined: the 3.0.6 dispatcher runs a module that has
both spellings twice per message.
"""

from __future__ import annotations

import atexit
import sys
from typing import Optional, Sequence

from .filter import GreylistFilter, stderr_line
from .metrics import Counts, MetricsFile, MetricsUnavailable
from .settings import SettingsError, load_settings
from .stores import StoreError, open_store

__version__ = "0.1.0"

# The one filter instance of this process, built by initFilter.
_filter: Optional[GreylistFilter] = None


def initFilter(config_paths: Optional[Sequence[str]] = None) -> None:
    """Read the settings and open the store; stop the dispatcher if either fails.

    ``config_paths`` replaces courier.config's standard paths; the shim that
    ``greylist install --config`` writes passes it.
    """
    global _filter
    counts = metrics_file = None
    try:
        settings = load_settings(config_paths)
        if settings.metrics_file:
            counts = Counts()
            metrics_file = MetricsFile(counts, settings.metrics_file, settings.metrics_interval,
                                       stderr_line)
        store = open_store(settings, wait_for_server=True)
    except (SettingsError, StoreError, MetricsUnavailable) as error:
        stderr_line(f"greylist: cannot start: {error}")
        sys.exit(1)
    unreachable = getattr(store, "unreachable_at_start", None)
    if unreachable:
        stderr_line(f"greylist: {unreachable}; until it answers, each message gets the "
                    f"on_store_error reply ({settings.on_store_error})")
    try:
        _filter = GreylistFilter(settings, store, counts=counts)
    except SettingsError as error:
        store.close()
        stderr_line(f"greylist: cannot start: {error}")
        sys.exit(1)
    # The dispatcher exits normally when courierfilter closes its stdin: the
    # store is closed then, which folds gdbm journals into the files (so that
    # courier-pythonfilter's own module, after a rollback, sees every entry).
    atexit.register(_close_store, store)
    if metrics_file is not None:
        metrics_file.start()
        atexit.register(metrics_file.close)  # runs first: the last figures, then the store
    stderr_line('Initialized the "greylist" python filter')


def _close_store(store) -> None:
    try:
        store.close()
    except Exception as error:  # at exit: report, never raise
        stderr_line(f"greylist: closing the store: {error!r}")


def doFilter(body_path: str, control_paths: Sequence[str]) -> str:
    """Return '' to accept the message, or a 4xx reply while it is greylisted."""
    if _filter is None:
        stderr_line("greylist: action=pass, reason=not-initialized")
        return ""
    return _filter.do_filter(body_path, control_paths)
