"""Courier's side of the dispatcher: is it running, and restarting it so that it really restarts.

courierfilter runs each active filter (a link in ``<sysconfdir>/filters/active``)
and, on SIGHUP, starts those it does not run yet and stops, closing their
standard input, those whose link is gone.  ``filterctl stop pythonfilter;
filterctl start pythonfilter`` back to back therefore races it:

* courierfilter may handle the first signal after the link is back: nothing
  changes, and the old dispatcher keeps the old code and settings;
* or it stops the dispatcher, waits for it to exit, and a second signal that
  came meanwhile is lost (it looks for one only before it sleeps): the
  dispatcher is gone, its socket with it, and Courier passes every message
  unfiltered (measured: 7 times out of 7 on Courier 1.0.16);
* and a new dispatcher started before the old one has exited loses its
  socket when the old one removes its own, at the same path.

``restart`` does it in order: stop, wait until the old dispatcher has
exited, start, and signal courierfilter again until a new dispatcher has
made its socket (and, when it runs this filter, said in its status file that
it started).  Every wait is bounded.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

from . import status as status_file
from .errors import GreylistError

FILTER = "pythonfilter"
EXIT_WAIT = 60.0  # seconds for the old dispatcher to finish its messages and close the store
START_WAIT = 60.0  # seconds for the new one to load its modules and make its socket
_POLL = 0.05
_SIGNAL_AGAIN = 1.0  # seconds between two SIGHUPs to courierfilter while waiting for the start


class ControlError(GreylistError):
    """Something on the host stops the restart; the message says what to do."""


def _courier(name: str, default: str) -> str:
    try:
        import courier.config

        return getattr(courier.config, name)
    except (ImportError, AttributeError):
        return default


def active_link() -> str:
    return os.path.join(_courier("sysconfdir", "/etc/courier"), "filters", "active", FILTER)


def socket_path() -> str:
    return os.path.join(_courier("localstatedir", "/var/lib/courier"), "allfilters", FILTER)


def filter_conf() -> Optional[str]:
    """The pythonfilter.conf the dispatcher reads: the first readable one, where it looks."""
    for directory in ("/etc", "/usr/local/etc", _courier("sysconfdir", "/etc/courier")):
        candidate = os.path.join(directory, "pythonfilter.conf")
        if os.access(candidate, os.R_OK):
            return candidate
    return None


def runs_module(name: str) -> bool:
    """Whether pythonfilter.conf lists the module ``name``."""
    conf = filter_conf()
    if conf is None:
        return False
    try:
        with open(conf, encoding="utf-8", errors="replace") as handle:
            return any(line.split()[:1] == [name] for line in handle if not line.startswith("#"))
    except OSError:
        return False


@dataclass
class Process:
    pid: int
    ppid: int
    name: str
    args: List[str]


def processes() -> Dict[int, Process]:
    """The host's live processes (zombies left out), from /proc."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read().decode("utf-8", "replace")
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                args = handle.read().decode("utf-8", "replace").split("\0")
        except OSError:
            continue  # gone meanwhile
        name, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
        if rest[0] != "Z":
            found[int(entry)] = Process(int(entry), int(rest[1]), name, [a for a in args if a])
    return found


@dataclass
class Host:
    """What runs: courierfilter, its dispatchers, and whether the filter is active and its socket there."""

    courierfilter: Optional[int]
    dispatchers: List[int] = field(default_factory=list)
    active: bool = False
    socket: bool = False


def look() -> Host:
    table = processes()
    courierfilter = next((p.pid for p in table.values() if p.name == "courierfilter"), None)
    dispatchers = sorted(p.pid for p in table.values()
                         if p.ppid == courierfilter and any(arg.endswith("/" + FILTER) or arg == FILTER
                                                            for arg in p.args))
    return Host(courierfilter, dispatchers, os.path.lexists(active_link()), os.path.exists(socket_path()))


def filterctl(command: str) -> None:
    where = os.pathsep.join([_courier("sbindir", "/usr/sbin"), "/usr/sbin"])
    program = shutil.which("filterctl") or shutil.which("filterctl", path=where)
    if program is None:
        raise ControlError("filterctl is not installed (Courier's courier-base package)")
    result = subprocess.run([program, command, FILTER], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise ControlError(f"filterctl {command} {FILTER}: {(result.stderr or result.stdout).strip()}")


@dataclass
class Started:
    """The outcome of a restart."""

    pid: int
    status: Optional[dict]  # this filter's status file, when the dispatcher runs it


def restart(ours: bool, say: Callable[[str], None], clock: Callable[[], float] = time.monotonic,
            sleep: Callable[[float], None] = time.sleep) -> Started:
    """Stop the dispatcher, wait until it has exited, start it, and wait until it runs.

    ``ours``: the dispatcher runs this filter, whose status file must then say
    that the new dispatcher started.  Raises ControlError when a step fails.
    """
    host = look()
    if host.courierfilter is None:
        raise ControlError("courierfilter is not running, so no filter is (mail passes unfiltered): "
                           "start it with `systemctl start courierfilter` (or `courierfilter start`)")
    old = host.dispatchers
    if host.active:
        filterctl("stop")
        say(f"stopping the dispatcher{'' if len(old) == 1 else 's'} ({', '.join(map(str, old)) or 'none'})")
        _wait_for_exit(old, say, clock, sleep)
    filterctl("start")
    return _wait_for_start(host.courierfilter, old, ours, clock, sleep)


def _wait_for_exit(pids: List[int], say: Callable[[str], None], clock, sleep) -> None:
    deadline = clock() + EXIT_WAIT
    while clock() < deadline:
        if not set(pids) & set(processes()):
            return
        sleep(_POLL)
    left = sorted(set(pids) & set(processes()))
    say(f"the dispatcher ({', '.join(map(str, left))}) has not exited after {EXIT_WAIT:g} s: killed "
        f"(the store keeps everything it acknowledged)")
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = clock() + 5
    while set(pids) & set(processes()):
        if clock() >= deadline:
            raise ControlError(f"the dispatcher ({', '.join(map(str, left))}) does not exit; "
                               f"nothing started")
        sleep(_POLL)


def _wait_for_start(courierfilter: int, old: List[int], ours: bool, clock, sleep) -> Started:
    deadline = clock() + START_WAIT
    signalled = clock()
    seen: List[int] = []
    while clock() < deadline:
        host = look()
        new = [pid for pid in host.dispatchers if pid not in old]
        if new and host.socket:
            status = status_file.read() if ours else None
            if not ours or (status is not None and status["pid"] == new[0]):
                return Started(new[0], status)
        if seen and not new:
            raise ControlError(f"the new dispatcher (pid {seen[0]}) exited while it started, so mail passes "
                               f"unfiltered: the mail log says why (courierfilter's lines)")
        seen = seen or new
        if clock() >= signalled + _SIGNAL_AGAIN:
            # courierfilter may have lost the signal of filterctl start (see above).
            try:
                os.kill(courierfilter, signal.SIGHUP)
            except ProcessLookupError:
                raise ControlError("courierfilter exited while the dispatcher was starting") from None
            signalled = clock()
        sleep(_POLL)
    if seen and ours:
        raise ControlError(f"the new dispatcher runs (pid {seen[0]}), but this filter wrote no status in "
                           f"{START_WAIT:g} s to {status_file.path()}: the mail log says why")
    raise ControlError(f"no dispatcher started within {START_WAIT:g} s (courierfilter's lines in the mail "
                       f"log say why)")
