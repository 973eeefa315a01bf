"""Proven with the real Courier MTA: SMTP in, greylisting reply out.

Run as root; .ci/run runs it after the unit tests.
Run with: python -m pytest -m e2e tests/e2e
"""

from __future__ import annotations

import pytest
from courier_rig import CourierRig, unavailable

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(bool(unavailable()), reason=unavailable() or "-")]

GREYLIST = "4.7.1 Greylisting in action, please come back in 00:00:00"


@pytest.fixture(scope="module")
def rig():
    courier = CourierRig(greylist_time=0, whitelist_file=True)
    yield courier
    courier.close()


def test_new_triplet_gets_4xx_at_end_of_data_then_250(rig):
    assert rig.install_output.rstrip().endswith("the dispatcher would start and decide normally")
    mark = rig.log_mark()
    recipient = rig.address("bob")
    assert rig.send("alice@sender.example", recipient) == (451, GREYLIST)
    code, text = rig.send("alice@sender.example", recipient)
    assert code == 250, text
    log = rig.log_since(mark, "action=pass")
    assert "greylist: action=greylist, reason=new, client_address=::ffff:127.0.0.1, " \
           f"sender=alice@sender.example, recipients={recipient}, wait=00:00:00" in log
    assert f"greylist: action=pass, reason=passed, client_address=::ffff:127.0.0.1, " \
           f"sender=alice@sender.example, recipients={recipient}" in log


def test_filter_restart_loses_no_state(rig):
    recipient = rig.address("carol")
    assert rig.send("carol@sender.example", recipient)[0] == 451
    rig.restart_filter()
    assert rig.send("carol@sender.example", recipient)[0] == 250


def test_courier_restart_loses_no_state(rig):
    recipient = rig.address("dave")
    assert rig.send("dave@sender.example", recipient)[0] == 451
    rig.restart_courier()
    assert rig.send("dave@sender.example", recipient)[0] == 250


def test_whitelist_file_edited_while_courier_runs(rig):
    """A client whitelisted by a file edit goes straight through; IPv4-mapped as Courier writes it."""
    recipient = rig.address("erin")
    rig.set_whitelist("client: 127.0.0.0/8\n")
    try:
        mark = rig.log_mark()
        assert rig.send("erin@sender.example", recipient)[0] == 250
        log = rig.log_since(mark, "action=whitelist")
        assert "greylist: action=whitelist, reason=whitelisted:client:127.0.0.0/8, " \
               "client_address=::ffff:127.0.0.1" in log
        assert "whitelist file" in log and "read again" in log
    finally:
        rig.set_whitelist("# empty again\n")
    assert rig.send("frank@sender.example", rig.address("frank"))[0] == 451


def test_dns_lists_through_courier(rig, tmp_path_factory):
    """A client on the DNSWL gets 250 at its first attempt; on a DNSBL, the 451 carries the longer wait."""
    from dnslist_server import WL, Rbldnsd

    lists = Rbldnsd(str(tmp_path_factory.mktemp("zones")))  # its zone lists 127.0.0.1
    try:
        rig.set_settings(f"dnswl_zones = ['{WL}']\ndns_servers = ['{lists.server}']\n")
        mark = rig.log_mark()
        assert rig.send("grace@sender.example", rig.address("grace"))[0] == 250
        assert f"greylist: action=pass, reason=dnswl:{WL}, client_address=::ffff:127.0.0.1" in \
            rig.log_since(mark, "reason=dnswl")
        rig.set_settings(f"dnsbl_zones = ['{WL}']\ndnsbl_greylist_time = 600\n"
                         f"dns_servers = ['{lists.server}']\n")
        mark = rig.log_mark()
        assert rig.send("heidi@sender.example", rig.address("heidi")) == (
            451, "4.7.1 Greylisting in action, please come back in 00:10:00")
        assert f"dnsbl={WL}" in rig.log_since(mark, "action=greylist")
    finally:
        lists.stop()
        rig.set_settings("")
