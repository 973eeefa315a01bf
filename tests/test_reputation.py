"""Greylist less: DNS lists against a real rbldnsd, suspicious clients, retries by Message-ID,
opt-in recipients."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import threading
import time

import pytest
from dnslist_server import (
    BL,
    BL_V4,
    BL_V6,
    REFUSED_V4,
    UNLISTED_V4,
    WL,
    WL_V4,
    WL_V6,
    MisbehavingServer,
    Rbldnsd,
    wait_for,
)
from helpers import Clock, write_config, write_control
from host import greylist_command

from greylist.extras import install_hint
from greylist.filter import GreylistFilter
from greylist.metrics import Counts
from greylist.reputation.rdns import address_in_name, generic_reason, load_patterns
from greylist.settings import Settings, SettingsError, load_settings
from greylist.stores import MESSAGE_ID_TABLE, NOT_PASSED_TABLE, PASSED_TABLE
from greylist.stores.dbm import DbmStore
from greylist.tables import wanted_tables

pytest.importorskip("dns.message", reason="needs dnspython (pip install 'courier-greylist[dns]')")

WAIT_5 = "451 4.7.1 Greylisting in action, please come back in 00:05:00"
WAIT_30 = "451 4.7.1 Greylisting in action, please come back in 00:30:00"


@pytest.fixture(scope="module")
def rbldnsd(tmp_path_factory):
    server = Rbldnsd(str(tmp_path_factory.mktemp("zones")))
    yield server
    server.stop()


class Env:
    """A filter with the given settings on a fresh store, an injected clock, and its log."""

    def __init__(self, tmp_path, **settings) -> None:
        self.dir = tmp_path
        (tmp_path / "store").mkdir(exist_ok=True)
        self.clock = Clock()
        self.lines: list = []
        self.counts = Counts(clock=self.clock)
        self.settings = Settings(db_dir=str(tmp_path / "store"), **settings)
        self.store = DbmStore(self.settings.db_dir, tables=wanted_tables(self.settings))
        self.filter = GreylistFilter(self.settings, self.store, clock=self.clock, log=self.lines.append,
                                     purge="never", counts=self.counts)
        self.n = 0

    def send(self, ip: str, sender: str = "alice@example.com", recipients=("bob@example.net",),
             client_name="mx.example.org", message_id: str = None) -> str:
        self.n += 1
        control = write_control(str(self.dir / f"C{self.n}"), sender, list(recipients), ip,
                                client_name=client_name)
        body = ""
        if message_id is not None:
            body = str(self.dir / f"D{self.n}")
            with open(body, "w") as handle:
                handle.write(f"Message-ID: <{message_id}>\nSubject: hi\n\nhello\n")
        return self.filter.do_filter(body, [control])

    def entries(self, table: str) -> dict:
        return dict(self.store.items(table))

    def close(self) -> None:
        self.store.close()


@pytest.fixture
def env(tmp_path):
    made = []

    def make(**settings) -> Env:
        made.append(Env(tmp_path, **settings))
        return made[-1]

    yield make
    for each in made:
        each.close()


def lists(rbldnsd, **more) -> dict:
    return dict(dnswl_zones=(WL,), dnsbl_zones=(BL,), dns_servers=((("127.0.0.1", rbldnsd.port)),), **more)


# --- DNS lists ----------------------------------------------------------------------


@pytest.mark.parametrize("ip", [WL_V4, "::ffff:" + WL_V4, WL_V6])
def test_a_client_on_a_dnswl_passes_and_leaves_nothing_behind(env, rbldnsd, ip):
    e = env(**lists(rbldnsd))
    assert e.send(ip) == ""
    assert e.lines[-1].startswith(f"greylist: action=pass, reason=dnswl:{WL}, ")
    assert e.entries(NOT_PASSED_TABLE) == {} and e.entries(PASSED_TABLE) == {}


@pytest.mark.parametrize("ip", [BL_V4, BL_V6])
def test_a_client_on_a_dnsbl_waits_dnsbl_greylist_time(env, rbldnsd, ip):
    e = env(**lists(rbldnsd))
    assert e.send(ip) == WAIT_30
    assert f", dnsbl={BL}, " in e.lines[-1] and "reason=new" in e.lines[-1]
    e.clock.advance(301)
    assert e.send(ip) == "451 4.7.1 Greylisting in action, please come back in 00:24:59"
    e.clock.advance(1500)
    assert e.send(ip) == ""


def test_query_refused_codes_and_unlisted_clients_are_greylisted_as_usual(env, rbldnsd):
    e = env(**lists(rbldnsd))
    assert e.send(REFUSED_V4) == WAIT_5 and "dnsbl=" not in e.lines[-1]
    assert e.send(UNLISTED_V4, "carol@example.com") == WAIT_5 and "dnsbl=" not in e.lines[-1]
    assert e.counts.snapshot()["dns"] == {(WL, "unlisted"): 2, (BL, "refused"): 1, (BL, "unlisted"): 1}


def test_answers_are_cached_for_their_ttl(env, rbldnsd):
    e = env(**lists(rbldnsd))
    e.send(BL_V4)
    e.send(BL_V4, "carol@example.com")
    assert sum(e.counts.snapshot()["dns"].values()) == 2  # one query per zone, then the cache
    assert e.lines[-1].count("dnsbl=") == 1


def test_a_dns_server_that_never_answers_costs_dns_timeout_and_greylists_as_usual(env):
    silent = MisbehavingServer()
    try:
        e = env(dnsbl_zones=(BL,), dnswl_zones=(WL,), dns_servers=(("127.0.0.1", silent.port),),
                dns_timeout=0.3)
        started = time.monotonic()
        assert e.send(BL_V4) == WAIT_5
        took = time.monotonic() - started
        assert 0.3 <= took < 0.4, took
        assert e.lines[-1].endswith(", dns=timeout, wait=00:05:00")
        assert silent.queries == 2  # both zones, at once
        assert e.counts.snapshot()["dns"] == {(WL, "timeout"): 1, (BL, "timeout"): 1}
    finally:
        silent.close()


def test_other_messages_are_decided_while_one_waits_for_dns(env):
    silent = MisbehavingServer()
    try:
        e = env(dnsbl_zones=(BL,), dns_servers=(("127.0.0.1", silent.port),), dns_timeout=1.0,
                whitelist_clients=("198.51.100.0/24",))
        waiting = threading.Thread(target=e.send, args=(BL_V4,))
        waiting.start()
        assert wait_for(lambda: silent.queries == 1)  # the first message waits for the DNS list now
        started = time.monotonic()
        assert e.send("198.51.100.1", "carol@example.com") == ""
        assert time.monotonic() - started < 0.5  # it did not wait for the first one's turn
        waiting.join()
        assert "dns=timeout" in e.lines[-1]
    finally:
        silent.close()


@pytest.mark.parametrize("reply", [b"\x81\x80garbage", b"\x81\x80" + b"\xff" * 60000])
def test_a_reply_that_does_not_parse_counts_as_unlisted(env, reply):
    bad = MisbehavingServer(reply)
    try:
        e = env(dnsbl_zones=(BL,), dns_servers=(("127.0.0.1", bad.port),), dns_timeout=0.5)
        assert e.send(BL_V4) == WAIT_5
        assert "dns=timeout" in e.lines[-1] and "dnsbl=" not in e.lines[-1]
        assert e.counts.snapshot()["dns"] == {(BL, "error"): 1}
    finally:
        bad.close()


@pytest.mark.parametrize("zone", ["zen spamhaus.org", "x.example/evil", "-x.example.org", "localhost", "",
                                  ".".join(["a" * 60] * 4)])  # too long for an IPv6 client's query
def test_a_zone_name_with_odd_characters_is_refused_at_start(tmp_path, zone):
    (tmp_path / "m.conf").write_text(f"[greylist.py]\ndnsbl_zones = [{zone!r}]\n")
    with pytest.raises(SettingsError, match="is not a DNS zone name"):
        load_settings([str(tmp_path / "m.conf")])


def test_dns_servers_are_read_with_and_without_ports(tmp_path):
    (tmp_path / "m.conf").write_text("[greylist.py]\ndns_servers = ['127.0.0.1', '192.0.2.53:5353', "
                                     "'2001:db8::53', '[2001:db8::53]:5353']\n")
    assert load_settings([str(tmp_path / "m.conf")]).dns_servers == (
        ("127.0.0.1", 53), ("192.0.2.53", 5353), ("2001:db8::53", 53), ("2001:db8::53", 5353))
    (tmp_path / "m.conf").write_text("[greylist.py]\ndns_servers = ['dns.example.org']\n")
    with pytest.raises(SettingsError, match="is not a DNS server address"):
        load_settings([str(tmp_path / "m.conf")])


def test_zones_without_dnspython_are_one_line_and_mail_waits(tmp_path):
    config = write_config(str(tmp_path / "m.conf"), str(tmp_path), dnsbl_zones=[BL])
    program = ("import sys; sys.modules['dns'] = None\n"
               f"import greylist; greylist.initFilter([{config!r}])\n"
               "print(greylist.doFilter('', []))")
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert result.stdout == "451 4.3.0 Greylisting temporarily unavailable, please try again later\n"
    assert result.stderr.splitlines() == [
        f"greylist: cannot start: DNS list zones are set, but dnspython is not installed "
        f"({install_hint('dns')}); every message gets a 451 until the settings are fixed and the filter "
        f"restarted (greylist restart)", "greylist: action=error, reason=not-started"]


def test_check_explain_shows_the_dns_answers(tmp_path, rbldnsd):
    store = tmp_path / "store"
    store.mkdir()
    config = write_config(str(tmp_path / "m.conf"), str(store), dnsbl_zones=[BL], dnswl_zones=[WL],
                          dns_servers=[rbldnsd.server])
    control = write_control(str(tmp_path / "C1"), ip=BL_V4)
    result = subprocess.run(greylist_command("check", "--explain", "--config", config,
                             control), capture_output=True, text=True, timeout=60)
    assert result.returncode == 75 and result.stdout == WAIT_30 + "\n"
    assert f"  dns {WL}: unlisted (no address)\n" in result.stderr
    assert f"  dns {BL}: listed (127.0.0.4)\n" in result.stderr
    assert f"  rule: listed on the DNSBL {BL}: dnsbl_greylist_time applies\n" in result.stderr


def test_show_says_what_the_filter_does_with_a_client_on_the_lists(tmp_path, rbldnsd):
    """greylist show asks the DNS lists as the filter does: a DNSWL client passes, a DNSBL one waits
    dnsbl_greylist_time, and a suspicious-only filter lets a clean client through."""
    store = tmp_path / "store"
    store.mkdir()
    config = write_config(str(tmp_path / "m.conf"), str(store), dnsbl_zones=[BL], dnswl_zones=[WL],
                          dns_servers=[rbldnsd.server], greylist_clients="suspicious")
    assert subprocess.run(greylist_command("check", "--config", config, write_control(str(tmp_path / "C"))),
                          capture_output=True, timeout=60).returncode in (0, 75)  # a store to show

    def show(ip: str, name: str = "mx.example.org") -> str:
        result = subprocess.run(greylist_command("show", "--config", config, "--sender", "s@example.com",
                                                 "--recipient", "r@example.net", "--ip", ip,
                                                 "--client-name", name),
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert f"the next message: pass (dnswl:{WL}), accepted" in show(WL_V4)
    assert "the next message: greylist (new), reply: " + WAIT_30 in show(BL_V4)
    assert "the next message: pass (not-suspicious), accepted" in show(UNLISTED_V4)
    assert "the next message: greylist (new), reply: " + WAIT_5 in show(UNLISTED_V4, "softdnserr")


# --- greylist_clients = 'suspicious' --------------------------------------------------


def test_only_suspicious_clients_are_greylisted(env, rbldnsd):
    e = env(greylist_clients="suspicious", **lists(rbldnsd))
    assert e.send(UNLISTED_V4, client_name="mx1.example.org") == ""
    assert "reason=not-suspicious" in e.lines[-1] and e.entries(NOT_PASSED_TABLE) == {}
    assert e.send(UNLISTED_V4, "b@example.com", client_name=None) == WAIT_5
    assert e.lines[-1].endswith("suspicious=no-rdns, wait=00:05:00")
    assert e.send(UNLISTED_V4, "c@example.com", client_name="softdnserr") == WAIT_5  # name not confirmed
    assert e.send(UNLISTED_V4, "d@example.com", client_name="203-0-113-5.example.net") == WAIT_5
    assert "suspicious=generic-rdns" in e.lines[-1]
    assert e.send(UNLISTED_V4, "e@example.com", client_name="host.dyn.example.net") == WAIT_5
    assert e.send(BL_V4, client_name="mx1.example.org") == WAIT_30  # DNSBL-listed
    assert e.send(WL_V4, client_name=None) == ""  # the DNSWL wins


def test_generic_names():
    patterns = load_patterns(["builtin:generic-rdns"])
    address = ipaddress.ip_address("203.0.113.5")
    for name in ["203-0-113-5.example.net", "5.113.0.203.in-addr.example.net", "cb007105.example.net",
                 "dsl-pool-17.example.net", "customer-44.dynamic.example.com", "ppp-1-2-3-4.example.org",
                 "cpe-12-34.example.net", "ip12-34.example.net"]:
        assert generic_reason(name, address, patterns) is not None, name
    for name in ["mx1.example.org", "mail.poolparty.example", "smtp-out.example.com", "dslr.example.org",
                 "o1.ptr5566.mail.example.net"]:
        assert generic_reason(name, address, patterns) is None, name
    assert not address_in_name("mx203.example.net", address)


# --- a retry by Message-ID from another address of the pool ---------------------------


def test_a_retry_of_the_same_message_from_another_network_passes_once_the_wait_is_over(env):
    e = env(match_retry_by_message_id=True)
    assert e.send("192.0.2.10", message_id="m1@example.com") == WAIT_5
    e.clock.advance(120)
    early = e.send("198.51.100.20", message_id="m1@example.com")  # another network of the pool
    assert early == "451 4.7.1 Greylisting in action, please come back in 00:03:00"
    e.clock.advance(181)
    assert e.send("203.0.113.30", message_id="m1@example.com") == ""
    assert "reason=retry-by-message-id" in e.lines[-1]
    assert e.send("203.0.113.30", "alice@example.com", message_id="m2@example.com") == ""  # known now
    assert e.send("198.18.0.40", message_id="other@example.com") == WAIT_5  # another message waits
    assert e.send("198.19.0.50") == WAIT_5  # no Message-ID: the triplet alone decides
    remembered = set(e.entries(MESSAGE_ID_TABLE))
    assert len(remembered) == 2  # m1 and other: in a table of its own, not in the reference's
    assert not remembered & (set(e.entries(PASSED_TABLE)) | set(e.entries(NOT_PASSED_TABLE)))


def test_without_the_setting_no_message_id_table_is_made(env):
    e = env()
    e.send("192.0.2.10", message_id="m1@example.com")
    assert not any(name.startswith(MESSAGE_ID_TABLE) for name in os.listdir(e.dir / "store"))


# --- greylist_recipients ---------------------------------------------------------------


def test_only_messages_all_of_whose_recipients_opted_in_are_greylisted(env):
    e = env(greylist_recipients=("@example.net", "@.example.org", "boss@example.com"))
    assert e.send(UNLISTED_V4, recipients=["bob@example.net"]) == WAIT_5
    assert e.send(UNLISTED_V4, recipients=["x@sub.example.org", "boss@example.com"]) == WAIT_5
    assert e.send(UNLISTED_V4, recipients=["other@example.com"]) == ""
    assert "action=pass, reason=recipient-not-greylisted" in e.lines[-1]
    assert e.send(UNLISTED_V4, "c@example.com", recipients=["bob@example.net", "other@example.com"]) == ""
    assert len(e.entries(NOT_PASSED_TABLE)) == 3


def test_greylist_recipients_takes_dot_domains(tmp_path):
    (tmp_path / "m.conf").write_text("[greylist.py]\n"
                                     "greylist_recipients = ['.example.org', '@example.net']\n")
    assert load_settings([str(tmp_path / "m.conf")]).greylist_recipients == ("@.example.org", "@example.net")


def test_check_config_asks_each_dns_list_for_its_test_entry(tmp_path, rbldnsd):
    silent = MisbehavingServer()
    try:
        config = write_config(str(tmp_path / "m.conf"), str(tmp_path), dnswl_zones=[WL], dnsbl_zones=[BL],
                              dns_servers=[rbldnsd.server])
        result = subprocess.run(greylist_command("check-config", "--config", config),
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert f"note: DNS list {BL} answers (its test entry 127.0.0.2 is listed)" in result.stdout
        assert f"note: DNS list {WL}: its test entry 127.0.0.2 is unlisted (asked {rbldnsd.server}); " \
               f"until it answers, it lists nobody" in result.stdout
        config = write_config(str(tmp_path / "m.conf"), str(tmp_path), dnsbl_zones=[BL],
                              dns_servers=[silent.server], dns_timeout=0.2)
        result = subprocess.run(greylist_command("check-config", "--config", config),
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and f"note: DNS list {BL}: its test entry 127.0.0.2 is timeout" \
            in result.stdout
    finally:
        silent.close()


def test_a_query_name_dns_cannot_carry_counts_as_no_answer(env, rbldnsd):
    """A zone at the settings' length limit still fits an IPv6 client's name; a longer one would not."""
    zone = ".".join(["a" * 59, "b" * 59, "c" * 59])  # 179 characters: accepted
    e = env(dnsbl_zones=(zone,), dns_servers=(("127.0.0.1", rbldnsd.port),))
    assert e.send(BL_V6) == WAIT_5
    lists = e.filter.exemptions.reputation.lists
    too_long = lists.lookup(ipaddress.ip_address(BL_V6), ["d" * 63 + "." + zone])
    assert [answer.result for answer in too_long] == ["error"]
