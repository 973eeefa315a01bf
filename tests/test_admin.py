"""admin.py: show, allow, delete and stats say what the filter does, and change only what they say."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import tempfile
from pathlib import Path

from helpers import Clock, write_config, write_control
from helpers import run_greylist as run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from greylist import admin
from greylist.filter import GreylistFilter
from greylist.report import parse_line
from greylist.settings import Settings
from greylist.stores import AUTO_WHITELIST_TABLE, NOT_PASSED_TABLE, PASSED_TABLE
from greylist.stores.dbm import DbmStore
from greylist.tables import wanted_tables

GREYLIST = "451 4.7.1 Greylisting in action, please come back in "
TRIPLET = ["--sender", "alice@example.com", "--recipient", "bob@example.net", "--ip", "192.0.2.10"]

SENDERS = ["alice@example.com", "news@lists.example.org", "boss@example.com"]
RECIPIENTS = ["bob@example.net", "postmaster@example.net", "carol@vip.example.net"]
CLIENTS = [("192.0.2.10", "mx.example.org"), ("192.0.2.77", "dsl-192-0-2-77.pool.example.net"),
           ("198.51.100.5", None), ("2001:db8:1::25", "mail.example.com")]

SETTINGS = st.fixed_dictionaries({}, optional={
    "whitelist_clients": st.sampled_from([("192.0.2.77",), ("198.51.100.0/24",), (".example.com",)]),
    "whitelist_senders": st.sampled_from([("@lists.example.org",), ("boss@example.com",)]),
    "whitelist_recipients": st.sampled_from([("postmaster@",), ("@vip.example.net",)]),
    "greylist_recipients": st.sampled_from([("bob@example.net",), ("@example.net",)]),
    "greylist_clients": st.just("suspicious"),
    "auto_whitelist_clients": st.integers(1, 2),
    "auto_whitelist_senders": st.just(True),
    "auto_whitelist_domains": st.integers(1, 2),
    "whitelist_replies": st.just(True),
    "learn_only": st.just(True),
    "greylist_time": st.sampled_from([0, 60, 300]),
    "reply": st.just("450 4.2.0 Come back in {wait}"),
})
MESSAGE = st.tuples(st.sampled_from(SENDERS), st.lists(st.sampled_from(RECIPIENTS), min_size=1, max_size=3),
                    st.sampled_from(CLIENTS))
HISTORY = st.lists(st.tuples(MESSAGE, st.sampled_from([0, 30, 301, 4000, 90000])), max_size=6)


def _filter(directory: Path, clock: Clock, lines: list, **overrides) -> GreylistFilter:
    settings = Settings(db_dir=str(directory), **overrides)
    store = DbmStore(str(directory), tables=wanted_tables(settings))
    return GreylistFilter(settings, store, clock=clock, log=lines.append, purge="never")


def _send(greylist: GreylistFilter, directory: Path, message) -> str:
    sender, recipients, (ip, name) = message
    return greylist.do_filter("", [write_control(str(directory / "C"), sender, recipients, ip=ip,
                                                 client_name=name)])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(overrides=SETTINGS, history=HISTORY, message=MESSAGE)
def test_show_says_what_the_filter_then_does(overrides, history, message):
    """For any settings, any earlier mail and any next message: show's answer is the filter's."""
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        clock, lines = Clock(), []
        greylist = _filter(directory, clock, lines, **overrides)
        try:
            for earlier, later in history:
                _send(greylist, directory, earlier)
                clock.advance(later)
            sender, recipients, (ip, client_name) = message
            before = {table: dict(greylist.store.items(table)) for table in greylist.store.tables}
            shown = admin.show(greylist, sender, recipients, ipaddress.ip_address(ip), clock(),
                               client_name=client_name)
            assert {table: dict(greylist.store.items(table)) for table in greylist.store.tables} == before
            reply = _send(greylist, directory, message)
            done = parse_line(lines[-1])
            assert (shown.action, shown.reason, shown.reply) == (done["action"], done["reason"], reply)
        finally:
            greylist.store.close()


def test_show_reads_without_writing_and_allow_then_delete(tmp_path):
    clock, lines = Clock(), []
    greylist = _filter(tmp_path, clock, lines, auto_whitelist_clients=1)
    address = ipaddress.ip_address("192.0.2.10")
    recipients = ["bob@example.net", "carol@example.net"]
    message = ("alice@example.com", recipients, ("192.0.2.10", "mx.example.org"))
    assert _send(greylist, tmp_path, message).startswith(GREYLIST)
    clock.advance(100)
    shown = admin.show(greylist, "alice@example.com", message[1], address, clock())
    assert [t.state for t in shown.triplets] == ["pending", "pending"]
    assert shown.triplets[0].passes_at == int(clock() - 100) + 300 and shown.client.passes == 0
    keys = admin.allow(greylist, "alice@example.com", ["bob@example.net"], address, clock())
    assert dict(greylist.store.items(PASSED_TABLE)) == {keys[0]: int(clock())}
    assert keys[0] not in dict(greylist.store.items(NOT_PASSED_TABLE))
    shown = admin.show(greylist, "alice@example.com", message[1], address, clock())
    assert [t.state for t in shown.triplets] == ["passed", "pending"] and shown.action == "greylist"
    assert admin.delete(greylist, "alice@example.com", message[1], address) == 2
    assert admin.delete(greylist, "alice@example.com", message[1], address) == 0
    assert [t.state for t in admin.show(greylist, "alice@example.com", message[1], address,
                                        clock()).triplets] == ["unknown", "unknown"]
    greylist.store.close()


def test_stats_counts_ages_expired_and_the_whitelisted_networks(tmp_path):
    clock, lines = Clock(), []
    greylist = _filter(tmp_path, clock, lines, auto_whitelist_clients=2)
    for n in range(3):
        _send(greylist, tmp_path, (f"s{n}@example.com", ["bob@example.net"], ("192.0.2.10", None)))
    clock.advance(301)
    for n in range(2):
        _send(greylist, tmp_path, (f"s{n}@example.com", ["bob@example.net"], ("192.0.2.10", None)))
    clock.advance(2 * 86400)  # the one left pending is now expired
    result = admin.stats(greylist, clock())
    tables = result["tables"]
    assert tables[PASSED_TABLE]["entries"] == 2 and tables[PASSED_TABLE]["expired"] == 0
    assert tables[NOT_PASSED_TABLE] | {"ages": None} == {"entries": 1, "expired": 1, "unreadable": 0,
                                                         "ages": None}
    assert tables[AUTO_WHITELIST_TABLE]["whitelisted_networks"] == 1
    assert tables[AUTO_WHITELIST_TABLE]["networks"] == [
        {"network": "192.0.2.0/24", "passes": 2, "last_seen": int(clock() - 2 * 86400), "whitelisted": True}]
    assert sum(tables[PASSED_TABLE]["ages"].values()) == 2
    greylist.store.close()



def test_show_allow_delete_as_a_user_types_them(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    config = write_config(str(tmp_path / "m.conf"), str(store), whitelist_recipients=["postmaster@"])
    nothing = run("show", "--config", config, *TRIPLET)  # reads only: no store made up
    assert nothing.returncode == 1 and f"no store in {store} (nothing was greylisted" in nothing.stderr
    assert os.listdir(store) == []

    other = write_control(str(tmp_path / "C0"), "other@example.org")
    assert run("check", "--config", config, other).returncode == 75
    unknown = run("show", "--config", config, *TRIPLET)
    assert unknown.returncode == 0 and "bob@example.net: unknown" in unknown.stdout
    assert "client network 192.0.2.0/24" in unknown.stdout

    control = write_control(str(tmp_path / "C"))
    assert run("check", "--config", config, control).returncode == 75
    pending = run("show", "--config", config, *TRIPLET)
    assert "bob@example.net: pending since" in pending.stdout and "a retry passes from" in pending.stdout
    as_json = json.loads(run("show", "--config", config, "--json", *TRIPLET).stdout)
    assert as_json["triplets"][0]["state"] == "pending"

    allowed = run("allow", "--config", config, *TRIPLET)
    assert allowed.returncode == 0 and "allowed: alice@example.com -> bob@example.net" in allowed.stdout
    assert run("check", "--config", config, control).returncode == 0  # let through now
    assert "passed; last seen" in run("show", "--config", config, *TRIPLET).stdout

    deleted = run("delete", "--config", config, *TRIPLET)
    assert deleted.returncode == 0 and "deleted 1 entry" in deleted.stdout
    assert run("check", "--config", config, control).returncode == 75  # greylisted afresh
    pasted = ["--sender", " <Alice@Example.com>", "--recipient", "<bob@example.net>", "--ip", "192.0.2.10"]
    assert run("allow", "--config", config, *pasted).returncode == 0  # as pasted from a log or header
    assert run("check", "--config", config, control).returncode == 0

    covered = run("show", "--config", config, "--sender", "x@example.org", "--recipient",
                  "postmaster@example.net", "--ip", "203.0.113.1")
    assert "the next message: whitelist (whitelisted:recipient:postmaster@), accepted" in covered.stdout
    assert ("postmaster@example.net: whitelisted:recipient:postmaster@: its messages pass without "
            "greylisting") in covered.stdout
    mixed = run("show", "--config", config, "--sender", "x@example.org", "--recipient",
                "postmaster@example.net", "--recipient", "carol@example.net", "--ip", "203.0.113.1")
    assert ("the next message: greylist (new), reply: 451 4.7.1 Greylisting in action, please come "
            "back in 00:05:00") in mixed.stdout  # carol still waits
    assert "postmaster@example.net: whitelisted:recipient:postmaster@" in mixed.stdout
    assert "carol@example.net: unknown (never seen, or forgotten)" in mixed.stdout
    bad_ip = run("show", "--config", config, "--sender", "a@b", "--recipient", "c@d", "--ip", "nope")
    assert bad_ip.returncode == 1 and "not an IP address" in bad_ip.stderr
    assert run("allow", "--config", config, "--sender", "a@b").returncode == 2  # usage


def test_stats_and_purge(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    config = write_config(str(tmp_path / "m.conf"), str(store), greylist_time=0,
                          auto_whitelist_clients=1, senders_not_passed_ttl=3600)
    for n in range(4):
        control = write_control(str(tmp_path / f"C{n}"), f"s{n}@example.com")
        run("check", "--config", config, control)
    run("check", "--config", config, str(tmp_path / "C0"))  # one passes: the network counts 1
    stats = run("stats", "--config", config, "--json")
    assert stats.returncode == 0, stats.stderr
    tables = json.loads(stats.stdout)["tables"]
    assert tables["greylist_NotPassed"]["entries"] == 3
    assert tables["greylist_Passed"]["entries"] == 1
    assert tables["greylist_AutoWhitelist"]["networks"][0]["network"] == "192.0.2.0/24"
    assert tables["greylist_AutoWhitelist"]["whitelisted_networks"] == 1
    text = run("stats", "--config", config).stdout
    assert "greylist_NotPassed: 3 entries" in text and "< 1 hour" in text
    shown = run("show", "--config", config, "--sender", "s0@example.com", "--recipient", "bob@example.net",
                "--ip", "192.0.2.99").stdout
    assert "auto-whitelist: 192.0.2.0/24: 1 triplets passed" in shown and "auto-whitelisted" in shown

    # age the pending entries past their TTL: exported, aged, imported into an empty store
    # (into the same store the newer entries would win)
    exported = run("export", "--config", config).stdout
    old = "\n".join(json.dumps(dict(row, timestamp=row["timestamp"] - 7200))
                    if row["table"] == "greylist_NotPassed" else json.dumps(row)
                    for row in map(json.loads, exported.splitlines()))
    dump = tmp_path / "dump"
    dump.write_text(old + "\n")
    shutil.rmtree(store)
    store.mkdir()
    assert run("import", "--config", config, str(dump)).returncode == 0
    purged = run("purge", "--config", config)
    assert purged.returncode == 0 and "purged 3 expired entries" in purged.stdout
    tables = json.loads(run("stats", "--config", config, "--json").stdout)["tables"]
    assert tables["greylist_NotPassed"]["entries"] == 0 and tables["greylist_Passed"]["entries"] == 1
