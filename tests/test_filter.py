"""The filter through do_filter on real control files and a real store: every bad input."""

from __future__ import annotations

import hashlib
import ipaddress
import time

import pytest
from helpers import Clock, write_control

from greylist.filter import INTERNAL_FAILURE_REPLY, STORE_FAILURE_REPLY, GreylistFilter
from greylist.settings import Settings
from greylist.stores import NOT_PASSED_TABLE, StoreError
from greylist.stores.dbm import DbmStore
from greylist.stores.dbm.dumb_table import DumbTable
from greylist.stores.dbm.gdbm_table import GdbmTable

GREYLIST = "451 4.7.1 Greylisting in action, please come back in "


@pytest.fixture
def env(tmp_path):
    class Env:
        clock = Clock()
        lines: list = []
        store_dir = tmp_path / "store"

        def filter(self, purge="inline", **overrides):
            self.store_dir.mkdir(exist_ok=True)
            settings = Settings(db_dir=str(self.store_dir), **overrides)
            self.store = DbmStore(str(self.store_dir))
            return GreylistFilter(settings, self.store, clock=self.clock, log=self.lines.append,
                                  purge=purge)

        def control(self, name="C1", **kwargs):
            return write_control(str(tmp_path / name), **kwargs)

    e = Env()
    yield e
    if hasattr(e, "store"):
        e.store.close()


def test_greylist_then_pass_after_delay(env):
    f = env.filter()
    path = env.control()
    assert f.do_filter("", [path]) == GREYLIST + "00:05:00"
    env.clock.advance(100)
    assert f.do_filter("", [path]) == GREYLIST + "00:03:20"
    env.clock.advance(200)
    assert f.do_filter("", [path]) == ""
    env.clock.advance(20 * 86400)
    assert f.do_filter("", [path]) == ""
    assert env.lines[0].startswith("greylist: action=greylist, reason=new, client_address=192.0.2.10, "
                                   "client_name=mx.example.org, sender=alice@example.com, "
                                   "recipients=bob@example.net, wait=00:05:00")
    assert "action=pass, reason=passed" in env.lines[2] and "delay=300" in env.lines[2]
    assert "action=pass, reason=known" in env.lines[3]


def test_case_is_folded(env):
    f = env.filter()
    f.do_filter("", [env.control(sender="Alice@Example.COM", recipients=["BOB@example.net"])])
    env.clock.advance(301)
    assert f.do_filter("", [env.control(sender="alice@example.com", recipients=["bob@EXAMPLE.net"])]) == ""


def test_no_client_ip_accepts(env):
    f = env.filter()
    assert f.do_filter("", [env.control(ip=None)]) == ""
    assert "reason=no-client-ip" in env.lines[-1]


@pytest.mark.parametrize("ip", ["not-an-ip", "300.1.2.3", ""])
def test_unparsable_ip_accepts(env, ip):
    f = env.filter()
    assert f.do_filter("", [env.control(ip=ip)]) == ""
    assert "reason=bad-client-ip" in env.lines[-1]


def test_scoped_ipv6_is_greylisted_normally(env):
    f = env.filter()
    assert f.do_filter("", [env.control(ip="fe80::1%eth0")]).startswith(GREYLIST)


def test_missing_control_file_tempfails(env, tmp_path):
    f = env.filter()
    assert f.do_filter("", [str(tmp_path / "gone")]) == INTERNAL_FAILURE_REPLY
    assert "action=error, reason=control-file" in env.lines[-1]


def test_unreadable_control_file_tempfails(env, tmp_path):
    f = env.filter()
    assert f.do_filter("", [str(tmp_path)]) == INTERNAL_FAILURE_REPLY  # a directory


def test_no_sender_record_tempfails(env):
    f = env.filter()
    assert f.do_filter("", [env.control(sender=None)]) == INTERNAL_FAILURE_REPLY
    assert "reason=no-sender-record" in env.lines[-1]


def test_null_sender_accepts(env):
    f = env.filter()
    assert f.do_filter("", [env.control(sender="")]) == ""
    assert "reason=null-sender" in env.lines[-1]


def test_zero_recipients_accepts(env):
    f = env.filter()
    assert f.do_filter("", [env.control(recipients=[])]) == ""
    assert f.do_filter("", [env.control(recipients=["a@x", "b@x"], delivered=[0, 1])]) == ""
    assert "reason=no-recipients" in env.lines[-1]


@pytest.mark.parametrize("raw", [b"\xff\xfeinvalid@example.com", b"nul\x00byte@example.com",
                                 b"carriage\rreturn@example.com"])
