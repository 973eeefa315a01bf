"""The Debian package on the real Courier: built and installed with the README's blocks, greylisting,
then removed (Courier goes on accepting mail) and purged (the settings go, the store stays).

Run as root; .ci/run runs it with the other end-to-end tests.
"""

from __future__ import annotations

import os
import subprocess

import pytest
from courier_rig import PACKAGE_CONFIG, STORE, CourierRig, apt, unavailable

# The mail tests of the wheel-installed filter, run again here against the package.
from test_courier import (  # noqa: F401
    test_dns_lists_through_courier,
    test_whitelist_file_edited_while_courier_runs,
)

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(bool(unavailable()), reason=unavailable() or "-")]

GREYLIST = "4.7.1 Greylisting in action, please come back in 00:00:00"


@pytest.fixture(scope="module")
def rig():
    courier = CourierRig(greylist_time=0, filter_name="deb", whitelist_file=True)
    yield courier
    courier.close()


def test_installed_as_the_readme_says(rig):
    assert "greylisting is not on yet" in rig.install_output  # installing alone does not start it
    assert "\ngreylist: deciding since " in rig.install_output
    info = os.stat(PACKAGE_CONFIG)
    assert oct(info.st_mode & 0o777) == "0o640"
    assert os.path.realpath("/usr/lib/courier/filters/pythonfilter") == \
        "/opt/venvs/courier-greylist/bin/pythonfilter"
    assert subprocess.run(["man", "-w", "greylist"], capture_output=True).returncode == 0


def test_the_package_greylists_then_accepts(rig):
    recipient = rig.address("deb-bob")
    assert rig.send("alice@sender.example", recipient) == (451, GREYLIST)
    code, text = rig.send("alice@sender.example", recipient)
    assert code == 250, text


def test_an_upgrade_restarts_the_running_filter(rig):
    """Installing the package again (as an upgrade does) runs the documented restart: new code runs."""
    before = subprocess.run(["greylist", "status"], capture_output=True, text=True, timeout=60).stdout
    again = apt("install", "--reinstall", "-y", rig.package)
    assert again.returncode == 0, again.stderr
    assert "restarted: the dispatcher runs (pid " in again.stdout + again.stderr
    after = subprocess.run(["greylist", "status"], capture_output=True, text=True, timeout=60).stdout
    assert "greylist: deciding since " in after and after != before
    recipient = rig.address("deb-dave")
    assert rig.send("dave@sender.example", recipient) == (451, GREYLIST)


def test_remove_keeps_courier_accepting_mail_and_purge_keeps_the_store(rig):
    removed = apt("remove", "-y", "courier-greylist")
    assert removed.returncode == 0, removed.stderr
    assert not os.path.lexists("/usr/lib/courier/filters/pythonfilter")
    code, text = rig.send("carol@sender.example", rig.address("deb-carol"))  # no filter: accepted at once
    assert code == 250, text
    assert os.path.exists(PACKAGE_CONFIG) and os.listdir(STORE)  # remove keeps settings and store
    purged = apt("purge", "-y", "courier-greylist")
    assert purged.returncode == 0, purged.stderr
    assert not os.path.exists(PACKAGE_CONFIG) and not os.path.exists("/opt/venvs/courier-greylist")
    assert os.listdir(STORE), "the purge must never delete the store's triplets"
    assert "the store in /var/lib/pythonfilter is kept" in purged.stderr + purged.stdout
