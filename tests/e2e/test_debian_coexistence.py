"""The Debian package on a host that runs courier-pythonfilter of its own, with another module:
installing and removing the package leaves that dispatcher and its module working.

Run as root; .ci/run runs it with the other end-to-end tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from courier_rig import STORE, CourierRig, apt, debian_package, unavailable

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(bool(unavailable()), reason=unavailable() or "-")]

FILTER = "/usr/lib/courier/filters/pythonfilter"


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> str:
    return debian_package(str(tmp_path_factory.mktemp("deb")))  # before the rig cuts DNS (pip needs it)


@pytest.fixture(scope="module")
def rig(package):
    # courier-pythonfilter in an environment of its own, its dispatcher running whitelist_auth.
    had_store = os.path.exists(STORE)
    courier = CourierRig(greylist_time=0, filter_name="whitelist_auth")
    yield courier
    apt("purge", "-y", "courier-greylist")
    courier.close()
    if not had_store:  # the package made it, and a purge keeps a store: this test's goes
        shutil.rmtree(STORE, ignore_errors=True)


def _dispatcher(rig) -> str:
    """The pids of the running dispatcher (the only one: ours is not started by installing)."""
    found = subprocess.run(["pgrep", "-f", "pythonfilter"], capture_output=True, text=True)
    return found.stdout.strip()


def test_install_and_remove_leave_the_hosts_dispatcher_and_its_module(rig, package):
    theirs, running = os.readlink(FILTER), _dispatcher(rig)
    with open("/var/log/mail.log", errors="replace") as log:
        assert running and 'Initialized the "whitelist_auth" python filter' in log.read()
    with open("/etc/pythonfilter.conf") as handle:
        modules = handle.read()
    assert rig.send("ivan@sender.example", rig.address("co-ivan"))[0] == 250  # no greylisting here
    installed = apt("install", "-y", package)
    assert installed.returncode == 0, installed.stderr
    assert "is another dispatcher" in installed.stdout + installed.stderr  # it says how to switch
    assert os.readlink(FILTER) == theirs and _dispatcher(rig) == running
    assert rig.send("judy@sender.example", rig.address("co-judy"))[0] == 250
    removed = apt("remove", "-y", "courier-greylist")
    assert removed.returncode == 0, removed.stderr
    assert os.readlink(FILTER) == theirs and _dispatcher(rig) == running
    with open("/etc/pythonfilter.conf") as handle:
        assert handle.read() == modules
    assert rig.send("kim@sender.example", rig.address("co-kim"))[0] == 250