def test_odd_bytes_in_sender_are_greylisted_and_logged_safely(env, raw):
    f = env.filter()
    path = env.control(raw_sender=raw)
    assert f.do_filter("", [path]).startswith(GREYLIST)
    env.clock.advance(300)
    assert f.do_filter("", [path]) == ""
    assert all("\x00" not in line and "\r" not in line for line in env.lines)


def test_huge_address_and_many_recipients(env):
    f = env.filter()
    big = "x" * 65536 + "@example.com"
    assert f.do_filter("", [env.control(sender=big)]).startswith(GREYLIST)
    assert all(len(line) < 2000 for line in env.lines)
    recipients = [f"user{n}@example.net" for n in range(1000)]
    path = env.control("C2", recipients=recipients)
    started = time.perf_counter()
    assert f.do_filter("", [path]).startswith(GREYLIST)
    env.clock.advance(300)
    assert f.do_filter("", [path]) == ""
    assert time.perf_counter() - started < 1.0
    assert "+995" in env.lines[-1]


def test_delivered_and_bogus_status_records_are_ignored(env):
    f = env.filter()
    path = env.control(recipients=["a@x", "b@x"], delivered=[0, 9])
    f.do_filter("", [path])
    env.clock.advance(300)
    assert f.do_filter("", [env.control("C2", recipients=["b@x"])]) == ""
    assert f.do_filter("", [env.control("C3", recipients=["a@x"])]).startswith(GREYLIST)


def test_stored_garbage_does_not_switch_greylisting_off(env):
    import dbm

    f = env.filter()
    f.do_filter("", [env.control()])
    env.store.close()
    with dbm.open(str(env.store_dir / NOT_PASSED_TABLE), "w") as db:
        for key in list(db.keys()):
            db[key] = b"garbage"
        db[b"0" * 32] = b"\xff\xfe"
    f = env.filter()
    f.purge(env.clock())  # the purge runs and drops the garbage
    assert f.do_filter("", [env.control("C2", sender="new@example.org")]).startswith(GREYLIST)
    assert f.do_filter("", [env.control()]).startswith(GREYLIST)  # garbage counted as unknown
    with env.store.transaction() as tx:
        assert tx.get(NOT_PASSED_TABLE, "0" * 32) is None


def test_future_timestamp_after_clock_step(env):
    f = env.filter(greylist_time=300)
    path = env.control()
    f.do_filter("", [path])
    env.clock.advance(-86400)  # the clock is stepped back a day
    assert f.do_filter("", [path]) == GREYLIST + "00:05:00"


def test_wait_of_more_than_a_day_does_not_wrap(env):
    f = env.filter(greylist_time=25 * 3600)
    assert f.do_filter("", [env.control()]) == GREYLIST + "25:00:00"


def test_store_failure_accepts_or_tempfails(env, monkeypatch):
    f = env.filter()

    def broken(table, key, value):
        raise OSError(5, "Input/output error")

    for flavour in (DumbTable, GdbmTable):  # whichever this store's files are
        monkeypatch.setattr(flavour, "set", broken)
    assert f.do_filter("", [env.control()]) == ""
    assert "action=error, reason=store-failure" in env.lines[-1] and "Input/output" in env.lines[-1]
    f.settings = Settings(db_dir=str(env.store_dir), on_store_error="tempfail")
    assert f.do_filter("", [env.control()]) == STORE_FAILURE_REPLY
    monkeypatch.undo()
    assert f.do_filter("", [env.control()]).startswith(GREYLIST)


def test_unexpected_exception_never_escapes(env):
    f = env.filter()

    def explode(paths, body_path=None, in_turn=False):
        raise RuntimeError("boom")

    f.check = explode
    assert f.do_filter("", ["whatever"]) == ""
    assert "reason=internal" in env.lines[-1] and "boom" in env.lines[-1]


def test_purge_runs_once_per_interval_and_drops_expired(env):
    f = env.filter(senders_purge_interval=2.5 * 86400)
    f.do_filter("", [env.control()])  # the first call purges (an empty store)
    env.clock.advance(2 * 86400)
    f.do_filter("", [env.control("C2", sender="other@example.org")])
    assert len(list(env.store.items(NOT_PASSED_TABLE))) == 2  # not due: the expired entry stays
    env.clock.advance(86400 - 10)
    f.do_filter("", [env.control("C3", sender="third@example.org")])  # due again
    assert len(list(env.store.items(NOT_PASSED_TABLE))) == 2  # the 3-day-old entry went


