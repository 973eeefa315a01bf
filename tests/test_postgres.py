"""The PostgreSQL store against a real server (started here, or GREYLIST_TEST_PG)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import Clock, close_reference, load_reference, replay_total, write_control
from host import greylist_command
from pgserver import write_pg_config

from greylist.filter import STORE_FAILURE_REPLY, GreylistFilter
from greylist.settings import load_settings
from greylist.stores import (
    AUTO_WHITELIST_TABLE,
    DOMAINS_TABLE,
    GREYTRAPS_TABLE,
    MESSAGE_ID_TABLE,
    NOT_PASSED_TABLE,
    PASSED_TABLE,
    REPLIES_TABLE,
    SENDERS_TABLE,
    StoreOpenError,
    open_store,
)

psycopg = pytest.importorskip("psycopg")
WORKERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "workers.py")
GREYLIST = "451 4.7.1 Greylisting in action, please come back in "


def sql(info, statement, *params):
    with psycopg.connect(host=info["host"], port=info["port"], dbname=info["db"], user=info["user"],
                         password=info["password"], autocommit=True) as conn:
        cursor = conn.execute(statement, params or None)
        return cursor.fetchall() if cursor.description else None


def make_filter(config, clock=None, lines=None):
    settings = load_settings([config])
    store = open_store(settings)
    log = lines.append if lines is not None else (lambda line: None)
    return GreylistFilter(settings, store, clock=clock or Clock(), log=log, purge="never"), store


def test_reference_schema_and_roundtrip(tmp_path, conninfo):
    config = write_pg_config(tmp_path / "m.conf", conninfo)
    store = open_store(load_settings([config]))
    with store.transaction() as tx:
        tx.lock_and_load(["a" * 32])
        assert tx.get(PASSED_TABLE, "a" * 32) is None
        tx.set(PASSED_TABLE, "a" * 32, 1_790_000_000)
        tx.set(NOT_PASSED_TABLE, "b" * 32, 1_790_000_001)
    with store.transaction() as tx:
        tx.lock_and_load(["a" * 32, "b" * 32])
        assert tx.get(PASSED_TABLE, "a" * 32) == 1_790_000_000
        tx.delete(NOT_PASSED_TABLE, "b" * 32)
    assert dict(store.items(PASSED_TABLE)) == {"a" * 32: 1_790_000_000}
    assert dict(store.items(NOT_PASSED_TABLE)) == {}
    store.close()
    columns = sql(conninfo, "SELECT table_name, column_name, data_type, character_maximum_length "
                            "FROM information_schema.columns WHERE table_name LIKE 'greylist%%' "
                            "ORDER BY 1, ordinal_position")
    assert columns == [("greylist_notpassed", "id", "character", 64),
                       ("greylist_notpassed", "value", "bigint", None),
                       ("greylist_passed", "id", "character", 64),
                       ("greylist_passed", "value", "bigint", None)]
    indexes = sql(conninfo, "SELECT indexname FROM pg_indexes WHERE indexname LIKE '%%value_idx'")
    assert sorted(indexes) == [("greylist_notpassed_value_idx",), ("greylist_passed_value_idx",)]


def test_upgrade_and_rollback_with_reference_tables(tmp_path, conninfo):
    config = write_pg_config(tmp_path / "m.conf", conninfo, greylist_time=300)
    clock = Clock()
    reference = load_reference(config, clock)  # creates its tables, writes its rows
    known, pending = str(tmp_path / "known"), str(tmp_path / "pending")
    write_control(known, "old@example.com", ["a@example.net"], "192.0.2.1")
    write_control(pending, "new@example.com", ["b@example.net"], "2001:db8::1")
    assert reference.do_filter("", [known]).startswith(GREYLIST)
    clock.advance(300)
    assert reference.do_filter("", [known]) == ""
    assert reference.do_filter("", [pending]).startswith(GREYLIST)
    close_reference(reference)

    ours, store = make_filter(config, clock)
    assert ours.do_filter("", [known]) == ""
    assert ours.do_filter("", [pending]) == GREYLIST + "00:05:00"
    rollback = str(tmp_path / "rollback")
    write_control(rollback, "third@example.com", ["c@example.net"], "198.51.100.7")
    assert ours.do_filter("", [rollback]).startswith(GREYLIST)
    clock.advance(300)
    store.close()

    reference = load_reference(config, clock)
    assert reference.do_filter("", [pending]) == ""
    assert reference.do_filter("", [rollback]) == ""
    assert reference.do_filter("", [known]) == ""
    close_reference(reference)


def test_hosts_racing_greylist_each_triplet_exactly_once(tmp_path, conninfo):
    """4 processes x 4 threads decide the same 300 triplets at the same moments: 300 greylistings."""
    config = write_pg_config(tmp_path / "m.conf", conninfo, greylist_time=0)
    open_store(load_settings([config])).close()  # the tables exist before the race
    paths = [write_control(str(tmp_path / f"C{n}"), f"s{n % 7}@example.com", [f"r{n}@example.net"],
                           f"198.51.100.{n % 250}") for n in range(300)]
    procs = [subprocess.Popen([sys.executable, WORKERS, "replay_config", config, "4", *paths],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
             for _ in range(4)]
    total = replay_total(procs)
    assert total == 300
    assert sql(conninfo, f"SELECT count(*) FROM {PASSED_TABLE}") == [(300,)]


def test_server_restart_mid_run(tmp_path, conninfo, server):
    if server is None:
        pytest.skip("needs the test's own server")
    config = write_pg_config(tmp_path / "m.conf", conninfo, greylist_time=0)
    lines = []
    f, store = make_filter(config, lines=lines)
    paths = [write_control(str(tmp_path / f"C{n}"), f"s{n}@example.com") for n in range(20)]
    for path in paths[:10]:
        assert f.do_filter("", [path]).startswith(GREYLIST)
    server.restart()
    for path in paths[10:]:
        assert f.do_filter("", [path]).startswith(GREYLIST)  # reconnected by itself
    for path in paths:
        assert f.do_filter("", [path]) == ""
    assert not [line for line in lines if "action=error" in line]
    store.close()


def test_outage_accepts_or_tempfails_quickly_then_recovers(tmp_path, conninfo, server):
    if server is None:
        pytest.skip("needs the test's own server")
    config = write_pg_config(tmp_path / "m.conf", conninfo, greylist_time=0)
    lines = []
    f, store = make_filter(config, lines=lines)
    path = write_control(str(tmp_path / "C"))
    server.stop()
    try:
        started = time.monotonic()
        assert f.do_filter("", [path]) == ""
        assert "action=error, reason=store-failure" in lines[-1]
        f.settings = load_settings([write_pg_config(tmp_path / "t.conf", conninfo,
                                                    on_store_error="tempfail")])
        assert f.do_filter("", [path]) == STORE_FAILURE_REPLY
        assert time.monotonic() - started < 10
    finally:
        server.start()
    assert f.do_filter("", [path]).startswith(GREYLIST)
    store.close()


def test_silent_server_is_given_up_after_the_timeout(tmp_path, conninfo, server):
    """A server (or network) that stops answering mid-connection: the filter waits
    ``timeout`` seconds, not forever, then accepts and logs."""
    if server is None:
        pytest.skip("needs the test's own server")
    config = write_pg_config(tmp_path / "m.conf", dict(conninfo, timeout=1), greylist_time=0)
    lines: list = []
    f, store = make_filter(config, lines=lines)
    path = write_control(str(tmp_path / "C"))
    assert f.do_filter("", [path]).startswith(GREYLIST)  # connected and working
    backends = [pid for (pid,) in sql(conninfo, "SELECT pid FROM pg_stat_activity "
                                                "WHERE application_name = 'courier-greylist'")]
    assert backends
    for pid in backends:
        os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        assert f.do_filter("", [path]) == ""
        waited = time.monotonic() - started
        assert "action=error, reason=store-failure" in lines[-1]
        assert "no answer within 1 s" in lines[-1]
        assert 0.9 < waited < 5
    finally:
        for pid in backends:
            os.kill(pid, signal.SIGCONT)
    assert f.do_filter("", [path]) == ""  # a new connection; the triplet passed (greylist_time 0)
    store.close()


def test_a_server_down_at_start_follows_on_store_error_until_it_answers(tmp_path, conninfo, server):
    """An MX that boots before its database host: the dispatcher starts, and catches up."""
    if server is None:
        pytest.skip("needs the test's own server (GREYLIST_TEST_PG names another)")
    config = write_pg_config(tmp_path / "m.conf", dict(conninfo, timeout=2), on_store_error="tempfail")
    control = write_control(str(tmp_path / "C"))
    script = ("import sys, greylist\n"
              f"greylist.initFilter([{config!r}])\n"
              "for line in sys.stdin:\n"
              f"    print(repr(greylist.doFilter('', [{control!r}])), flush=True)\n")
    server.stop()
    try:
        proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        proc.stdin.write("message\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == repr(STORE_FAILURE_REPLY) + "\n"  # the server is still down
    finally:
        server.start()
    proc.stdin.write("message\n")
    proc.stdin.flush()
    assert proc.stdout.readline() == repr(GREYLIST + "00:05:00") + "\n"  # tables made, triplet recorded
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0
    lines = err.splitlines()
    assert lines[0].startswith("greylist: cannot connect to PostgreSQL database")
    assert lines[0].endswith("; until it answers, each message gets the on_store_error reply (tempfail)")
    assert 'Initialized the "greylist" python filter' in err
    assert sql(conninfo, f"SELECT count(*) FROM {NOT_PASSED_TABLE}") == [(1,)]


def test_unreachable_server_stops_a_command_with_one_line(tmp_path, conninfo):
    info = dict(conninfo, port=1)
    config = write_pg_config(tmp_path / "m.conf", info)
    with pytest.raises(StoreOpenError) as caught:
        open_store(load_settings([config]))
    assert "\n" not in str(caught.value) and "PostgreSQL" in str(caught.value)


def test_purge_in_batches_and_one_host_at_a_time(tmp_path, conninfo):
    config = write_pg_config(tmp_path / "m.conf", conninfo)
    store = open_store(load_settings([config]))
    sql(conninfo, f"INSERT INTO {NOT_PASSED_TABLE} SELECT md5(n::text), 1000 + n "
                  f"FROM generate_series(1, 2600) AS n")
    progress = []
    holder = psycopg.connect(host=conninfo["host"], port=conninfo["port"], dbname=conninfo["db"],
                             user=conninfo["user"], password=conninfo["password"], autocommit=True)
    holder.execute("SELECT pg_advisory_lock(%s)", (0x67726579,))
    assert store.purge(NOT_PASSED_TABLE, older_than=3000) == 0  # another host is purging
    # Let go of it before closing: the server drops a closed session's locks a moment after the
    # close, and the purge below could find it still held (it did, once in CI).
    holder.execute("SELECT pg_advisory_unlock(%s)", (0x67726579,))
    holder.close()
    assert store.purge(NOT_PASSED_TABLE, older_than=3000, progress=progress.append) == 1999
    assert progress == [1000, 1999]
    assert sql(conninfo, f"SELECT count(*) FROM {NOT_PASSED_TABLE}") == [(601,)]
    store.close()


def test_migrate_dbm_to_postgres_and_back(tmp_path, conninfo):
    """A site moving to several MX hosts re-greylists nobody, and can move back."""
    config = write_pg_config(tmp_path / "pg.conf", conninfo, greylist_time=300)
    dbm_dir = tmp_path / "dbm"
    controls = [write_control(str(tmp_path / f"C{n}"), f"s{n}@example.com") for n in range(5)]

    def cli(*args):
        return subprocess.run(greylist_command(*args), capture_output=True,
                              text=True, timeout=120)

    for path in controls:
        assert cli("check", "--db-dir", str(dbm_dir), path).returncode == 75
    moved = cli("migrate", "--db-dir", str(dbm_dir), "--to-config", config)
    assert moved.returncode == 0, moved.stderr
    assert "copied 5 entries" in moved.stderr
    clock = Clock(time.time() + 301)
    ours, store = make_filter(config, clock)
    assert [ours.do_filter("", [path]) for path in controls] == [""] * 5  # nobody greylisted again
    store.close()
    back = cli("migrate", "--config", config, "--to-db-dir", str(tmp_path / "back"))
    if os.geteuid() == 0:  # a new store root would make for itself locks out Courier's mail user
        assert back.returncode == 1 and "as root, make " in back.stderr and "install -d" in back.stderr
        os.mkdir(tmp_path / "back", 0o700)  # as the README says (here: root's own)
        back = cli("migrate", "--config", config, "--to-db-dir", str(tmp_path / "back"))
    assert back.returncode == 0 and "copied 5 entries" in back.stderr
    exported = cli("export", "--db-dir", str(tmp_path / "back")).stdout.splitlines()
    assert len(exported) == 5 and all('"greylist_Passed"' in line for line in exported)


def test_auto_whitelist_on_postgresql(tmp_path, conninfo):
    config = write_pg_config(tmp_path / "m.conf", conninfo, greylist_time=0, auto_whitelist_clients=2)
    clock = Clock()
    lines: list = []
    greylist, store = make_filter(config, clock, lines)
    try:
        for n in range(2):
            path = write_control(str(tmp_path / f"C{n}"), sender=f"s{n}@example.com")
            assert greylist.do_filter("", [path]).startswith(GREYLIST)
            assert greylist.do_filter("", [path]) == ""
        assert greylist.do_filter("", [write_control(str(tmp_path / "Cnew"), "new@example.org")]) == ""
        assert "reason=auto-whitelisted" in lines[-1]
        assert list(store.counted_items(AUTO_WHITELIST_TABLE)) == [("192.0.2.0/24", int(clock()), 2)]
        # our table has its own column; the reference's two keep their schema
        assert sql(conninfo, "SELECT column_name FROM information_schema.columns WHERE table_name = "
                             "'greylist_autowhitelist' ORDER BY ordinal_position") == \
            [("id",), ("value",), ("passes",)]
        clock.advance(60 * 60 * 24 * 37)
        greylist.purge(clock())
        assert list(store.counted_items(AUTO_WHITELIST_TABLE)) == []
    finally:
        store.close()


def test_a_retry_by_message_id_on_postgresql(tmp_path, conninfo):
    config = write_pg_config(tmp_path / "m.conf", conninfo, match_retry_by_message_id=True)
    clock = Clock()
    lines: list = []
    greylist, store = make_filter(config, clock, lines)
    body = tmp_path / "D"
    body.write_text("Message-ID: <retry@example.com>\n\nhi\n")
    try:
        first = write_control(str(tmp_path / "C1"), ip="192.0.2.10")
        assert greylist.do_filter(str(body), [first]).startswith(GREYLIST)
        clock.advance(301)
        again = write_control(str(tmp_path / "C2"), ip="198.51.100.10")  # another network of the pool
        assert greylist.do_filter(str(body), [again]) == ""
        assert "reason=retry-by-message-id" in lines[-1]
        assert MESSAGE_ID_TABLE in store.tables and len(list(store.items(MESSAGE_ID_TABLE))) == 1
        clock.advance(60 * 60 * 25)
        greylist.purge(clock())  # purged with senders_not_passed_ttl
        assert list(store.items(MESSAGE_ID_TABLE)) == []
    finally:
        store.close()


def test_a_message_of_two_thousand_recipients_is_greylisted(tmp_path, conninfo):
    """More advisory locks than PostgreSQL takes in one target list (1,664)."""
    config = write_pg_config(tmp_path / "m.conf", conninfo, greylist_time=300,
                             on_store_error="tempfail")
    clock = Clock()
    lines: list = []
    greylist, store = make_filter(config, clock, lines)
    path = write_control(str(tmp_path / "C"), "s@example.com", [f"r{n}@example.net" for n in range(2000)])
    try:
        assert greylist.do_filter("", [path]) == GREYLIST + "00:05:00", lines[-1]
        clock.advance(301)
        assert greylist.do_filter("", [path]) == ""
        assert "action=pass, reason=passed" in lines[-1]
    finally:
        store.close()
    assert sql(conninfo, f"SELECT count(*) FROM {PASSED_TABLE}") == [(2000,)]


def test_purges_of_every_table_in_a_row_each_purge(tmp_path, conninfo):
    """A purge lets go of the one-host-at-a-time lock itself: the next table's purge finds it free."""
    config = write_pg_config(tmp_path / "m.conf", conninfo, auto_whitelist_clients=1)
    store = open_store(load_settings([config]))
    try:
        for _ in range(100):
            for table in (PASSED_TABLE, NOT_PASSED_TABLE, AUTO_WHITELIST_TABLE):
                sql(conninfo, f"INSERT INTO {table} (id, value) VALUES ('x', 1)")
            assert [store.purge(table, older_than=2) for table in store.tables] == [1, 1, 1]
    finally:
        store.close()


