"""The metrics file: written by the real dispatcher, read back with prometheus_client's own parser."""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
import threading
import time

import pytest
from dispatcher import Dispatcher, greylist
from helpers import Clock, write_config, write_control

from greylist.extras import install_hint
from greylist.filter import GreylistFilter
from greylist.metrics import Counts, MetricsFile, reason_label
from greylist.settings import Settings, SettingsError, load_settings
from greylist.stores.dbm import DbmStore

parser = pytest.importorskip("prometheus_client.parser", reason="pip install prometheus_client")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def samples(text: str) -> dict:
    """{(sample name, frozenset of labels): value} of an exposition."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in parser.text_string_to_metric_families(text) for s in family.samples}


def metrics_text(counts: Counts) -> str:
    from prometheus_client import generate_latest

    from greylist.metrics import registry_for

    return generate_latest(registry_for(counts)).decode()


def decisions_of(log: str) -> collections.Counter:
    """(action, reason label) of every decision line of a log."""
    return collections.Counter(
        (action, reason_label(reason))
        for action, reason in re.findall(r"greylist: action=([a-z]+), reason=([^,\s]+)", log))


@pytest.fixture
def with_metrics(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    prom = tmp_path / "textfile" / "courier-greylist.prom"
    prom.parent.mkdir()
    config = write_config(str(tmp_path / "pythonfilter-modules.conf"), str(store), greylist_time=0,
                          whitelist_clients=["198.51.100.0/24"], metrics_file=str(prom),
                          metrics_interval=3600)
    assert greylist("install", "--config", config).returncode == 0
    yield config, prom
    greylist("install", "--uninstall")


def test_the_dispatcher_writes_what_it_decided_at_exit(tmp_path, with_metrics):
    config, prom = with_metrics
    dispatcher = Dispatcher(tmp_path, config)
    spool = tmp_path / "spool" / "tmp"
    try:
        assert dispatcher.wait_ready(), dispatcher.output()
        body = spool / "D1"
        body.write_text("Subject: hi\n\nhi\n")
        messages = [("a@example.com", "192.0.2.10")] * 2 + [("b@example.com", "192.0.2.11")] * 3
        messages += [("c@example.com", "198.51.100.7"), ("", "192.0.2.10")]
        for n, (sender, ip) in enumerate(messages):
            dispatcher.send(str(body), [write_control(str(spool / f"C{n}"), sender, ip=ip)])
        dispatcher.send(str(body), [str(spool / "missing")])  # an error line
    finally:
        log = dispatcher.stop()
    assert dispatcher.proc.returncode == 0
    expected = decisions_of(log)
    assert expected[("whitelist", "whitelisted:client")] == 1 and expected[("pass", "known")] == 1
    written = samples(prom.read_text())  # every figure written at exit: the interval is an hour
    got = {(dict(labels)["action"], dict(labels)["reason"]): value
           for (name, labels), value in written.items() if name == "courier_greylist_decisions_total"}
    assert got == dict(expected)
    assert sum(expected.values()) == 8
    assert written[("courier_greylist_decision_duration_seconds_count", frozenset())] == 8
    assert written[("courier_greylist_decision_duration_seconds_bucket", frozenset({("le", "+Inf")}))] == 8
    last = written[("courier_greylist_last_decision_timestamp_seconds", frozenset())]
    assert time.time() - 60 < last <= time.time()
    assert oct(prom.stat().st_mode & 0o777) == "0o644"  # node_exporter reads it as another user
    assert [name for name in os.listdir(prom.parent)] == ["courier-greylist.prom"]  # no temporary left


def test_a_failing_write_is_one_line_and_retried_until_it_works(tmp_path):
    lines: list = []
    counts = Counts(clock=Clock())
    prom = tmp_path / "later" / "courier-greylist.prom"
    metrics = MetricsFile(counts, str(prom), 3600, lines.append)
    metrics.start()  # the directory does not exist yet: a warning, and the filter goes on
    assert lines == [f"greylist: metrics file {prom}: directory {prom.parent} does not exist; "
                     f"trying again every 3600 s"]
    assert [metrics.write() for _ in range(3)] == [False] * 3 and len(lines) == 1
    counts.decided("greylist", "new", 0.0002, time.perf_counter())
    prom.parent.mkdir()
    assert metrics.write()
    assert lines[1:] == [f"greylist: metrics file {prom} written again"]
    metrics.close()
    assert samples(prom.read_text())[("courier_greylist_decisions_total",
                                      frozenset({("action", "greylist"), ("reason", "new")}))] == 1


def test_the_file_is_written_every_interval(tmp_path):
    counts = Counts()
    prom = tmp_path / "courier-greylist.prom"
    metrics = MetricsFile(counts, str(prom), 0.01, print)
    metrics.start()
    try:
        counts.decided("pass", "known", 0.0002, time.perf_counter())
        deadline = time.monotonic() + 10
        while not prom.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert prom.exists()  # by the thread: close() has not run yet
    finally:
        metrics.close()


def test_message_transactions_that_waited_for_the_lock_are_counted(tmp_path):
    """Store failures are counted by kind in test_store_faults (a real full disk: ENOSPC)."""
    clock = Clock()
    counts = Counts(clock=clock)
    store = DbmStore(str(tmp_path))
    greylist_filter = GreylistFilter(Settings(db_dir=str(tmp_path)), store, clock=clock,
                                     log=lambda line: None, purge="never", counts=counts)
    control = write_control(str(tmp_path / "C"))
    other = DbmStore(str(tmp_path))
    holding = other.transaction()
    holding.__enter__()  # another process's message holds the lock for 100 ms
    threading.Timer(0.1, holding.__exit__, (None, None, None)).start()
    greylist_filter.do_filter("", [control])
    greylist_filter.do_filter("", [control])  # nobody holds it now
    assert counts.long_lock_waits == 1
    buckets = counts.snapshot()["latency_buckets"]
    assert buckets[-1] == 0 and sum(buckets) == 2
    other.close()
    store.close()


def test_purges_are_counted_with_the_entries_they_left(tmp_path):
    clock = Clock()
    counts = Counts(clock=clock)
    store = DbmStore(str(tmp_path))
    greylist_filter = GreylistFilter(Settings(db_dir=str(tmp_path)), store, clock=clock,
                                     log=lambda line: None, purge="never", counts=counts)
    for n in range(5):
        greylist_filter.do_filter("", [write_control(str(tmp_path / f"C{n}"), f"s{n}@example.com")])
    clock.advance(2 * 24 * 3600)  # past senders_not_passed_ttl
    greylist_filter.do_filter("", [write_control(str(tmp_path / "C9"), "late@example.com")])
    assert greylist_filter.purge(clock()) == 5
    assert counts.purges == {"ok": 1, "failed": 0} and counts.purge_removed == 5
    assert counts.entries == {"greylist_NotPassed": 1, "greylist_Passed": 0}
    assert counts.last_purge == clock()
    store.close()


def test_a_metrics_file_without_prometheus_client_is_one_line_and_mail_waits(tmp_path):
    config = write_config(str(tmp_path / "m.conf"), str(tmp_path),
                          metrics_file=str(tmp_path / "courier-greylist.prom"))
    program = ("import sys; sys.modules['prometheus_client'] = None\n"  # as if not installed
               f"import greylist; greylist.initFilter([{config!r}])")
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0  # the dispatcher goes on: see test_dispatcher
    assert result.stderr == (f"greylist: cannot start: metrics_file is set, but prometheus_client is not "
                             f"installed ({install_hint('metrics')}); every message gets a 451 until the "
                             f"settings are fixed and the filter restarted (greylist restart)\n")
    assert install_hint("metrics") == f"{os.path.dirname(sys.executable)}/pip install " \
                                      f"'courier-greylist[metrics]'"  # this environment's own pip


@pytest.mark.parametrize("value, problem", [
    ("'courier-greylist.prom'", "expected an absolute path"),
    ("'/var/lib/node/courier-greylist.txt'", "the name must end in .prom"),
])
def test_metrics_file_must_be_an_absolute_prom_file(tmp_path, value, problem):
    (tmp_path / "m.conf").write_text(f"[greylist.py]\nmetrics_file = {value}\n")
    with pytest.raises(SettingsError, match=problem):
        load_settings([str(tmp_path / "m.conf")])


def test_stats_prints_the_store_figures_for_prometheus(tmp_path):
    clock = Clock()
    store = DbmStore(str(tmp_path))
    greylist_filter = GreylistFilter(Settings(db_dir=str(tmp_path)), store, clock=clock,
                                     log=lambda line: None, purge="never")
    for n in range(3):
        greylist_filter.do_filter("", [write_control(str(tmp_path / f"C{n}"), f"s{n}@example.com")])
    store.close()
    result = greylist("stats", "--prometheus", "--db-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    figures = samples(result.stdout)
    assert figures[("courier_greylist_stats_entries", frozenset({("table", "greylist_NotPassed")}))] == 3
    assert figures[("courier_greylist_stats_expired_entries",
                    frozenset({("table", "greylist_NotPassed")}))] == 3  # the real clock is years later


def test_the_dashboard_and_alerts_use_only_metrics_the_filter_writes(tmp_path):
    counts = Counts()
    counts.decided("greylist", "new", 0.001, time.perf_counter())
    counts.dns_query("list.example", "listed")
    counts.store_error(OSError(28, "No space left on device"))
    counts.purged(1.5, 10, {"greylist_Passed": 7}, failed=False)  # now every metric has a sample
    metrics = MetricsFile(counts, str(tmp_path / "m.prom"), 3600, print)
    assert metrics.write()
    written = {name for name, _labels in samples((tmp_path / "m.prom").read_text())}
    dashboard = json.loads(open(os.path.join(ROOT, "docs", "grafana-dashboard.json")).read())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    with open(os.path.join(ROOT, "docs", "alerts.yml")) as handle:
        rules = handle.read()
    expressions += re.findall(r"^ +expr: (.+)$", rules, re.M)
    assert len(expressions) >= 14 and rules.count("- alert:") == 4
    used = {name for expression in expressions
            for name in re.findall(r"\b(courier_greylist_[a-z_]+)", expression)}
    assert len(used) >= 8 and used <= written, sorted(used - written)


def test_decisions_are_counted_every_second_whatever_the_interval(tmp_path, monkeypatch):
    """The queue of decisions stays short: the writer counts it between two writes of the file."""
    monkeypatch.setattr("greylist.metrics._COUNT_EVERY", 0.01)
    counts = Counts()
    prom = tmp_path / "courier-greylist.prom"
    metrics = MetricsFile(counts, str(prom), 3600, print)
    metrics.start()
    try:
        for _ in range(1000):
            counts.decided("pass", "known", 0.0001, time.perf_counter())
        deadline = time.monotonic() + 10
        while counts._queued and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not counts._queued and not prom.exists()  # counted, not yet written
    finally:
        metrics.close()
    assert counts.decisions == {("pass", "known"): 1000}


def test_check_config_tells_about_the_metrics_file(tmp_path):
    prom = tmp_path / "missing-dir" / "courier-greylist.prom"
    config = write_config(str(tmp_path / "m.conf"), str(tmp_path), metrics_file=str(prom))
    warned = greylist("check-config", "--config", config)
    assert warned.returncode == 0, warned.stdout
    assert (f"note: metrics file {prom}: directory {prom.parent} does not exist "
            f"(the filter will keep trying)") in warned.stdout
    program = ("import sys; sys.modules['prometheus_client'] = None\n"
               f"from greylist.cli import main; sys.exit(main(['check-config', '--config', {config!r}]))")
    refused = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1
    assert "problem: metrics_file is set, but prometheus_client is not installed" in refused.stderr


def test_the_file_is_written_through_a_name_of_its_own_never_through_a_link(tmp_path):
    """Another user of node_exporter's directory plants links: at the file, and at the temporary
    name prometheus_client's write_to_textfile would use.  Neither is followed."""
    precious = tmp_path / "greylist_Passed"
    precious.write_bytes(b"the store")
    prom = tmp_path / "textfile" / "courier-greylist.prom"
    prom.parent.mkdir()
    os.symlink(precious, prom)
    os.symlink(precious, f"{prom}.{os.getpid()}.{threading.get_ident()}")
    lines: list = []
    metrics = MetricsFile(Counts(), str(prom), 3600, lines.append)
    assert metrics.write() and lines == []
    assert precious.read_bytes() == b"the store"
    assert not prom.is_symlink() and oct(prom.stat().st_mode & 0o777) == "0o644"
    assert "courier_greylist_decisions" in prom.read_text()
    assert sorted(os.listdir(prom.parent)) == sorted(["courier-greylist.prom",
                                                      f"courier-greylist.prom.{os.getpid()}."
                                                      f"{threading.get_ident()}"])  # theirs, untouched


