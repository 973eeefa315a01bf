"""The dispatcher's status file: what ``greylist status`` and ``greylist restart`` read.

The dispatcher writes it when the filter starts (or fails to), every
``INTERVAL`` seconds while it runs, and when it exits, to a temporary name of
its own renamed into place (safe_files.py).  It lives where Courier keeps
the filters' sockets (``<localstatedir>/allfilters``, Courier's mail user's
own directory), under a name with a leading dot, which Courier and
courierfilter pass over.

The file is one JSON object:

============== ========================================================================
key            meaning
============== ========================================================================
pid            the dispatcher's process id
started        when the filter started (Unix time)
state          ``deciding``; ``not-started`` (every message gets a 451, see
               ``problem``); ``stopped`` (the dispatcher exited)
problem        why the filter did not start
settings       the settings files it was started with: ``path``, ``sha256`` (null:
               the file did not exist)
store          the store's description
last_decision  when a message was last decided without an error (Unix time), or null
version        courier-greylist's version
written        when this was written (Unix time)
============== ========================================================================
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from typing import Callable, List, Optional, Sequence

from .safe_files import read_regular, replace_file

NAME = ".courier-greylist.status"
INTERVAL = 15.0  # seconds between two writes while the dispatcher runs
_LIMIT = 1 << 16


def path() -> str:
    """Where the dispatcher of this host writes its status (Courier's localstatedir)."""
    try:
        import courier.config

        localstatedir = courier.config.localstatedir
    except (ImportError, AttributeError):
        localstatedir = "/var/lib/courier"
    return os.path.join(localstatedir, "allfilters", NAME)


def fingerprint(paths: Sequence[str]) -> List[dict]:
    """Each settings file's path and the SHA-256 of what it holds now (None when it does not exist)."""
    prints = []
    for name in paths:
        try:
            digest: Optional[str] = hashlib.sha256(read_regular(name, 1 << 20)).hexdigest()
        except OSError:
            digest = None
        prints.append({"path": name, "sha256": digest})
    return prints


def read(location: Optional[str] = None) -> Optional[dict]:
    """The status file's contents, or None when there is none (or it is not one of ours)."""
    try:
        data = json.loads(read_regular(location or path(), _LIMIT))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("pid"), int) else None


class StatusFile:
    """Written by the dispatcher; ``activity()`` gives the last decision's time when it writes."""

    def __init__(self, location: str, settings_paths: Sequence[str], version: str,
                 log: Callable[[str], None], activity: Callable[[], Optional[float]] = lambda: None,
                 clock: Callable[[], float] = time.time) -> None:
        self.location = location
        self.log = log
        self.activity = activity
        self.clock = clock
        self._stop = threading.Event()
        self._failing = False
        self._written_decision: Optional[float] = None
        self.state = {"pid": os.getpid(), "started": clock(), "state": "not-started", "problem": None,
                      "settings": fingerprint(settings_paths), "store": None, "last_decision": None,
                      "version": version}

    def started(self, store: str) -> None:
        self.state.update(state="deciding", store=store, problem=None)
        self.write()
        threading.Thread(target=self._run, name="greylist-status", daemon=True).start()

    def failed(self, problem: str) -> None:
        self.state.update(state="not-started", problem=problem)
        self.write()

    def _run(self) -> None:
        while not self._stop.wait(INTERVAL):
            if self.activity() != self._written_decision:
                self.write()

    def write(self) -> bool:
        """Write the file now; a failure is one log line until a write works again."""
        self._written_decision = self.state["last_decision"] = self.activity()
        self.state["written"] = self.clock()
        try:
            replace_file(self.location, json.dumps(self.state).encode() + b"\n", 0o644)
        except OSError as error:
            if not self._failing:
                self._failing = True
                self.log(f"greylist: status file {self.location}: {error.strerror or error}; "
                         f"greylist status cannot tell what runs (trying again every {INTERVAL:g} s)")
            return False
        self._failing = False
        return True

    def close(self) -> None:
        """At the dispatcher's exit."""
        self._stop.set()
        self.state["state"] = "stopped"
        self.write()