def test_check_config_connects_and_looks_at_the_tables(tmp_path, conninfo):
    config = write_pg_config(tmp_path / "m.conf", conninfo)

    def check_config(path):
        return subprocess.run(greylist_command("check-config", "--config", str(path)),
                              capture_output=True, text=True, timeout=60)

    fresh = check_config(config)
    assert fresh.returncode == 0, fresh.stderr
    assert "note: tables greylist_Passed, greylist_NotPassed do not exist yet" in fresh.stdout
    assert "  password = (set)  (" in fresh.stdout and conninfo["password"] not in fresh.stdout
    open_store(load_settings([config])).close()  # the dispatcher made them
    assert "do not exist yet" not in check_config(config).stdout
    down = write_pg_config(tmp_path / "down.conf", dict(conninfo, port=1, timeout=1))
    refused = check_config(down)
    assert refused.returncode == 1 and "problem: cannot connect to PostgreSQL database" in refused.stderr


def test_fewer_delays_are_shared_by_every_mx_host(tmp_path, conninfo, monkeypatch):
    import courier.config

    (tmp_path / "locals").write_text("example.org\n")
    monkeypatch.setattr(courier.config, "sysconfdir", str(tmp_path))
    config = write_pg_config(tmp_path / "m.conf", conninfo, whitelist_replies=True,
                             auto_whitelist_senders=True, auto_whitelist_domains=2, greylist_time=0)
    clock = Clock()
    lines: list = []
    one, one_store = make_filter(config, clock, lines)
    two, two_store = make_filter(config, clock, lines)
    try:
        out = write_control(str(tmp_path / "Cout"), "alice@example.org", ("carol@remote.example",), ip=None)
        assert one.do_filter("", [out]) == ""
        reply = write_control(str(tmp_path / "Creply"), "carol@remote.example", ("alice@example.org",))
        assert two.do_filter("", [reply]) == "" and "reason=reply" in lines[-1]
        for n, host in enumerate((one, two)):  # two senders of shop.example pass, one on each host
            path = write_control(str(tmp_path / f"C{n}"), f"s{n}@shop.example", ("bob@example.org",))
            assert host.do_filter("", [path]).startswith(GREYLIST)
            assert host.do_filter("", [path]) == ""
        assert two.do_filter("", [write_control(str(tmp_path / "Cs0"), "s0@shop.example",
                                                ("zed@example.org",))]) == ""
        assert "reason=auto-whitelisted:sender" in lines[-1]
        assert one.do_filter("", [write_control(str(tmp_path / "Cnew"), "new@shop.example",
                                                ("zed@example.org",))]) == ""
        assert "reason=auto-whitelisted:domain" in lines[-1]
        assert [count for _, _, count in two_store.counted_items(DOMAINS_TABLE)] == [2]
        clock.advance(60 * 60 * 24 * 37)  # senders_passed_ttl over: the purge empties our tables
        one.purge(clock())
        for table in (SENDERS_TABLE, REPLIES_TABLE):
            assert list(one_store.items(table)) == []
        assert list(one_store.counted_items(DOMAINS_TABLE)) == []
    finally:
        one_store.close()
        two_store.close()


def test_a_greytrap_is_shared_by_every_mx_host(tmp_path, conninfo):
    config = write_pg_config(tmp_path / "m.conf", conninfo, greytrap_recipients=["trap@example.org"])
    clock = Clock()
    lines: list = []
    one, one_store = make_filter(config, clock, lines)
    two, two_store = make_filter(config, clock, lines)
    try:
        trap = write_control(str(tmp_path / "Ctrap"), "spam@example.com", ("trap@example.org",))
        assert one.do_filter("", [trap]).startswith(GREYLIST) and "reason=greytrap" in lines[-1]
        later = write_control(str(tmp_path / "C"), "other@example.com", ("bob@example.org",), ip="192.0.2.77")
        clock.advance(600)
        assert two.do_filter("", [later]).startswith(GREYLIST) and "reason=greytrap" in lines[-1]
        assert dict(two_store.items(GREYTRAPS_TABLE)) == {"192.0.2.0/24": int(clock()) - 600}
        clock.advance(86400)
        one.purge(clock())
        assert dict(two_store.items(GREYTRAPS_TABLE)) == {}
    finally:
        one_store.close()
        two_store.close()