def test_an_error_decision_does_not_move_the_last_decision_time():
    """The alert "nothing decided normally for 30 minutes" must fire while only errors come."""
    clock = Clock(1_800_000_000.0)
    counts = Counts(clock=clock)
    now = time.perf_counter()
    counts.decided("greylist", "new", 0.001, now - 600)  # ten minutes ago, on the decisions' clock
    counts.decided("error", "store-failure", 0.001, now)
    counts.decided("error", "internal", 0.001, now)
    snapshot = counts.snapshot()
    assert snapshot["last_decision"] == pytest.approx(clock() - 600, abs=5.0)
    assert snapshot["decisions"][("error", "store-failure")] == 1


def test_a_duration_on_a_bucket_bound_is_counted_in_that_bucket():
    """Prometheus's buckets are "less than or equal": 1 ms goes in le=0.001, not in le=0.0025."""
    counts = Counts()
    for seconds in (0.0, 0.0005, 0.001, 0.0010001, 10.0, 10.5):
        counts.decided("pass", "known", seconds, time.perf_counter())
    text = metrics_text(counts)
    buckets = {dict(labels)["le"]: value for (name, labels), value in samples(text).items()
               if name == "courier_greylist_decision_duration_seconds_bucket"}
    assert buckets["0.0005"] == 2 and buckets["0.001"] == 3 and buckets["0.0025"] == 4
    assert buckets["5.0"] == 4 and buckets["10.0"] == 5 and buckets["+Inf"] == 6
