"""The host the tests run on, made the tests' own: they never read its /etc.

A Courier host that runs courier-pythonfilter has /etc/pythonfilter.conf and
/etc/pythonfilter-modules.conf (and /usr/local/etc/ ones after a pip
install as root); so does a test machine after tests/e2e ran.  The filter
reads the second by default, and the dispatcher takes the first
pythonfilter.conf it finds, in /etc before anywhere else.  So:

* ``ETC`` stands for /etc: courier.config's standard paths and Courier's
  sysconfdir point into it, in the test process (conftest.py) and in every
  ``greylist`` command a test runs (``greylist_command``);
* the dispatcher runs, where the host has a pythonfilter.conf of its own, in
  a mount namespace of its own in which the test's file is mounted over the
  host's (``dispatcher_command``): the unmodified dispatcher reads the test's.

Courier's layout too: courier.config asks the ``courier-config`` program for
sysconfdir and localstatedir, and the filter writes its status file in
``<localstatedir>/allfilters``.  On a Courier host a test that starts the
filter would overwrite the running dispatcher's status (as root: for good).
So every test but tests/e2e runs with ``COURIER_BIN`` first on PATH, whose
``courier-config`` names ``ETC/courier`` and ``SPOOL`` (conftest.py).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
from typing import List, Optional

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SYSTEM_FILTER_CONFS = ["/etc/pythonfilter.conf", "/usr/local/etc/pythonfilter.conf"]
if "GREYLIST_TEST_ETC" not in os.environ:  # (a child of the tests' inherits it: no directory of its own)
    os.environ["GREYLIST_TEST_ETC"] = tempfile.mkdtemp(prefix="greylist-test-etc-")
ETC = os.environ["GREYLIST_TEST_ETC"]
SPOOL = os.path.join(ETC, "spool")  # the tests' localstatedir
COURIER_BIN = os.path.join(ETC, "bin")  # its courier-config


def make_courier_layout() -> None:
    """``COURIER_BIN/courier-config``, naming the tests' sysconfdir and localstatedir."""
    os.makedirs(os.path.join(SPOOL, "allfilters"), exist_ok=True)
    os.makedirs(os.path.join(ETC, "courier"), exist_ok=True)
    os.makedirs(COURIER_BIN, exist_ok=True)
    program = os.path.join(COURIER_BIN, "courier-config")
    with open(program, "w") as handle:
        handle.write(f"#!/bin/sh\necho sysconfdir={ETC}/courier\necho localstatedir={SPOOL}\n")
    os.chmod(program, 0o755)


def standard_config() -> str:
    """The tests' pythonfilter-modules.conf in the standard place (absent unless a test writes it)."""
    return os.path.join(ETC, "pythonfilter-modules.conf")


def greylist_command(*args: str) -> List[str]:
    """The argv of ``greylist ARGS...`` as on a host whose /etc is ``ETC``."""
    return [sys.executable, os.path.join(HERE, "greylist_here.py"), *args]


def hidden_system_confs() -> List[str]:
    """The host's pythonfilter.conf files, which the dispatcher would read before the test's."""
    return [path for path in SYSTEM_FILTER_CONFS if os.path.exists(path)]


def namespace_prefix() -> Optional[List[str]]:
    """How to run a command in a mount namespace of its own: as root, or as a user mapped to root."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    for prefix in ([unshare, "--mount", "--propagation", "private"],
                   [unshare, "--user", "--map-root-user", "--mount", "--propagation", "private"]):
        if subprocess.run([*prefix, "true"], capture_output=True, timeout=30).returncode == 0:
            return prefix
    return None


def dispatcher_command(command: List[str], filter_conf: str) -> List[str]:
    """``command`` (the dispatcher), seeing ``filter_conf`` wherever the host has a pythonfilter.conf.

    Raises RuntimeError when the host has one and no namespace can hide it.
    """
    hidden = hidden_system_confs()
    if not hidden:
        return command
    prefix = namespace_prefix()
    if prefix is None:
        raise RuntimeError(f"the host's {', '.join(hidden)} would take precedence over the test's, "
                           f"and unshare cannot make a mount namespace here to cover it")
    mounts = " && ".join(f"mount --bind \"$1\" {path}" for path in hidden)
    return [*prefix, "sh", "-c", f"{mounts} && shift && exec \"$@\"", "sh", filter_conf, *command]


def missing_tool(what: str, install: str) -> None:
    """A Debian tool a test needs is not here: a skip, or a failure where CI requires them all
    (``GREYLIST_TEST_TOOLS=required``, which .ci/run sets)."""
    if os.environ.get("GREYLIST_TEST_TOOLS") == "required":
        pytest.fail(f"{what} is required here (GREYLIST_TEST_TOOLS=required) but not installed")
    pytest.skip(f"needs {what} ({install})")


def faketime_env(timestamp_file: str) -> dict:
    """The environment that runs a program on a clock the test steps by writing ``timestamp_file``
    (Debian's libfaketime: "+1d", "-3600", "+0"); the monotonic clock is left alone."""
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1"))
    if not found:
        missing_tool("Debian's libfaketime", "apt-get install faketime")
    return {"LD_PRELOAD": found[0], "FAKETIME_TIMESTAMP_FILE": timestamp_file, "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
