"""Side by side with courier-pythonfilter 3.0.6: same mail, same clock, same answers, same stores."""

from __future__ import annotations

import dbm
import os
import random
import re

import pytest
from helpers import DBM_FLAVOURS, Clock, close_reference, load_reference, write_config, write_control

from greylist.filter import GreylistFilter
from greylist.settings import load_settings
from greylist.stores import NOT_PASSED_TABLE, PASSED_TABLE
from greylist.stores.dbm import DbmStore

WAIT = re.compile(r"^451 4\.7\.1 Greylisting in action, please come back in (\d+):(\d\d):(\d\d)$")


def seconds(reply: str) -> int:
    match = WAIT.match(reply)
    assert match, reply
    hours, minutes, secs = map(int, match.groups())
    return hours * 3600 + minutes * 60 + secs


def assert_same_reply(ours: str, theirs: str, context: str) -> None:
    if theirs == "" or ours == "":
        assert ours == theirs, context
        return
    assert abs(seconds(ours) - seconds(theirs)) <= 1, context


def stdlib_table(directory: str, table: str) -> dict:
    with dbm.open(os.path.join(directory, table), "r") as db:
        return {key: db[key] for key in db.keys()}


def make_dir(tmp_path, name: str, flavour: str) -> str:
    path = tmp_path / name
    path.mkdir()
    DbmStore(str(path), flavour=flavour).close()  # fix the flavour for both modules
    return str(path)


class Pair:
    """The reference and our filter, each on its own store, one clock."""

    def __init__(self, tmp_path, flavour, greylist_time, shared_dir=False):
        self.clock = Clock()
        settings = dict(greylist_time=greylist_time, senders_not_passed_ttl=30 * 86400)
        self.ref_dir = make_dir(tmp_path, "ref", flavour)
        self.our_dir = self.ref_dir if shared_dir else make_dir(tmp_path, "ours", flavour)
        self.ref_conf = write_config(str(tmp_path / "ref.conf"), self.ref_dir, **settings)
        self.our_conf = write_config(str(tmp_path / "ours.conf"), self.our_dir, **settings)

    def open_reference(self):
        self.reference = load_reference(self.ref_conf, self.clock)
        return self.reference

    def open_ours(self):
        settings = load_settings([self.our_conf])
        self.store = DbmStore(settings.db_dir)
        self.ours = GreylistFilter(settings, self.store, clock=self.clock, log=lambda line: None,
                                   purge="inline")
        return self.ours

    def close(self):
        close_reference(self.reference)
        self.store.close()


def random_message(rng: random.Random, path: str) -> None:
    senders = ["Alice@Example.COM", "alice@example.com", "bob@example.org", "", "BOUNCE+x=y@list.example"]
    recipients = ["carol@example.net", "Carol@Example.NET", "dave@example.net", "erin@example.net"]
    ips = ["198.51.100.7", "198.51.100.200", "::ffff:198.51.100.9", "203.0.113.5",
           "2001:db8:1:2::5", "2001:DB8:1:ffff::1", "2001:db8:2::1", "::ffff:203.0.113.77"]
    chosen = rng.sample(recipients, rng.randint(1, 3))
    if rng.random() < 0.1:
        chosen.append(chosen[0])  # the same recipient twice
    delivered = [n for n in range(len(chosen)) if rng.random() < 0.15]
    sender = rng.choice(senders) if rng.random() < 0.7 else f"User{rng.randrange(60)}@Example.ORG"
    write_control(path, sender, chosen, rng.choice(ips), delivered=delivered)


@pytest.mark.parametrize("flavour", DBM_FLAVOURS)
@pytest.mark.parametrize("greylist_time", [0, 3600])
def test_same_decisions_and_same_stores(tmp_path, flavour, greylist_time):
    pair = Pair(tmp_path, flavour, greylist_time)
    reference, ours = pair.open_reference(), pair.open_ours()
    rng = random.Random(greylist_time + len(flavour))
    steps = [0, 0, 1, 30, 600, 1800, 3599, 3601, 7200]
    path = str(tmp_path / "C")
    greylisted = passed = 0
    for n in range(400):
        random_message(rng, path)
        theirs = reference.do_filter("", [path])
        mine = ours.do_filter("", [path])
        assert_same_reply(mine, theirs, f"message {n}: {open(path, 'rb').read()!r}")
        greylisted += mine != ""
        passed += mine == ""
        pair.clock.advance(rng.choice(steps))
    assert greylisted > 30 and passed > 30
    pair.close()
    for table in (PASSED_TABLE, NOT_PASSED_TABLE):
        assert stdlib_table(pair.our_dir, table) == stdlib_table(pair.ref_dir, table), table


@pytest.mark.parametrize("flavour", DBM_FLAVOURS)
def test_upgrade_from_reference_regreylists_nobody(tmp_path, flavour):
    pair = Pair(tmp_path, flavour, 300, shared_dir=True)
    reference = pair.open_reference()
    pending, known = str(tmp_path / "pending"), str(tmp_path / "known")
    write_control(pending, "new@example.com", ["a@example.net"], "192.0.2.1")
    write_control(known, "old@example.com", ["b@example.net"], "2001:db8::1")
    assert reference.do_filter("", [known]) != ""
    pair.clock.advance(300)
    assert reference.do_filter("", [known]) == ""
    assert reference.do_filter("", [pending]) != ""
    close_reference(reference)

    ours = pair.open_ours()
    assert ours.do_filter("", [known]) == ""
    assert ours.do_filter("", [pending]).endswith("00:05:00")
    pair.clock.advance(300)
    assert ours.do_filter("", [pending]) == ""
    pair.store.close()


@pytest.mark.parametrize("flavour", DBM_FLAVOURS)
def test_rollback_to_reference_regreylists_nobody(tmp_path, flavour):
    pair = Pair(tmp_path, flavour, 300, shared_dir=True)
    ours = pair.open_ours()
    pending, known = str(tmp_path / "pending"), str(tmp_path / "known")
    write_control(pending, "new@example.com", ["a@example.net"], "::ffff:192.0.2.1")
    write_control(known, "old@example.com", ["b@example.net", "c@example.net"], "2001:db8::1")
    assert ours.do_filter("", [known]) != ""
    pair.clock.advance(300)
    assert ours.do_filter("", [known]) == ""  # moved: a deleted not-passed entry each
    assert ours.do_filter("", [pending]) != ""
    pair.store.close()

    reference = pair.open_reference()
    assert reference.do_filter("", [known]) == ""
    assert reference.do_filter("", [pending]) != ""
    pair.clock.advance(300)
    assert reference.do_filter("", [pending]) == ""
    close_reference(reference)
