"""End to end: courier-pythonfilter 3.0.6's unmodified pythonfilter dispatcher loads us (dispatcher.py)."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
from dispatcher import Dispatcher, greylist
from helpers import write_config, write_control
from host import faketime_env


@pytest.fixture
def installed(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    config = write_config(str(tmp_path / "pythonfilter-modules.conf"), str(store), greylist_time=0)
    result = greylist("install", "--config", config)  # the README's step, exactly
    assert result.returncode == 0, result.stderr
    yield config, store
    greylist("install", "--uninstall")


def test_dispatcher_greylists_then_accepts(tmp_path, installed):
    config, store = installed
    dispatcher = Dispatcher(tmp_path, config)
    try:
        assert dispatcher.wait_ready(), dispatcher.output()
        body = tmp_path / "spool" / "tmp" / "D1"
        body.write_text("Subject: hello\n\nhi\n")
        control = write_control(str(tmp_path / "spool" / "tmp" / "C1"), "Alice@Example.com",
                                ["bob@example.net", "carol@example.net"], "::ffff:192.0.2.10")
        first = dispatcher.send(str(body), [control])
        assert first == "451 4.7.1 Greylisting in action, please come back in 00:00:00"
        # Relative paths, as courierfilter sends them, are resolved in the spool's tmp.
        second = dispatcher.send("D1", ["C1"])
        assert second == "200 Ok"
    finally:
        log = dispatcher.stop()
    assert dispatcher.proc.returncode == 0
    assert 'Initialized the "greylist" python filter' in log
    assert log.count("greylist: action=greylist, reason=new") == 1  # run once per message, not twice
    assert log.count("greylist: action=pass, reason=passed") == 1
    assert "Uncaught exception" not in log
    assert sorted(os.listdir(store))[0] == "greylist.lock"


def test_a_filter_that_cannot_start_defers_mail_instead_of_letting_it_through(tmp_path, installed):
    """Were the dispatcher to exit, it would make no socket, and Courier would pass mail unfiltered.
    It runs instead, and every message gets a 451 until the settings are fixed."""
    config, store = installed
    write_config(config, "/nonexistent/greylist")
    dispatcher = Dispatcher(tmp_path, config)
    try:
        assert dispatcher.wait_ready(), dispatcher.output()
        control = write_control(str(dispatcher.spool / "C1"))
        replies = [dispatcher.send("D1", [control]) for _ in range(3)]
        saved = json.loads((dispatcher.spool.parent / "allfilters" / ".courier-greylist.status").read_text())
    finally:
        log = dispatcher.stop()
    assert replies == ["451 4.3.0 Greylisting temporarily unavailable, please try again later"] * 3
    assert log.count("greylist: cannot start: store directory /nonexistent/greylist does not exist") == 1
    assert log.count("greylist: action=error, reason=not-started") == 3
    assert "Traceback" not in log and "Initialized" not in log
    assert saved["state"] == "not-started" and "/nonexistent/greylist" in saved["problem"]
    digest = hashlib.sha256(open(config, "rb").read()).hexdigest()
    assert saved["settings"] == [{"path": config, "sha256": digest}]


def test_clock_steps_through_the_real_dispatcher(tmp_path):
    """The dispatcher on a clock the test steps (libfaketime): a day ahead when a new sender
    tries, then right again; its retries, when told, pass one greylist_time later, not a day."""
    store = tmp_path / "store"
    store.mkdir()
    config = write_config(str(tmp_path / "pythonfilter-modules.conf"), str(store), greylist_time=300)
    assert greylist("install", "--config", config).returncode == 0
    clock = tmp_path / "clock"
    clock.write_text("+1d\n")
    dispatcher = Dispatcher(tmp_path, config, env=faketime_env(str(clock)))
    waited = "451 4.7.1 Greylisting in action, please come back in 00:05:00"
    try:
        assert dispatcher.wait_ready(), dispatcher.output()
        control = write_control(str(dispatcher.spool / "C1"), "new@example.com")
        assert dispatcher.send("D1", [control]) == waited
        clock.write_text("+300\n")  # right again (give or take), and the sender retries when told
        assert dispatcher.send("D1", [control]) == waited  # the wait starts now, and says so
        clock.write_text("+600\n")
        assert dispatcher.send("D1", [control]) == "200 Ok"
        # an hour back, staying there: the next new sender loses at most one greylist_time
        other = write_control(str(dispatcher.spool / "C2"), "other@example.com")
        clock.write_text("+600\n")
        assert dispatcher.send("D1", [other]) == waited
        clock.write_text("-2700\n")  # five minutes later, on a clock that went back an hour
        assert dispatcher.send("D1", [other]) == waited
        clock.write_text("-2400\n")
        assert dispatcher.send("D1", [other]) == "200 Ok"
        # Read before the dispatcher exits: its own time.sleep() there fails under
        # libfaketime (EINVAL from clock_nanosleep), which is not ours to judge.
        log = dispatcher.output()
    finally:
        dispatcher.stop()
        greylist("install", "--uninstall")
    assert log.count("action=pass, reason=passed") == 2 and "Traceback" not in log
