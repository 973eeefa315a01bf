"""courier-greylist: greylisting for the Courier mail server.

This module is the dispatcher's door.  courier-pythonfilter's ``pythonfilter``
program calls ``initFilter()`` once, then ``doFilter(body_path,
control_paths)`` for every message, each in its own thread.  Only the
camelCase names are defined: the 3.0.6 dispatcher runs a module that has
both spellings twice per message.

Greylisting is never silently off.  When the filter cannot start (a setting
it cannot take, a store it cannot open), ``initFilter`` says why in one line
and returns all the same: were the dispatcher to exit, it would make no
socket, and Courier would pass every message unfiltered.  Instead every
message gets ``NOT_STARTED_REPLY``, a temporary failure that Courier hands
on, so mail waits in the senders' queues until the settings are fixed and
the filter restarted; the reason is logged again every ten minutes, and the
status file says it (``greylist status``).
"""

from __future__ import annotations

import atexit
import threading
import time
from typing import TYPE_CHECKING, Optional, Sequence

from .maillog import stderr_line
from .replies import UNAVAILABLE_REPLY

if TYPE_CHECKING:
    from .filter import GreylistFilter

# The rooms are imported by initFilter, not here: ``import greylist.triplet`` (a
# fold's copying child, a command) loads no filter, store or metrics module.

from .version import VERSION as __version__  # noqa: E402

NOT_STARTED_REPLY = UNAVAILABLE_REPLY
_TELL_AGAIN = 600.0  # seconds between two log lines saying why the filter did not start

# The one filter instance of this process, built by initFilter; or why there is none.
_filter: Optional[GreylistFilter] = None
_problem = "initFilter() was not called"
_told = [float("-inf")]  # when the problem was last logged
_told_lock = threading.Lock()


def initFilter(config_paths: Optional[Sequence[str]] = None) -> None:
    """Read the settings and open the store; say so in one line, and never raise.

    ``config_paths`` replaces courier.config's standard paths; the shim that
    ``greylist install --config`` writes passes it.
    """
    global _filter, _problem
    from .settings import standard_config_paths
    from .status import StatusFile
    from .status import path as status_path

    paths = list(config_paths) if config_paths is not None else standard_config_paths()
    status = StatusFile(status_path(), paths, __version__, stderr_line,
                        activity=lambda: _filter.last_decision if _filter is not None else None)
    try:
        greylist, closers = _build(paths)
    except Exception as error:  # whatever it is, mail must not pass unfiltered: see the docstring
        _problem = str(error) or repr(error)
        _say_why()
        _told[0] = time.monotonic()
        status.failed(_problem)
        atexit.register(status.close)
        return
    _filter = greylist
    for close in closers:  # registered in reverse: the metrics' last figures, then the store
        atexit.register(close)
    atexit.register(status.close)  # runs first: "stopped" as soon as the dispatcher exits
    status.started(greylist.store.description)
    unreachable = getattr(greylist.store, "unreachable_at_start", None)
    if unreachable:
        stderr_line(f"greylist: {unreachable}; until it answers, each message gets the "
                    f"on_store_error reply ({greylist.settings.on_store_error})")
    stderr_line('Initialized the "greylist" python filter')


def _build(paths: Sequence[str]) -> tuple:
    """The filter of these settings files, and what to close at exit (in the order to close)."""
    from .filter import GreylistFilter
    from .metrics import Counts, MetricsFile
    from .settings import load_settings
    from .stores import open_store

    settings = load_settings(paths)
    counts = metrics_file = None
    if settings.metrics_file:
        counts = Counts()
        metrics_file = MetricsFile(counts, settings.metrics_file, settings.metrics_interval, stderr_line)
    store = open_store(settings, wait_for_server=True)
    try:
        greylist = GreylistFilter(settings, store, counts=counts)
    except BaseException:
        store.close()
        raise
    # The dispatcher exits normally when courierfilter closes its stdin: the
    # store is closed then, which folds gdbm journals into the files (so that
    # courier-pythonfilter's own module, after a rollback, sees every entry).
    closers = [lambda: _close_store(store)]
    if metrics_file is not None:
        metrics_file.start()
        closers.append(metrics_file.close)
    return greylist, closers


def _close_store(store) -> None:
    try:
        store.close()
    except Exception as error:  # at exit: report, never raise
        stderr_line(f"greylist: closing the store: {error!r}")


def doFilter(body_path: str, control_paths: Sequence[str]) -> str:
    """Return '' to accept the message, or a 4xx reply while it is greylisted."""
    if _filter is None:
        return _not_started()
    return _filter.do_filter(body_path, control_paths)


def _not_started() -> str:
    stderr_line("greylist: action=error, reason=not-started")
    now = time.monotonic()
    with _told_lock:
        tell = now >= _told[0] + _TELL_AGAIN
        if tell:
            _told[0] = now
    if tell:
        _say_why()
    return NOT_STARTED_REPLY


def _say_why() -> None:
    stderr_line(f"greylist: cannot start: {_problem}; every message gets a 451 until the settings are "
                f"fixed and the filter restarted (greylist restart)")
