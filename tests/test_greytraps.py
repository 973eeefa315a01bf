"""Greytraps: a client that writes to an address nobody uses before it passed is kept out, silently.

Through do_filter on real control files and dbm files (every flavour), an injected clock.
"""

from __future__ import annotations

import pytest
from helpers import DBM_FLAVOURS, Clock, write_control

from greylist import admin
from greylist.filter import GreylistFilter
from greylist.settings import Settings
from greylist.stores.dbm import DbmStore
from greylist.tables import GREYTRAPS_TABLE, NOT_PASSED_TABLE, PASSED_TABLE, wanted_tables
from greylist.triplet import parse_client_ip

GREYLIST = "451 4.7.1 Greylisting in action, please come back in 00:05:00"
TRAPS = ("trap@example.org", "@unused.example.org")


@pytest.fixture(params=DBM_FLAVOURS)
def env(tmp_path, request):
    class Env:
        clock = Clock()
        lines: list = []
        count = 0
        store = None

        def filter(self, **overrides) -> GreylistFilter:
            (tmp_path / "store").mkdir(exist_ok=True)
            settings = Settings(db_dir=str(tmp_path / "store"), greylist_time=300, greytrap_recipients=TRAPS,
                                **overrides)
            self.store = DbmStore(settings.db_dir, flavour=request.param, tables=wanted_tables(settings))
            return GreylistFilter(settings, self.store, clock=self.clock, log=self.lines.append,
                                  purge="never")

        def send(self, f, **control) -> str:
            self.count += 1
            return f.do_filter("", [write_control(str(tmp_path / f"C{self.count}"), **control)])

    e = Env()
    yield e
    if e.store is not None:
        e.store.close()


def test_a_client_that_writes_to_a_trap_is_kept_out_without_being_told(env):
    f = env.filter()
    assert env.send(f, recipients=("bob@example.org", "x@unused.example.org")) == GREYLIST  # the same reply
    assert "action=greylist, reason=greytrap" in env.lines[-1]
    assert list(dict(env.store.items(GREYTRAPS_TABLE))) == ["192.0.2.0/24"]
    # Every message of its network, even one that would pass, gets the new triplet's reply: nothing recorded.
    for _ in range(3):
        env.clock.advance(400)
        assert env.send(f, ip="192.0.2.99", recipients=("bob@example.org",)) == GREYLIST
        assert "reason=greytrap" in env.lines[-1]
    assert not dict(env.store.items(PASSED_TABLE)) and not dict(env.store.items(NOT_PASSED_TABLE))
    # Another network is not affected; the trap ends with greytrap_time.
    assert env.send(f, ip="198.51.100.1", recipients=("bob@example.org",)) == GREYLIST
    assert "reason=new" in env.lines[-1]
    env.clock.advance(86400)
    assert env.send(f, recipients=("bob@example.org",)) == GREYLIST and "reason=new" in env.lines[-1]


def test_clients_that_passed_or_are_ours_are_never_trapped(env):
    f = env.filter(skip_authenticated=True, whitelist_clients=("203.0.113.0/24",))
    assert env.send(f, recipients=("bob@example.org",)).startswith("451")
    env.clock.advance(301)
    assert env.send(f, recipients=("bob@example.org",)) == ""  # 192.0.2.0/24 passed once
    assert env.send(f, ip="192.0.2.50", sender="new@example.com",
                    recipients=("trap@example.org",)) == GREYLIST
    assert "reason=new" in env.lines[-1]  # an ordinary new triplet, no trap
    assert env.send(f, ip="198.51.100.7", auth_user="alice", recipients=("trap@example.org",)) == ""
    assert env.send(f, ip="203.0.113.5", recipients=("trap@example.org",)) == ""
    assert not dict(env.store.items(GREYTRAPS_TABLE))


def test_allow_and_delete_let_a_trapped_network_out(env):
    f = env.filter()
    env.send(f, recipients=("trap@example.org",))
    address = parse_client_ip("192.0.2.10")
    shown = admin.show(f, "alice@example.com", ["bob@example.org"], address, env.clock())
    assert (shown.action, shown.reason) == ("greylist", "greytrap")
    assert shown.trapped_until == int(env.clock()) + 86400
    trapped = admin.stats(f, env.clock())["tables"][GREYTRAPS_TABLE]
    assert trapped["trapped_networks"] == 1 and trapped["trapped"][0]["network"] == "192.0.2.0/24"
    assert admin.delete(f, "alice@example.com", ["bob@example.org"], address) == 1
    assert env.send(f, recipients=("bob@example.org",)) == GREYLIST and "reason=new" in env.lines[-1]
    env.send(f, ip="192.0.2.20", sender="x@example.net", recipients=("trap@example.org",))
    admin.allow(f, "alice@example.com", ["bob@example.org"], address, env.clock())
    assert not dict(env.store.items(GREYTRAPS_TABLE))
    assert env.send(f, recipients=("bob@example.org",)) == ""


def test_learn_only_traps_and_accepts(env):
    f = env.filter(learn_only=True)
    assert env.send(f, recipients=("trap@example.org",)) == ""
    assert "action=learn, reason=greytrap" in env.lines[-1]
    assert list(dict(env.store.items(GREYTRAPS_TABLE))) == ["192.0.2.0/24"]


def test_the_purge_forgets_a_trap_after_greytrap_time(env):
    f = env.filter(greytrap_time=3600)
    env.send(f, recipients=("trap@example.org",))
    env.clock.advance(3601)
    f.purge(env.clock())
    assert not dict(env.store.items(GREYTRAPS_TABLE))
