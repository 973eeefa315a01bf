"""transfer.py: export, import and migrate; the newer state of a key wins, and nothing else changes."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import tempfile

import pytest
from helpers import REPO, write_config, write_control
from helpers import run_greylist as run
from host import greylist_command
from hypothesis import given, settings
from hypothesis import strategies as st

from greylist.stores import (
    AUTO_WHITELIST_TABLE,
    DOMAINS_TABLE,
    GREYTRAPS_TABLE,
    NOT_PASSED_TABLE,
    OPTIONAL_TABLES,
    PASSED_TABLE,
    REPLIES_TABLE,
    SENDERS_TABLE,
)
from greylist.stores.dbm import DbmStore
from greylist.transfer import TransferError, copy_store, export_to, parse_lines, write_entries

KEYS = [c * 32 for c in "abcd"]
TIMES = st.integers(1_700_000_000, 1_700_000_009)
# One state per triplet, as the filter leaves them: pending or passed; and client-network records.
TRIPLETS = st.dictionaries(st.sampled_from(KEYS), st.tuples(st.sampled_from([NOT_PASSED_TABLE, PASSED_TABLE]),
                                                            TIMES), max_size=4)
NETWORKS = st.dictionaries(st.sampled_from(["192.0.2.0/24", "2001:db8::/48"]),
                           st.tuples(TIMES, st.integers(0, 9)), max_size=2)


def _store(directory: str, triplets: dict, networks: dict) -> DbmStore:
    store = DbmStore(directory, tables=OPTIONAL_TABLES)
    with store.transaction() as tx:
        for key, (table, stamp) in triplets.items():
            tx.set(table, key, stamp)
        for network, (stamp, count) in networks.items():
            tx.set_counted(AUTO_WHITELIST_TABLE, network, stamp, count)
    return store


def _contents(store: DbmStore) -> tuple:
    return (dict(store.items(PASSED_TABLE)), dict(store.items(NOT_PASSED_TABLE)),
            sorted(store.counted_items(AUTO_WHITELIST_TABLE)))


def _merged(one: dict, other: dict) -> dict:
    """What the newer state means: passed beats pending, then the later time."""
    merged = dict(one)
    for key, (table, stamp) in other.items():
        if key not in merged:
            merged[key] = (table, stamp)
            continue
        known_table, known_stamp = merged[key]
        if table == known_table:
            merged[key] = (table, max(stamp, known_stamp))
        elif table == PASSED_TABLE:
            merged[key] = (table, stamp)
    return merged


@settings(max_examples=50, deadline=None)
@given(here=TRIPLETS, there=TRIPLETS, here_networks=NETWORKS, there_networks=NETWORKS)
def test_a_copy_merges_either_way_to_the_newer_state_and_twice_changes_nothing(
        here, there, here_networks, there_networks):
    results = []
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b, \
            tempfile.TemporaryDirectory() as c, tempfile.TemporaryDirectory() as d:
        for into, source in ((_store(a, here, here_networks), _store(b, there, there_networks)),
                             (_store(c, there, there_networks), _store(d, here, here_networks))):
            copy_store(source, into)
            once = _contents(into)
            copy_store(source, into)
            assert _contents(into) == once  # twice changes nothing
            results.append(once)
            into.close()
            source.close()
    assert results[0] == results[1]  # A into B is B into A
    merged = _merged(here, there)
    passed, pending, networks = results[0]
    assert passed == {k: s for k, (t, s) in merged.items() if t == PASSED_TABLE}
    assert pending == {k: s for k, (t, s) in merged.items() if t == NOT_PASSED_TABLE}
    for network, stamp, count in networks:
        sides = [side[network] for side in (here_networks, there_networks) if network in side]
        assert (stamp, count) == (max(s for s, _ in sides), max(n for _, n in sides))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(max_size=80), max_size=5))
def test_any_line_is_an_entry_or_a_transfer_error_naming_its_line(lines):
    try:
        rows = list(parse_lines(lines))
    except TransferError as error:
        assert str(error).startswith("line ") and ": not an entry of an export" in str(error)
    else:
        assert all(table in (NOT_PASSED_TABLE, PASSED_TABLE, AUTO_WHITELIST_TABLE) for table, *_ in rows)


@pytest.mark.parametrize("line", [
    '{"table": "greylist_Passed", "digest": "", "timestamp": 1}',  # no key
    '{"table": "greylist_Passed", "digest": "' + "a" * 65 + '", "timestamp": 1}',  # longer than any key
    '{"table": "greylist_Passed", "digest": "k", "timestamp": true}',
    '{"table": "greylist_Passed", "digest": "k", "timestamp": "1"}',
    '{"table": "greylist_AutoWhitelist", "digest": "k", "timestamp": 1, "count": 1.5}',
    '{"table": "passwd", "digest": "k", "timestamp": 1}',
    '{"store": "greylist_Passed", "digest": "k", "timestamp": 1}',  # not this format's word
    '["greylist_Passed", "k", 1]',
    "null",
])
def test_lines_that_are_not_entries_are_refused(line):
    with pytest.raises(TransferError, match="line 2: not an entry of an export"):
        list(parse_lines(['{"table": "greylist_Passed", "digest": "k", "timestamp": 1}', line]))


def test_export_then_parse_gives_back_every_entry(tmp_path):
    store = _store(str(tmp_path), {KEYS[0]: (PASSED_TABLE, 1_700_000_000), KEYS[1]: (NOT_PASSED_TABLE, 5)},
                   {"192.0.2.0/24": (1_700_000_001, 3)})
    out = io.StringIO()
    assert export_to(store, out) == 3
    store.close()
    rows = sorted(parse_lines(out.getvalue().splitlines()))
    assert rows == sorted([(PASSED_TABLE, KEYS[0], 1_700_000_000, None), (NOT_PASSED_TABLE, KEYS[1], 5, None),
                           (AUTO_WHITELIST_TABLE, "192.0.2.0/24", 1_700_000_001, 3)])
    assert json.loads(out.getvalue().splitlines()[0]).keys() >= {"table", "digest", "timestamp"}


def test_an_import_stopped_by_a_bad_line_keeps_and_counts_what_came_before(tmp_path):
    store = DbmStore(str(tmp_path))
    good = [json.dumps({"table": PASSED_TABLE, "digest": key, "timestamp": 1_700_000_000})
            for key in KEYS[:2]]
    with pytest.raises(TransferError) as stopped:
        write_entries(store, parse_lines(good + ["{}"] + good))
    assert stopped.value.written == 2 and len(dict(store.items(PASSED_TABLE))) == 2
    store.close()


def test_a_copy_keeps_the_newer_state_and_twice_changes_nothing(tmp_path):
    store = DbmStore(str(tmp_path), tables=OPTIONAL_TABLES)
    with store.transaction() as tx:
        tx.set(PASSED_TABLE, "a" * 32, 1000)  # passed here; pending in the copy
        tx.set(NOT_PASSED_TABLE, "b" * 32, 500)  # pending here; passed in the copy
        tx.set(PASSED_TABLE, "c" * 32, 3000)  # later here than in the copy
        tx.set_counted(AUTO_WHITELIST_TABLE, "192.0.2.0/24", 2000, 5)
    copy = [(NOT_PASSED_TABLE, "a" * 32, 2000, None), (PASSED_TABLE, "b" * 32, 400, None),
            (PASSED_TABLE, "c" * 32, 2000, None), (AUTO_WHITELIST_TABLE, "192.0.2.0/24", 2500, 3)]
    for _ in range(2):
        write_entries(store, copy)
        assert dict(store.items(PASSED_TABLE)) == {"a" * 32: 1000, "b" * 32: 400, "c" * 32: 3000}
        assert dict(store.items(NOT_PASSED_TABLE)) == {}
        assert list(store.counted_items(AUTO_WHITELIST_TABLE)) == [("192.0.2.0/24", 2500, 5)]
    store.close()


def test_a_second_migrate_sends_nobody_back_to_waiting(tmp_path):
    """allow in the destination, the triplet pending in the source: migrate, then its next message passes."""
    source, destination = tmp_path / "source", tmp_path / "destination"
    control = write_control(str(tmp_path / "C"))
    triplet = ["--sender", "alice@example.com", "--recipient", "bob@example.net", "--ip", "192.0.2.10"]
    assert run("check", "--db-dir", str(source), control).returncode == 75
    assert run("migrate", "--db-dir", str(source), "--to-db-dir", str(destination)).returncode == 0
    assert run("allow", "--db-dir", str(destination), *triplet).returncode == 0
    again = run("migrate", "--db-dir", str(source), "--to-db-dir", str(destination))
    assert again.returncode == 0, again.stderr
    assert run("check", "--db-dir", str(destination), control).returncode == 0  # passes


def test_export_import_roundtrip(tmp_path):
    source, target = tmp_path / "a", tmp_path / "b"
    for n in range(3):
        run("check", "--db-dir", str(source), write_control(str(tmp_path / f"C{n}"), f"s{n}@example.com"))
    exported = run("export", "--db-dir", str(source))
    assert exported.returncode == 0 and "exported 3 entries" in exported.stderr
    rows = [json.loads(line) for line in exported.stdout.splitlines()]
    assert {row["table"] for row in rows} == {"greylist_NotPassed"} and len(rows) == 3
    dump = tmp_path / "dump.jsonl"
    dump.write_text(exported.stdout)
    imported = run("import", "--db-dir", str(target), str(dump))
    assert imported.returncode == 0 and "imported 3 entries" in imported.stderr
    again = run("export", "--db-dir", str(target))
    assert sorted(again.stdout.splitlines()) == sorted(exported.stdout.splitlines())
    piped = subprocess.run(greylist_command("import", "--db-dir", str(tmp_path / "c")),
                           input=exported.stdout, capture_output=True, text=True, cwd=REPO, timeout=60)
    assert piped.returncode == 0 and "imported 3 entries" in piped.stderr
    dump.write_text('{"table": "nope"}\n')
    bad = run("import", "--db-dir", str(target), str(dump))
    assert bad.returncode == 1 and "line 1: not an entry of an export" in bad.stderr
    # A compressed backup on standard input; a bad line after two good ones keeps those two.
    lines = exported.stdout.splitlines()
    packed = gzip.compress("\n".join(lines[:2] + ['{"table": "nope"}'] + lines[2:]).encode() + b"\n")
    fresh = tmp_path / "d"
    gz = subprocess.run(greylist_command("import", "--db-dir", str(fresh)),
                        input=packed, capture_output=True, cwd=REPO, timeout=60)
    assert gz.returncode == 1
    assert gz.stderr.decode() == ("greylist: import stopped after 2 entries: "
                                  "line 3: not an entry of an export\n")
    assert len(run("export", "--db-dir", str(fresh)).stdout.splitlines()) == 2


def test_migrate_between_dbm_directories(tmp_path):
    source, target = tmp_path / "a", tmp_path / "b"
    control = write_control(str(tmp_path / "C"))
    run("check", "--db-dir", str(source), control)
    assert run("migrate", "--db-dir", str(source)).returncode == 1
    moved = run("migrate", "--db-dir", str(source), "--to-db-dir", str(target))
    assert moved.returncode == 0 and "copied 1 entries" in moved.stderr
    assert run("export", "--db-dir", str(target)).stdout == run("export", "--db-dir", str(source)).stdout


def test_auto_whitelist_table_travels_with_export_and_migrate(tmp_path):
    source, target, again = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    source.mkdir()
    config = write_config(str(tmp_path / "m.conf"), str(source), greylist_time=0,
                          auto_whitelist_clients=5)
    control = write_control(str(tmp_path / "C"))
    run("check", "--config", config, control)
    run("check", "--config", config, control)
    rows = [json.loads(line) for line in run("export", "--config", config).stdout.splitlines()]
    assert {"table": "greylist_AutoWhitelist", "digest": "192.0.2.0/24", "timestamp":
            rows[-1]["timestamp"], "count": 1} in rows
    dump = tmp_path / "dump"
    dump.write_text("".join(json.dumps(row) + "\n" for row in rows))
    # the destination has auto-whitelisting off, but the table comes along
    assert run("import", "--db-dir", str(target), str(dump)).returncode == 0
    assert run("export", "--db-dir", str(target)).stdout == run("export", "--config", config).stdout
    moved = run("migrate", "--config", config, "--to-db-dir", str(again))
    assert moved.returncode == 0, moved.stderr
    assert run("export", "--db-dir", str(again)).stdout == run("export", "--config", config).stdout


def test_the_tables_of_fewer_delays_and_greytraps_travel_with_export_and_import(tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    ours = (SENDERS_TABLE, DOMAINS_TABLE, REPLIES_TABLE, GREYTRAPS_TABLE)
    one = DbmStore(str(tmp_path / "one"), tables=ours)
    with one.transaction() as tx:
        tx.set(SENDERS_TABLE, KEYS[0], 1_700_000_001)
        tx.set_counted(DOMAINS_TABLE, KEYS[1], 1_700_000_002, 3)
        tx.set(REPLIES_TABLE, KEYS[2], 1_700_000_003)
        tx.set(GREYTRAPS_TABLE, "192.0.2.0/24", 1_700_000_004)
    out = io.StringIO()
    assert export_to(one, out) == 4
    two = DbmStore(str(tmp_path / "two"))  # the tables are made as the import needs them
    try:
        with pytest.raises(TransferError, match="has no table greylist_Senders"):
            write_entries(two, parse_lines(out.getvalue().splitlines()))
    finally:
        two.close()
    two = DbmStore(str(tmp_path / "two"), tables=ours)
    assert write_entries(two, parse_lines(out.getvalue().splitlines())) == 4
    assert dict(two.items(GREYTRAPS_TABLE)) == {"192.0.2.0/24": 1_700_000_004}
    assert dict(two.items(SENDERS_TABLE)) == {KEYS[0]: 1_700_000_001}
    assert list(two.counted_items(DOMAINS_TABLE)) == [(KEYS[1], 1_700_000_002, 3)]
    assert dict(two.items(REPLIES_TABLE)) == {KEYS[2]: 1_700_000_003}
    one.close()
    two.close()
