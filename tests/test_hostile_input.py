"""Hostile or broken configuration: numbers no setting can take, values the parser cannot take,
and files that are not what their name promises (a FIFO, a device, a huge file, a link).

Each is refused with one line, at start and while running, and nothing blocks: a test that
could hang runs its step in a thread and fails if it does not come back.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from ipaddress import ip_address

import pytest
from helpers import Clock, write_config, write_control
from host import greylist_command

from greylist.filter import GreylistFilter
from greylist.reputation import PatternFileError
from greylist.settings import Settings, SettingsError, load_settings
from greylist.stores import StoreOpenError
from greylist.stores.dbm import DbmStore
from greylist.whitelist import Whitelist
from greylist.whitelist_files import LIMIT, RACY, RELOAD_WAIT, WhitelistFileError, WhitelistFiles

GREYLIST = "451 4.7.1 Greylisting in action, please come back in "


def in_time(job, seconds: float = 10.0):
    """``job()``'s result, or a failure when it does not return within ``seconds``."""
    result: list = []
    thread = threading.Thread(target=lambda: result.append(_outcome(job)), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"blocked for more than {seconds} s"
    outcome, value = result[0]
    if outcome == "raised":
        raise value
    return value


def _outcome(job):
    try:
        return "returned", job()
    except BaseException as error:  # handed to the test's own thread
        return "raised", error


@pytest.fixture
def fifo(tmp_path):
    """A FIFO nobody writes to; released at the end, so that a reader that blocked goes away."""
    path = tmp_path / "fifo"
    os.mkfifo(path)
    yield path
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


def write_settings(tmp_path, text: str) -> str:
    path = tmp_path / "modules.conf"
    path.write_text(text)
    return str(path)


# --- numbers and values ----------------------------------------------------------------

@pytest.mark.parametrize("section, line, problem", [
    ("greylist.py", "greylist_time = 1e309-1e309", "not a finite number"),
    ("greylist.py", "greylist_time = 1e309", "not a finite number"),
    ("greylist.py", "senders_passed_ttl = -1e309", "not a finite number"),
    ("greylist.py", "senders_not_passed_ttl = 1e308 * 10", "not a finite number"),
    ("greylist.py", "dns_timeout = 1e309", "not a finite number"),
    ("ttldb", "timeout = 1e309 - 1e309", "not a finite number"),
    ("greylist.py", "greylist_time = 1000000 ** 64", "number too large"),
    ("greylist.py", "greylist_time = " + "+".join(["1"] * 20000), "too deeply nested"),
    ("greylist.py", "greylist_time = " + "-" * 60000 + "1", "too deeply nested"),
    ("greylist.py", "greylist_time = " + "(" * 5000 + "1" + ")" * 5000, "too many nested parentheses"),
    ("greylist.py", "greylist_time = 11 * 365 * 86400", "at most 315360000 (ten years)"),
    ("greylist.py", "senders_purge_interval = 0", "more than 0 seconds"),
    ("greylist.py", "dns_timeout = 61", "at most 60"),
    ("greylist.py", "metrics_interval = 86401", "at most 86400"),
    ("greylist.py", "auto_whitelist_clients = 10 ** 7", "from 0 to 1000000"),
    ("ttldb", "timeout = 301", "at most 300"),
    ("ttldb", "pool_size = 0", "from 1 to 100"),
    ("ttldb", "pool_size = 101", "from 1 to 100"),
    ("greylist.py", "greylist_time = 'x' * 10 ** 9", "arithmetic is allowed on numbers only"),
])
def test_a_value_no_setting_can_take_is_one_line(tmp_path, section, line, problem):
    path = write_settings(tmp_path, f"[{section}]\n{line}\n")
    with pytest.raises(SettingsError) as caught:
        load_settings([path])
    message = str(caught.value)
    assert problem in message and "\n" not in message and len(message) < 400, message
    assert message.startswith(f"{path}: [{section}] {line.split(' = ')[0]}: ")


def test_zero_durations_and_the_widest_prefixes_are_taken(tmp_path):
    path = write_settings(tmp_path, "[greylist.py]\ngreylist_time = 0\nsenders_passed_ttl = 0\n"
                                    "senders_not_passed_ttl = 0\ndnsbl_greylist_time = 0\n"
                                    "ipv4_prefix = 32\nipv6_prefix = 128\n")
    settings = load_settings([path])
    assert (settings.greylist_time, settings.senders_passed_ttl, settings.senders_not_passed_ttl,
            settings.dnsbl_greylist_time) == (0, 0, 0, 0)
    assert (settings.ipv4_prefix, settings.ipv6_prefix) == (32, 128)
    longest = write_settings(tmp_path, "[greylist.py]\ngreylist_time = 10 * 365 * 86400\n")
    assert load_settings([longest]).greylist_time == 10 * 365 * 86400
    for line in ("ipv4_prefix = 33", "ipv6_prefix = 129", "ipv4_prefix = -1"):
        with pytest.raises(SettingsError, match="expected a whole number from 0 to"):
            load_settings([write_settings(tmp_path, f"[greylist.py]\n{line}\n")])


def test_initfilter_and_check_config_say_one_line_and_never_raise(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    config = write_config(str(tmp_path / "m.conf"), str(store))
    text = open(config).read().replace("[greylist.py]\n", "[greylist.py]\ngreylist_time = "
                                       + "+".join(["1"] * 20000) + "\n")
    open(config, "w").write(text)
    started = subprocess.run([sys.executable, "-c", f"import greylist; greylist.initFilter([{config!r}])"],
                             capture_output=True, text=True, timeout=60)
    assert started.returncode == 0  # the dispatcher goes on, deferring mail: see test_dispatcher
    assert started.stderr.count("\n") == 1 and "Traceback" not in started.stderr
    assert started.stderr.startswith(f"greylist: cannot start: {config}: [greylist.py] greylist_time: "
                                     f"too deeply nested")
    checked = subprocess.run(greylist_command("check-config", "--config", config), capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 1 and "Traceback" not in checked.stderr
    assert "problem: " in checked.stderr and "too deeply nested" in checked.stderr


# --- settings files that are not what they seem --------------------------------------------

def test_a_settings_file_that_is_a_fifo_a_device_or_huge_is_refused(tmp_path, fifo):
    with pytest.raises(SettingsError, match="not a regular file, but a FIFO"):
        in_time(lambda: load_settings([str(fifo)]))
    with pytest.raises(SettingsError, match="not a regular file, but a character device"):
        in_time(lambda: load_settings(["/dev/zero"]))
    huge = tmp_path / "huge.conf"
    with open(huge, "wb") as handle:
        handle.truncate(2 << 20)  # sparse: nothing is written
    with pytest.raises(SettingsError, match="larger than 1 MiB"):
        in_time(lambda: load_settings([str(huge)]))


# --- whitelist, pattern and smtpaccess files ---------------------------------------------

def test_a_whitelist_file_that_is_a_fifo_or_a_device_stops_the_start_without_blocking(tmp_path, fifo):
    store = tmp_path / "store"
    store.mkdir()
    for path, kind in ((fifo, "a FIFO"), ("/dev/zero", "a character device")):
        with pytest.raises(WhitelistFileError, match=f"file {path}: not a regular file, but {kind}"):
            settings = Settings(db_dir=str(store), whitelist_files=(str(path),))
            in_time(lambda settings=settings: GreylistFilter(settings, DbmStore(str(store)), purge="never"))


def test_a_pattern_file_that_is_a_device_or_huge_stops_the_start(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    huge = tmp_path / "patterns"
    with open(huge, "wb") as handle:
        handle.truncate(2 << 20)
    for path, problem in (("/dev/zero", "not a regular file, but a character device"),
                          (str(huge), "larger than 1 MiB")):
        settings = Settings(db_dir=str(store), greylist_clients="suspicious", generic_rdns_files=(path,))
        with pytest.raises(PatternFileError, match=f"generic_rdns_files: cannot read {path}: {problem}"):
            in_time(lambda settings=settings: GreylistFilter(settings, DbmStore(str(store)), purge="never"))


def test_a_whitelist_file_larger_than_the_limit_is_refused(tmp_path):
    huge = tmp_path / "whitelist"
    with open(huge, "wb") as handle:
        handle.truncate(LIMIT + 1)
    with pytest.raises(WhitelistFileError, match=f"whitelist file {huge}: larger than 64 MiB"):
        WhitelistFiles(Whitelist(), [str(huge)], print)


def test_a_whitelist_file_replaced_by_a_fifo_keeps_its_entries_and_mail_flows(tmp_path, fifo):
    listing = tmp_path / "whitelist"
    listing.write_text("client: 198.51.100.0/24\n")
    lines: list = []
    files = WhitelistFiles(Whitelist(), [str(listing)], lines.append)
    os.replace(fifo, listing)
    for _ in range(3):
        assert in_time(files.current).match_client(ip_address("198.51.100.1"), None)
        files.wait_for_reload()
    assert [line for line in lines if "FIFO" in line] == [
        f"greylist: whitelist file {listing}: cannot read it (not a regular file, but a FIFO); "
        f"keeping its last entries"]
    listing.unlink()
    listing.write_text("client: 203.0.113.0/24\n")
    files.current()
    files.wait_for_reload()
    assert files.current().match_client(ip_address("203.0.113.1"), None)
    assert lines[-1] == f"greylist: whitelist file {listing} read again"


def test_smtpaccess_that_is_a_fifo_is_refused_at_start_and_kept_on_reload(tmp_path, fifo):
    import dbm.dumb

    from greylist.relay import SmtpAccess, SmtpAccessError

    with pytest.raises(SmtpAccessError, match="not a regular file, but a FIFO"):
        in_time(lambda: SmtpAccess(str(fifo)))
    base = tmp_path / "smtpaccess"
    with dbm.dumb.open(str(base), "c") as db:
        db[b"192.0.2"] = b"allow,RELAYCLIENT"
    lines: list = []
    access = SmtpAccess(str(base), lines.append)
    client = ip_address("192.0.2.1")
    assert access.is_relay_client(client)
    os.unlink(str(base) + ".dir")
    os.mkfifo(str(base) + ".dir")
    try:
        for _ in range(3):
            assert in_time(lambda: access.is_relay_client(client))  # the last good copy
        assert len(lines) == 1 and "not a regular file, but a FIFO; keeping the last good copy" in lines[0]
    finally:
        os.close(os.open(str(base) + ".dir", os.O_RDWR | os.O_NONBLOCK))
        access.close()


def test_a_large_whitelist_read_again_never_holds_up_mail(tmp_path):
    """200,000 lines changed: the message that notices waits RELOAD_WAIT at most, the others not at all."""
    listing = tmp_path / "whitelist"
    lines = [f"client: 10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}\n" for n in range(200_000)]
    listing.write_text("".join(lines))
    files = WhitelistFiles(Whitelist(), [str(listing)], print)
    listing.write_text("".join(lines[1:]) + "client: 198.51.100.0/24\n")
    started = time.monotonic()
    files.current()
    noticed = time.monotonic() - started
    started = time.monotonic()
    files.current()  # while the reading goes on
    meanwhile = time.monotonic() - started
    files.wait_for_reload()
    reading = time.monotonic() - started
    assert reading > 4 * RELOAD_WAIT, "the file read too fast to show anything"
    assert noticed < RELOAD_WAIT + 0.2 and meanwhile < 0.05, (noticed, meanwhile, reading)
    new = ip_address("198.51.100.1")
    assert files.current().match_client(new, None)


def test_a_same_size_rewrite_within_the_clock_tick_is_read_again(tmp_path):
    """A file rewritten in place with the same size, its time unchanged (a file system that
    keeps whole seconds): read once more RACY seconds after it was read."""
    listing = tmp_path / "whitelist"
    listing.write_text("client: 192.0.2.1\n")
    clock = Clock(time.time())
    files = WhitelistFiles(Whitelist(), [str(listing)], print, clock=clock)
    before = os.stat(listing)
    with open(listing, "r+") as handle:
        handle.write("client: 192.0.2.2\n")
    os.utime(listing, ns=(before.st_atime_ns, before.st_mtime_ns))
    address = ip_address
    assert files.current().match_client(address("192.0.2.1"), None)  # nothing to tell them apart yet
    clock.advance(RACY)
    files.current()
    files.wait_for_reload()
    assert files.current().match_client(address("192.0.2.2"), None)
    assert not files.current().match_client(address("192.0.2.1"), None)
    clock.advance(RACY)  # read long after its time: trusted from now on, no more reading
    files.current()
    assert files._files[str(listing)].settled


# --- the store's own files -------------------------------------------------------------

@pytest.mark.parametrize("name", ["greylist_Passed.dir", "greylist_Passed.dat", "greylist.lock",
                                  "greylist_NotPassed", "greylist_Passed"])
def test_a_fifo_at_a_store_file_name_is_refused_without_blocking(tmp_path, name):
    store = tmp_path / "store"
    store.mkdir()
    if name != "greylist_Passed":  # that one in an empty directory: where a gdbm store's file would be
        DbmStore(str(store), flavour="dbm.dumb").close()
    if os.path.lexists(store / name):
        os.unlink(store / name)
    os.mkfifo(store / name)
    try:
        with pytest.raises(StoreOpenError, match="not a regular file, but a FIFO|FIFO"):
            in_time(lambda: DbmStore(str(store), flavour="dbm.dumb"))
        for command in (["export", "--db-dir", str(store)], ["stats", "--db-dir", str(store)],
                        ["show", "--db-dir", str(store), "--sender", "a@b.example", "--recipient",
                         "c@d.example", "--ip", "192.0.2.1"],
                        ["check", "--db-dir", str(store), write_control(str(tmp_path / "C"))],
                        ["migrate", "--db-dir", str(store), "--to-db-dir", str(tmp_path / "copy")],
                        ["check-config", "--config", write_config(str(tmp_path / "m.conf"), str(store))]):
            result = subprocess.run(greylist_command(*command), capture_output=True, text=True, timeout=30)
            assert result.returncode == 1, (command, result.stderr)
            assert "FIFO" in result.stderr and "Traceback" not in result.stderr
            assert result.stderr.count("\n") == 1, result.stderr
    finally:
        os.close(os.open(store / name, os.O_RDWR | os.O_NONBLOCK))


def test_a_link_at_a_store_file_name_is_never_followed(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    DbmStore(str(store), flavour="dbm.dumb").close()
    secret = tmp_path / "secret"
    secret.write_text("'0123456789abcdef0123456789abcdef', (0, 10)\n")
    os.unlink(store / "greylist_Passed.dir")
    os.symlink(secret, store / "greylist_Passed.dir")
    with pytest.raises(StoreOpenError, match="symbolic link"):
        DbmStore(str(store))
