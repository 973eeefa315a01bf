"""The PostgreSQL store under the real process model, and a server that goes silent or loses a table.

The dispatcher decides each message in a new thread; the server may refuse
one connection too many, stop answering after the login (a loopback proxy,
pg_proxy.py, holds the queries), or lose a table.  Every wait is bounded by
``[ttldb] timeout``; nothing is left hanging.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
from dispatcher import Dispatcher, greylist
from helpers import Clock, write_control
from pg_proxy import Proxy
from pgserver import write_pg_config

from greylist.filter import STORE_FAILURE_REPLY, GreylistFilter
from greylist.settings import load_settings
from greylist.stores import NOT_PASSED_TABLE, PASSED_TABLE, StoreError, open_store
from greylist.upkeep import Upkeep

psycopg = pytest.importorskip("psycopg")
GREYLIST = "451 4.7.1 Greylisting in action, please come back in "


@pytest.fixture
def own_server(server):
    if server is None:
        pytest.skip("needs the test's own server (GREYLIST_TEST_PG names another)")
    return server


@pytest.fixture
def proxy(own_server, conninfo):
    proxied = Proxy(conninfo["port"])
    yield proxied
    proxied.close()


def greylist_connections(server) -> int:
    return int(server.psql("SELECT count(*) FROM pg_stat_activity "
                           "WHERE application_name = 'courier-greylist'"))


def make_filter(config, lines, clock=None):
    settings = load_settings([config])
    store = open_store(settings)
    return GreylistFilter(settings, store, clock=clock or Clock(), log=lines.append, purge="never"), store


def test_the_real_dispatcher_stays_within_its_pool_for_500_messages(tmp_path, conninfo, own_server):
    """Thread per message, 4 at a time, against a server that refuses a fifth connection."""
    config = write_pg_config(tmp_path / "m.conf", dict(conninfo, pool_size=4), greylist_time=300)
    open_store(load_settings([config])).close()  # the tables, before the limit
    own_server.psql(f"ALTER ROLE {conninfo['user']} CONNECTION LIMIT 4")
    assert greylist("install", "--config", config).returncode == 0
    dispatcher = Dispatcher(tmp_path, config)
    replies: list = []
    most = [0]
    done = threading.Event()

    def watch() -> None:  # how many connections the dispatcher holds, while it works
        while not done.is_set():
            most[0] = max(most[0], greylist_connections(own_server))

    def client(numbers) -> None:
        for n in numbers:
            control = write_control(str(dispatcher.spool / f"C{n}"), f"s{n}@example.com",
                                    [f"r{n}@example.net"], f"198.51.100.{n % 250}")
            replies.append(dispatcher.send(str(dispatcher.spool / "D"), [control]))

    try:
        assert dispatcher.wait_ready(), dispatcher.output()
        (dispatcher.spool / "D").write_text("Subject: hi\n\nhi\n")
        watcher = threading.Thread(target=watch)
        watcher.start()
        clients = [threading.Thread(target=client, args=(range(k, 500, 4),)) for k in range(4)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join(300)
        done.set()
        watcher.join(30)
        after = greylist_connections(own_server)
    finally:
        done.set()
        log = dispatcher.stop()
        own_server.psql(f"ALTER ROLE {conninfo['user']} CONNECTION LIMIT -1")
        greylist("install", "--uninstall")
    assert "store-failure" not in log and "Traceback" not in log
    assert replies == [GREYLIST + "00:05:00"] * 500
    assert log.count("action=greylist, reason=new") == 500
    assert 1 <= most[0] <= 4 and after <= 4


def test_a_fifth_message_waits_for_a_connection_no_longer_than_the_timeout(tmp_path, conninfo):
    config = write_pg_config(tmp_path / "m.conf", dict(conninfo, pool_size=1, timeout=1),
                             on_store_error="tempfail")
    lines: list = []
    greylist_filter, store = make_filter(config, lines)
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with pytest.raises(StoreError, match="no time left"):  # it outlived its own timeout
            with store.transaction() as tx:
                tx.lock_and_load(["a" * 32])
                holding.set()
                release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(30)
        started = time.monotonic()
        assert greylist_filter.do_filter("", [write_control(str(tmp_path / "C"))]) == STORE_FAILURE_REPLY
        assert 0.9 < time.monotonic() - started < 3
        assert f"error=\"PostgreSQL database {conninfo['db']} on 127.0.0.1:{conninfo['port']}: all 1 " \
               f"connections stayed busy\"" in lines[-1]
    finally:
        release.set()
        holder.join(30)
    assert greylist_filter.do_filter("", [write_control(str(tmp_path / "C"))]).startswith(GREYLIST)
    store.close()


def test_a_server_silent_after_the_login_does_not_hold_up_the_start(tmp_path, conninfo, proxy):
    """initFilter returns within the timeout, and the filter catches up once the server answers."""
    config = write_pg_config(tmp_path / "m.conf", dict(conninfo, port=proxy.port, timeout=1),
                             on_store_error="tempfail")
    control = write_control(str(tmp_path / "C"))
    script = ("import sys, time, greylist\n"
              "started = time.monotonic()\n"
              f"greylist.initFilter([{config!r}])\n"
              "print(round(time.monotonic() - started, 1), flush=True)\n"
              "for line in sys.stdin:\n"
              f"    print(repr(greylist.doFilter('', [{control!r}])), flush=True)\n")
    proxy.silent.set()
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert float(proc.stdout.readline()) < 3  # started, after at most the timeout and a connect
        proc.stdin.write("message\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == repr(STORE_FAILURE_REPLY) + "\n"  # still silent
        proxy.silent.clear()
        proc.stdin.write("message\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == repr(GREYLIST + "00:05:00") + "\n"  # tables made, recorded
    finally:
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert proxy.held_queries >= 1
    first = err.splitlines()[0]
    assert first.startswith("greylist: cannot use PostgreSQL database") and "no answer within 1 s" in first
    assert first.endswith("until it answers, each message gets the on_store_error reply (tempfail)")


@pytest.mark.parametrize("silence", ["silent", "swallowing"])
def test_eight_messages_to_a_server_that_went_silent_are_all_answered_in_time(tmp_path, conninfo, proxy,
                                                                              silence):
    """Down at start, then queries that never return, or logins that never end: no message hangs.

    Each message has the timeout (1 s), and one connects for at most libpq's 2 s; none waits
    for another's attempt to look at the tables.
    """
    config = write_pg_config(tmp_path / "m.conf", dict(conninfo, port=proxy.port, timeout=1))
    proxy.refusing.set()
    settings = load_settings([config])
    store = open_store(settings, wait_for_server=True)
    assert store.unreachable_at_start
    lines: list = []
    greylist_filter = GreylistFilter(settings, store, log=lines.append, purge="never")
    proxy.refusing.clear()
    getattr(proxy, silence).set()
    took: list = []

    def message(n: int) -> None:
        started = time.monotonic()
        reply = greylist_filter.do_filter("", [write_control(str(tmp_path / f"C{n}"), f"s{n}@example.com")])
        took.append((reply, time.monotonic() - started))

    threads = [threading.Thread(target=message, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(took) == 8
    assert all(reply == "" and seconds < 3.5 for reply, seconds in took), took
    assert len([line for line in lines if "reason=store-failure" in line]) == 8
    getattr(proxy, silence).clear()
    assert greylist_filter.do_filter("", [write_control(str(tmp_path / "C"))]).startswith(GREYLIST)
    store.close()


def test_a_purge_caught_by_a_silent_server_ends_and_the_next_one_runs(tmp_path, conninfo, proxy):
    config = write_pg_config(tmp_path / "m.conf", dict(conninfo, port=proxy.port, timeout=1))
    settings = load_settings([config])
    store = open_store(settings)
    lines: list = []
    upkeep = Upkeep(settings, store, lines.append, mode="inline")
    with store.transaction() as tx:
        tx.set(NOT_PASSED_TABLE, "a" * 32, 1000)
    proxy.silent.set()
    started = time.monotonic()
    assert upkeep.purge(time.time()) == 0
    assert time.monotonic() - started < 4
    assert len(lines) == 1 and lines[0].startswith("greylist: purge failed: ")
    assert "no answer within 1 s" in lines[0]
    proxy.silent.clear()
    assert upkeep.purge(time.time()) == 1  # not locked out by the one that failed
    store.close()


def test_a_dropped_table_is_made_again_with_one_line(tmp_path, conninfo, own_server):
    config = write_pg_config(tmp_path / "m.conf", conninfo, greylist_time=300)
    lines: list = []
    greylist_filter, store = make_filter(config, lines)
    store.log = lines.append
    first = write_control(str(tmp_path / "C1"), "first@example.com")
    assert greylist_filter.do_filter("", [first]).startswith(GREYLIST)
    own_server.psql(f"DROP TABLE {PASSED_TABLE}, {NOT_PASSED_TABLE}", dbname=conninfo["db"])
    second = write_control(str(tmp_path / "C2"), "second@example.com")
    assert greylist_filter.do_filter("", [second]) == GREYLIST + "00:05:00"
    assert "action=greylist, reason=new" in lines[-1]
    made = [line for line in lines if "making the tables again" in line]
    assert made == [f"greylist: PostgreSQL database {conninfo['db']} on 127.0.0.1:{conninfo['port']}: "
                    f'relation "greylist_passed" does not exist; making the tables again']
    assert greylist_filter.do_filter("", [second]).startswith(GREYLIST)  # and now it is known
    assert len([line for line in lines if "making the tables again" in line]) == 1
    store.close()


def test_commands_read_whole_tables_in_bounded_pages(tmp_path, conninfo):
    config = write_pg_config(tmp_path / "m.conf", conninfo)
    store = open_store(load_settings([config]))
    with store.transaction() as tx:
        for n in range(2500):
            tx.set(PASSED_TABLE, f"{n:032x}", 1_790_000_000 + n)
    assert sorted(store.items(PASSED_TABLE)) == [(f"{n:032x}", 1_790_000_000.0 + n) for n in range(2500)]
    store.close()


def test_a_readonly_store_reports_a_missing_table_instead_of_making_it(tmp_path, conninfo):
    config = write_pg_config(tmp_path / "m.conf", conninfo)
    open_store(load_settings([config])).close()
    readonly = open_store(load_settings([config]), readonly=True)
    with pytest.raises(StoreError, match="read-only"):
        readonly.transaction()
    readonly.close()


def test_every_advisory_lock_of_a_large_message_is_taken(tmp_path, conninfo):
    """2,500 triplets, in statements of 1,000 locks: another session finds every one held."""
    config = write_pg_config(tmp_path / "m.conf", conninfo)
    store = open_store(load_settings([config]))
    keys = [f"{n:032x}" for n in range(2500)]
    other = psycopg.connect(host=conninfo["host"], port=conninfo["port"], dbname=conninfo["db"],
                            user=conninfo["user"], password=conninfo["password"], autocommit=True)
    try:
        def free() -> int:
            return other.execute("SELECT count(*) FROM unnest(%s::text[]) AS k "
                                 "WHERE pg_try_advisory_xact_lock(hashtextextended(k, 0))",
                                 (keys,)).fetchone()[0]

        with store.transaction() as tx:
            tx.lock_and_load(keys)
            assert free() == 0
        assert free() == 2500  # and let go at the end of the transaction
    finally:
        other.close()
        store.close()
