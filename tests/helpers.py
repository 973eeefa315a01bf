"""Shared test helpers: Courier control files, a settable clock, the reference module."""

from __future__ import annotations

import importlib
import os
import sys
import threading
import time
from typing import Iterable, Optional, Sequence

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_control(
    path: str,
    sender: Optional[str] = "alice@example.com",
    recipients: Sequence[str] = ("bob@example.net",),
    ip: Optional[str] = "192.0.2.10",
    delivered: Iterable[int] = (),
    extra: bytes = b"",
    raw_sender: Optional[bytes] = None,
    client_name: Optional[str] = "mx.example.org",
    auth_user: Optional[str] = None,
    source: str = "esmtp",
) -> str:
    """Write a control file in Courier's format; returns its path.

    ``client_name`` None writes the ``f`` record of a client without reverse
    DNS, as Courier does: ``dns; HELO ([IP])``.
    """
    lines = [b"u" + source.encode()]
    if raw_sender is not None:
        lines.append(b"s" + raw_sender)
    elif sender is not None:
        lines.append(b"s" + sender.encode())
    if ip is not None:
        name = (client_name or "").encode()
        lines.append(b"fdns; helo.example.org (" + name + (b" " if name else b"") + b"[" + ip.encode()
                     + b"])")
        lines.append(b"OTCPREMOTEIP=" + ip.encode())
    if auth_user is not None:
        lines.append(b"i" + auth_user.encode())
    lines.append(b"M0000000A.00000001")
    for recipient in recipients:
        encoded = recipient.encode() if isinstance(recipient, str) else recipient
        lines += [b"r" + encoded, b"Rrfc822;" + encoded, b"N"]
    for number in delivered:
        lines.append(b"I%d R 250 Ok" % number)
        lines.append(b"S%d %d" % (number, int(time.time())))
    data = b"\n".join(lines) + b"\n" + extra
    with open(path, "wb") as handle:
        handle.write(data)
    return path


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_790_000_000.25) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class _ClockTime:
    """Stands in for the time module inside the reference module."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    def time(self) -> float:
        return self._clock()

    def __getattr__(self, name):
        return getattr(time, name)


def write_config(path: str, db_dir: str, **greylist_settings) -> str:
    lines = ["[greylist.py]"]
    lines += [f"{key} = {value!r}" for key, value in greylist_settings.items()]
    lines += ["", "[ttldb]", "type = 'dbm'", f"dir = {db_dir!r}", ""]
    with open(path, "w") as handle:
        handle.write("\n".join(lines))
    return path


def load_reference(config_path: str, clock: Clock):
    """courier-pythonfilter 3.0.6's greylist module, on our config and clock."""
    import courier.config

    standard, courier.config._standard_config_paths = courier.config._standard_config_paths, [config_path]
    ttldb = importlib.import_module("pythonfilter.ttldb")
    reference = importlib.import_module("pythonfilter.greylist")
    reference = importlib.reload(reference)
    reference.time = _ClockTime(clock)
    ttldb.time = _ClockTime(clock)
    stderr, sys.stderr = sys.stderr, open(os.devnull, "w")
    try:
        reference.init_filter()  # it reads its settings here, and only here
    finally:
        sys.stderr.close()
        sys.stderr = stderr
        courier.config._standard_config_paths = standard
    return reference


def close_reference(reference) -> None:
    for name in ("_senders_passed", "_senders_not_passed"):
        store = getattr(reference, name, None)
        if store is not None and hasattr(store, "db"):
            store.db.close()


def stdlib_contents(directory, table: str) -> dict:
    """A table as stdlib dbm (and so courier-pythonfilter) reads it: {key: value} as text."""
    import dbm

    with dbm.open(os.path.join(str(directory), table), "r") as db:
        return {key.decode(): db[key].decode() for key in db.keys()}


def have_gdbm() -> bool:
    try:
        import dbm.gnu  # noqa: F401
    except ImportError:
        return False
    return True


NO_GDBM = "this Python has no dbm.gnu (Debian: apt-get install python3-gdbm, then use /usr/bin/python3)"
needs_gdbm = pytest.mark.skipif(not have_gdbm(), reason=NO_GDBM)
# Both dbm flavours as test parameters: the one this Python lacks shows up as a skip, not as nothing.
DBM_FLAVOURS = ["dbm.dumb", pytest.param("dbm.gnu", marks=needs_gdbm)]


def replay_total(procs) -> int:
    """Start replay workers (tests/workers.py) together; the sum of their greylistings."""
    for proc in procs:
        assert proc.stdout.readline() == "ready\n", proc.communicate(timeout=60)[1]
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    total = 0
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        lines = out.split("\n")
        assert lines[1] == "0", f"errors: {lines[2:]}"
        total += int(lines[0])
    return total


KEY = "0123456789abcdef0123456789abcdef"


def second_waits_for_first(first, second, table: str = "greylist_NotPassed") -> None:
    """Two transactions on one key in two threads: the second gets in only after the first left.

    The first stays inside for a while (0.3 s) unless the second gets in
    meanwhile, which exclusion forbids; the second must then read what the
    first wrote.
    """
    events: list = []
    first_in, second_in = threading.Event(), threading.Event()
    written, seen = [], []

    def run_first():
        with first.transaction() as tx:
            tx.lock_and_load([KEY])
            before = tx.get(table, KEY)
            events.append("first in")
            first_in.set()
            second_in.wait(0.3)
            written.append(int(before or 0) + 1)
            tx.set(table, KEY, written[-1])
            events.append("first out")

    def run_second():
        assert first_in.wait(30)
        with second.transaction() as tx:
            tx.lock_and_load([KEY])
            events.append("second in")
            second_in.set()
            seen.append(tx.get(table, KEY))
            tx.set(table, KEY, int(seen[-1] or 0) + 1)

    threads = [threading.Thread(target=run_first), threading.Thread(target=run_second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert events == ["first in", "first out", "second in"]
    assert seen == written


def run_greylist(*args: str, env: Optional[dict] = None):
    """The greylist command as a postmaster runs it (this checkout's package), in a process of its own."""
    import subprocess

    from host import greylist_command

    return subprocess.run(greylist_command(*args), capture_output=True, text=True,
                          env=dict(os.environ, **(env or {})), cwd=REPO, timeout=60)
