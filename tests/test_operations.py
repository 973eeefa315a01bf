"""What a postmaster does every week, off the real Courier (tests/e2e runs them on it):
status, check-config before a restart, copies between stores, the installed module."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from dispatcher import Dispatcher, greylist
from helpers import write_config, write_control

from greylist.cli.dispatcher_commands import describe
from greylist.dispatcher_control import Host
from greylist.settings import load_settings
from greylist.status import fingerprint
from greylist.whitelist import WhitelistEntryError, build

NOW = 1_800_000_000.0


# --- greylist status ----------------------------------------------------------------------

def saved_status(config: str, **changes) -> dict:
    status = {"pid": 42, "started": NOW - 3700, "state": "deciding", "problem": None,
              "settings": fingerprint([config]), "store": "dbm.gnu in /var/lib/pythonfilter",
              "last_decision": NOW - 12, "version": "0.1.0"}
    status.update(changes)
    return status


def test_status_says_greylisting_is_on_only_when_it_is(tmp_path):
    config = write_config(str(tmp_path / "m.conf"), str(tmp_path))
    running = Host(courierfilter=7, dispatchers=[42], active=True, socket=True)
    on, lines = describe(running, saved_status(config), [config], NOW)
    assert on
    assert lines[2].startswith("greylist: deciding since 2027-01-15 06:58:20 UTC (1h 1m ago)")
    assert f"settings: {config}, unchanged since the start" in lines
    assert lines[-1] == "last decision: 2027-01-15 07:59:48 UTC (12s ago)"
    off = [
        (Host(None), "courierfilter: not running, so no filter runs and mail passes unfiltered"),
        (Host(7, [], active=False), "pythonfilter: not active, so mail passes unfiltered"),
        (Host(7, [], active=True), "pythonfilter: active but not running, so mail passes unfiltered"),
        (Host(7, [42], active=True, socket=False), "but without its socket"),
        (Host(7, [43], active=True, socket=True), "greylist: not run by this dispatcher"),
    ]
    for host, said in off:
        on, lines = describe(host, saved_status(config), [config], NOW)
        assert not on and said in lines[-1], lines
    on, lines = describe(running, saved_status(config, state="not-started", problem="bad"), [config], NOW)
    assert not on and "greylist: NOT STARTED since" in lines[-1]
    assert ": bad; every message gets a 451" in lines[-1]
    before = saved_status(config)
    with open(config, "a") as handle:
        handle.write("# edited\n")
    on, lines = describe(running, before, [config], NOW)
    assert on and f"settings: {config} CHANGED since the start: greylist check-config, then greylist " \
                  f"restart applies it" in lines


def test_the_real_dispatcher_writes_its_status_and_says_when_it_stopped(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    config = write_config(str(tmp_path / "m.conf"), str(store), greylist_time=0)
    assert greylist("install", "--config", config).returncode == 0
    dispatcher = Dispatcher(tmp_path, "unused")
    path = dispatcher.spool.parent / "allfilters" / ".courier-greylist.status"
    try:
        assert dispatcher.wait_ready(), dispatcher.output()
        running = json.loads(path.read_text())
        dispatcher.send("D1", [write_control(str(dispatcher.spool / "C1"))])
    finally:
        dispatcher.stop()
        greylist("install", "--uninstall")
    assert running["pid"] == dispatcher.proc.pid and running["state"] == "deciding"
    assert running["settings"] == fingerprint([config]) and running["store"].endswith(f" in {store}")
    assert running["last_decision"] is None
    stopped = json.loads(path.read_text())  # at exit: stopped, with the last decision's time
    assert stopped["state"] == "stopped" and stopped["last_decision"] > running["started"]
    assert oct(path.stat().st_mode & 0o777) == "0o644"


def test_an_installed_module_whose_package_cannot_be_imported_defers_mail(tmp_path):
    """A broken installation (the environment removed, a failed upgrade): the dispatcher would
    stop at the import, make no socket, and Courier would pass mail unfiltered."""
    target = tmp_path / "pythonfilter"
    target.mkdir()
    assert greylist("install", "--config", write_config(str(tmp_path / "m.conf"), str(tmp_path)),
                    "--target", str(target)).returncode == 0
    program = (f"import importlib.util as u, sys; sys.modules['greylist'] = None\n"
               f"s = u.spec_from_file_location('shim', {str(target / 'courier_greylist.py')!r})\n"
               "m = u.module_from_spec(s); s.loader.exec_module(m)\n"
               "m.initFilter(); print(m.doFilter('', []))")
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert result.stdout == "451 4.3.0 Greylisting temporarily unavailable, please try again later\n"
    assert result.stderr.startswith("greylist: cannot start: cannot load courier-greylist: ")
    assert result.stderr.endswith("greylist: action=error, reason=not-started\n")


# --- check-config, before every restart -------------------------------------------------------

def check_config(config: str) -> subprocess.CompletedProcess:
    return greylist("check-config", "--config", config)


# --- copies between stores --------------------------------------------------------------------


# --- smaller things ---------------------------------------------------------------------

def test_a_client_entry_of_numbers_that_is_no_address_is_refused():
    for entry in ("300.1.2.3", "192.0.2", "1.2.3.4.5"):
        with pytest.raises(WhitelistEntryError, match="is not an IP address"):
            build(clients=[entry])


def test_both_spellings_of_a_setting_the_documented_one_wins_and_says_so(tmp_path):
    for text in ("greylistTime = 10\ngreylist_time = 20\n", "greylist_time = 20\ngreylistTime = 10\n"):
        (tmp_path / "m.conf").write_text("[greylist.py]\n" + text)
        warned: list = []
        assert load_settings([str(tmp_path / "m.conf")], warn=warned.append).greylist_time == 20
        assert len(warned) == 1 and "sets both" in warned[0] and "greylist_time is used" in warned[0]


def test_commands_do_not_repeat_that_a_whitelist_file_does_not_exist_yet(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    later = tmp_path / "later"
    config = write_config(str(tmp_path / "m.conf"), str(store), whitelist_files=[str(later)])
    checked = greylist("check", "--config", config, write_control(str(tmp_path / "C")))
    assert checked.returncode == 75 and "does not exist yet" not in checked.stderr
    assert f"whitelist file {later}: does not exist yet" in check_config(config).stdout


def test_a_filter_a_test_starts_writes_the_tests_status_never_the_hosts():
    """On a Courier host, tests must leave the running dispatcher's status file alone (host.py)."""
    import host

    started = subprocess.run([sys.executable, "-c", "import greylist.status as s; print(s.path())"],
                             capture_output=True, text=True, timeout=60)
    assert started.stdout.strip() == f"{host.SPOOL}/allfilters/.courier-greylist.status"
