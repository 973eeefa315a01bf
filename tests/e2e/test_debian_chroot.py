"""The Debian package on a clean Debian 12 root (mmdebstrap), as piuparts checks a package:
install, remove, purge, and nothing left behind but what the package documents (the store).

Run as root; .ci/run runs it with the other end-to-end tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from courier_rig import debian_package, have_tool, unavailable

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(bool(unavailable()), reason=unavailable() or "-")]

# What a package's life may change beyond its own files: dpkg's and apt's records, logs, caches.
IGNORED = ("./proc", "./sys", "./dev", "./run", "./tmp", "./var/lib/dpkg", "./var/lib/apt", "./var/cache",
           "./var/log", "./etc/ld.so.cache", "./root", "./var/lib/systemd", "./usr/share/man/index.db")


def in_root(root: str, *command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["chroot", root, *command], capture_output=True, text=True, timeout=600,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive",
                               "LC_ALL": "C"})


def files(root: str) -> set:
    found = set()
    for directory, subdirectories, names in os.walk(root):
        relative = "." + directory[len(root):]
        if relative.startswith(IGNORED):
            subdirectories[:] = []
            continue
        found.update(os.path.join(relative, name) for name in names + subdirectories)
    return found


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    have_tool("mmdebstrap", "mmdebstrap")
    path = str(tmp_path_factory.mktemp("bookworm") / "root")
    made = subprocess.run(["mmdebstrap", "--variant=apt", "bookworm", path], capture_output=True, text=True,
                          timeout=900)
    assert made.returncode == 0, made.stderr[-2000:]
    shutil.copy2("/etc/resolv.conf", os.path.join(path, "etc", "resolv.conf"))
    with open(os.path.join(path, "usr", "sbin", "policy-rc.d"), "w") as handle:
        handle.write("#!/bin/sh\nexit 101\n")  # no service starts in the root
    os.chmod(os.path.join(path, "usr", "sbin", "policy-rc.d"), 0o755)
    updated = in_root(path, "apt-get", "update", "-qq")  # mmdebstrap leaves no package lists
    assert updated.returncode == 0, updated.stderr[-2000:]
    return path


def test_install_remove_purge_leave_nothing_but_the_store(root, tmp_path):
    courier = in_root(root, "apt-get", "install", "-y", "-qq", "courier-mta")
    assert courier.returncode == 0, courier.stderr[-2000:]
    before = files(root)
    shutil.copy2(debian_package(str(tmp_path)), os.path.join(root, "tmp", "courier-greylist.deb"))
    installed = in_root(root, "apt-get", "install", "-y", "/tmp/courier-greylist.deb")
    assert installed.returncode == 0, installed.stderr[-2000:]
    assert "greylisting is not on yet" in installed.stdout
    checked = in_root(root, "greylist", "check-config")
    assert "the dispatcher would start and decide normally" in checked.stdout, checked.stdout + checked.stderr
    removed = in_root(root, "apt-get", "remove", "-y", "courier-greylist")
    assert removed.returncode == 0, removed.stderr[-2000:]
    assert not os.path.lexists(os.path.join(root, "usr", "lib", "courier", "filters", "pythonfilter"))
    purged = in_root(root, "apt-get", "purge", "-y", "courier-greylist")
    assert purged.returncode == 0, purged.stderr[-2000:]
    assert "the store in /var/lib/pythonfilter is kept" in purged.stdout + purged.stderr
    # As piuparts does: the dependencies the package brought in go too.
    autoremoved = in_root(root, "apt-get", "autoremove", "--purge", "-y")
    assert autoremoved.returncode == 0, autoremoved.stderr[-2000:]
    left = files(root) - before
    assert left == {"./var/lib/pythonfilter"}, sorted(left)  # the store, as the package says
    assert not before - files(root), sorted(before - files(root))  # and nothing of others' gone


def test_lintian_finds_nothing_not_overridden(tmp_path):
    """Errors and warnings alike; debian/courier-greylist.lintian-overrides says why each override."""
    have_tool("lintian", "lintian")
    result = subprocess.run(["lintian", "--fail-on", "error,warning", debian_package(str(tmp_path))],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-1000:]