def test_a_pending_entry_expires_after_its_own_ttl_purged_or_not(env):
    """senders_not_passed_ttl bounds a first attempt, whether or not a purge has run since."""
    f = env.filter(purge="never")
    path = env.control()
    assert f.do_filter("", [path]) == GREYLIST + "00:05:00"
    env.clock.advance(86400 + 1)  # a day and a second: far short of senders_passed_ttl
    assert f.do_filter("", [path]) == GREYLIST + "00:05:00"
    assert "action=greylist, reason=new" in env.lines[-1]


def test_ttl_boundaries_are_the_references(env):
    """An entry exactly as old as its TTL still counts (the reference purges only older ones)."""
    env.clock.now = 1_790_000_000.0
    f = env.filter(purge="never", senders_not_passed_ttl=1000, senders_passed_ttl=5000)
    pending = env.control("P", sender="pending@example.com")
    known = env.control("K", sender="known@example.com")
    assert f.do_filter("", [pending]).startswith(GREYLIST)
    assert f.do_filter("", [known]).startswith(GREYLIST)
    env.clock.advance(1000)  # exactly senders_not_passed_ttl
    assert f.do_filter("", [known]) == ""
    assert "action=pass, reason=passed" in env.lines[-1]
    env.clock.advance(1)
    assert f.do_filter("", [pending]) == GREYLIST + "00:05:00"
    assert "action=greylist, reason=new" in env.lines[-1]
    env.clock.advance(5000 - 1)  # exactly senders_passed_ttl since known passed
    assert f.do_filter("", [known]) == ""
    assert "action=pass, reason=known" in env.lines[-1]
    env.clock.advance(5001)
    assert f.do_filter("", [known]) == GREYLIST + "00:05:00"
    assert "action=greylist, reason=new" in env.lines[-1]


@pytest.mark.parametrize("ipv6_prefix, same, other", [
    (48, "2001:db8:1:ffff::9", "2001:db8:2::1"),  # the reference's three hextets
    (64, "2001:db8:1:0:ffff::9", "2001:db8:1:1::1"),
])
def test_ipv6_clients_share_a_triplet_within_ipv6_prefix_only(env, ipv6_prefix, same, other):
    f = env.filter(ipv6_prefix=ipv6_prefix)
    assert f.do_filter("", [env.control(ip="2001:db8:1::1")]).startswith(GREYLIST)
    env.clock.advance(301)
    assert f.do_filter("", [env.control(ip=other)]) == GREYLIST + "00:05:00"
    assert "action=greylist, reason=new" in env.lines[-1]
    assert f.do_filter("", [env.control(ip=same)]) == ""
    assert "action=pass, reason=passed" in env.lines[-1]


def test_ipv6_triplet_keys_are_the_references(env):
    f = env.filter()
    key = f.keys.triplets("alice@example.com", ["bob@example.net"], ipaddress.ip_address("2001:db8:1::1"))
    assert key == [hashlib.md5(b"alice@example.combob@example.net2001:0db8:0001").hexdigest()]


def test_a_failed_purge_is_logged_and_mail_still_decided(env):
    f = env.filter()

    def full_disk(table, older_than, progress=None):
        raise StoreError(f"purge of {table}: [Errno 28] No space left on device")

    env.store.purge = full_disk
    assert f.do_filter("", [env.control()]).startswith(GREYLIST)
    assert env.lines[0].startswith("greylist: purge failed: ")
    assert "No space left on device" in env.lines[0]
    assert "action=greylist, reason=new" in env.lines[1]


def test_log_values_with_spaces_are_quoted_and_read_back(env):
    """One key=value line a person can read, which `greylist report` splits back into its pairs."""
    from greylist.report import parse_line

    f = env.filter()
    f.do_filter("", [str(env.store_dir / "missing")])
    line = env.lines[-1]
    assert ', error="cannot read control file' in line and "\\x20" not in line
    assert parse_line(line)["error"].startswith("cannot read control file")
    f.do_filter("", [env.control(raw_sender=b'odd "quoted", sender@example.com\x01')])
    fields = parse_line(env.lines[-1])
    assert fields["sender"] == 'odd "quoted", sender@example.com\x01'
    assert fields["action"] == "greylist" and fields["recipients"] == "bob@example.net"


def test_an_unexpected_exception_gets_the_tempfail_reply_when_asked(env):
    """on_store_error = 'tempfail' covers what nobody foresaw, not only the store."""
    f = env.filter(on_store_error="tempfail")

    def explode(paths, body_path=None, in_turn=False):
        raise RuntimeError("boom")

    f.check = explode
    assert f.do_filter("", ["whatever"]) == STORE_FAILURE_REPLY
    assert "action=error, reason=internal" in env.lines[-1]
