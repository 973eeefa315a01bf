"""The command line as a user types it."""

from __future__ import annotations

import gzip
import json
import os
import pty
import shutil
import subprocess

import pytest
from helpers import REPO, have_gdbm, write_config, write_control
from host import greylist_command

from greylist.stores.dbm import DbmStore

GREYLIST = "451 4.7.1 Greylisting in action, please come back in "


def run(*args, env=None, check_output=True):
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run(greylist_command(*args), capture_output=True, text=True,
                          env=full_env, cwd=REPO, timeout=60)


def test_check_greylists_then_passes(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    config = write_config(str(tmp_path / "m.conf"), str(store), greylist_time=0)
    control = write_control(str(tmp_path / "C"))
    first = run("check", "--config", config, control)
    assert (first.returncode, first.stdout) == (75, GREYLIST + "00:00:00\n")
    assert f"store: dbm.{'gnu' if have_gdbm() else 'dumb'} in {store}" in first.stderr
    second = run("check", "--config", config, "--explain", control)
    assert (second.returncode, second.stdout) == (0, "\n")
    assert "action=pass, reason=passed" in second.stderr


def test_module_form_and_db_dir(tmp_path):
    control = write_control(str(tmp_path / "C"))
    result = run(control, "--db-dir", str(tmp_path))
    assert result.returncode == 75 and result.stdout.startswith(GREYLIST + "00:05:00")
    assert os.path.exists(tmp_path / "greylist.lock")


def test_default_store_location_is_reported(tmp_path):
    control = write_control(str(tmp_path / "C"))
    result = run("check", control, env={"XDG_STATE_HOME": str(tmp_path / "state")})
    assert result.returncode == 75
    assert f"in {tmp_path}/state/courier-greylist" in result.stderr
    assert os.path.isdir(tmp_path / "state" / "courier-greylist")


def test_errors_are_one_line_and_non_zero(tmp_path):
    bad = tmp_path / "bad.conf"
    bad.write_text("[greylist.py]\ngreylist_time = os.system('x')\n")
    control = write_control(str(tmp_path / "C"))
    result = run("check", "--config", str(bad), control)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert f"{bad}: [greylist.py] greylist_time: not a literal" in result.stderr
    config = write_config(str(tmp_path / "m.conf"), str(tmp_path / "nope"))
    missing = run("check", "--config", config, control)
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    blocked = tmp_path / "file"
    blocked.write_text("")
    cannot = run("check", "--db-dir", str(blocked / "sub"), control)
    assert cannot.returncode == 1 and "cannot create store directory" in cannot.stderr
    assert run("check", "--config", str(tmp_path / "absent.conf"), control).returncode == 1
    usage = run("check")
    assert usage.returncode == 2


def test_control_file_problems(tmp_path):
    result = run("check", "--db-dir", str(tmp_path), str(tmp_path / "missing"))
    assert result.returncode == 75 and result.stdout == "451 Internal failure locating control files\n"
    local = write_control(str(tmp_path / "C"), ip=None)
    result = run("check", "--db-dir", str(tmp_path), local)
    assert result.returncode == 0 and "no-client-ip" in result.stderr


def test_root_acts_as_store_owner(beside_nobody):
    store, control, nobody = beside_nobody
    os.chown(store, nobody.pw_uid, nobody.pw_gid)
    result = run("check", "--db-dir", str(store), control)
    assert result.returncode == 75, result.stderr
    for name in os.listdir(store):
        assert os.stat(store / name).st_uid == nobody.pw_uid, name
    assert len(os.listdir(store)) >= 3


def test_root_in_a_group_writable_root_directory_acts_as_the_files_owner(beside_nobody):
    """A directory root owns, writable by Courier's group: root leaves no root-owned file there."""
    store, control, nobody = beside_nobody
    os.chown(store, 0, nobody.pw_gid)
    os.chmod(store, 0o770)
    refused = run("check", "--db-dir", str(store), control)  # no file says whose store it is
    assert refused.returncode == 1 and "run this as Courier's mail user" in refused.stderr
    assert os.listdir(store) == []
    DbmStore(str(store)).close()  # as the dispatcher, running as the mail user, would have made them
    for name in os.listdir(store):
        os.chown(store / name, nobody.pw_uid, nobody.pw_gid)
    for command in (["check", "--db-dir", str(store), control], ["purge", "--db-dir", str(store)]):
        result = run(*command)
        assert result.returncode in (0, 75), result.stderr
    assert {os.stat(store / name).st_uid for name in os.listdir(store)} == {nobody.pw_uid}


def test_an_unknown_command_suggests_the_nearest_and_creates_nothing(tmp_path):
    env = dict(os.environ, HOME=str(tmp_path), XDG_STATE_HOME=str(tmp_path / "state"))
    result = run("stat", env=env)
    assert result.returncode == 2
    assert result.stderr == ("greylist: unknown command 'stat'; did you mean 'stats'? "
                             "(greylist --help lists them)\n")
    assert os.listdir(tmp_path) == []
    control = write_control(str(tmp_path / "C"))  # a control file still works without the command
    assert run(control, "--db-dir", str(tmp_path / "db"), env=env).returncode == 75


def test_read_only_commands_never_make_a_store(tmp_path):
    typo = tmp_path / "typo"
    for command in (["stats"], ["show", *TRIPLET], ["export"],
                    ["migrate", "--to-db-dir", str(tmp_path / "copy")]):
        result = run(*command, "--db-dir", str(typo))
        assert result.returncode == 1, command
        assert result.stderr == (f"greylist: no store in {typo} (nothing was greylisted there yet; "
                                 f"does --db-dir or [ttldb] dir name the right directory?)\n")
        assert not typo.exists() and not (tmp_path / "copy").exists()
    for command in ("export", "migrate", "show", "stats"):  # and --help says so
        assert "must hold a store" in run(command, "--help").stdout


def test_root_exports_to_a_file_only_root_may_write(tmp_path, beside_nobody):
    """The file named on the command line is opened before root becomes the store's owner."""
    store, control, nobody = beside_nobody
    os.chown(store, nobody.pw_uid, nobody.pw_gid)
    assert run("check", "--db-dir", str(store), control).returncode == 75
    backup = tmp_path / "backup.jsonl"  # under root's 0700 pytest directory
    result = run("export", "--db-dir", str(store), str(backup))
    assert result.returncode == 0, result.stderr
    assert '"greylist_NotPassed"' in backup.read_text() and backup.stat().st_uid == 0


def test_check_config_says_whether_the_dispatcher_would_start(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    later = tmp_path / "later"
    config = write_config(str(tmp_path / "m.conf"), str(store), learn_only=True,
                          whitelist_files=[str(later)])
    good = run("check-config", "--config", config)
    assert good.returncode == 0, good.stderr
    assert f"  learn_only = True  ({config} [greylist.py] learn_only)" in good.stdout
    assert "  greylist_time = 300  (default)" in good.stdout
    # Under the keys a postmaster writes, in their sections, lists as lists:
    assert (f"[ttldb]\n  type = 'dbm'  ({config} [ttldb] type)\n"
            f"  dir = '{store}'  ({config} [ttldb] dir)\n") in good.stdout
    assert f"  whitelist_files = ['{later}']  (" in good.stdout
    assert f"note: whitelist file {later}: does not exist yet; read when it appears" in good.stdout
    assert f"note: no store in {store} yet: the dispatcher will create it" in good.stdout
    assert good.stdout.endswith("the dispatcher would start and decide normally\n")
    assert os.listdir(store) == [] and not later.exists()  # nothing made

    DbmStore(str(store)).close()
    with open(store / "greylist.lock", "r+b") as lock:
        lock.seek(4)
        lock.write((7).to_bytes(4, "little"))
    foreign = run("check-config", "--config", config)
    assert foreign.returncode == 1
    assert "problem: the store in" in foreign.stderr and "has format 7" in foreign.stderr

    for text, problem in [
        (f"[ttldb]\ndir = '{tmp_path}/nope'\n", f"store directory {tmp_path}/nope does not exist"),
        ("[greylist.py]\nlearn_only = yes\n", "learn_only: write True (with a capital letter), not yes"),
    ]:
        (tmp_path / "bad.conf").write_text(text)
        bad = run("check-config", "--config", str(tmp_path / "bad.conf"))
        assert bad.returncode == 1 and problem in bad.stderr, bad.stderr
    missing = run("check-config", "--config", str(tmp_path / "absent.conf"))
    assert missing.returncode == 1 and "absent.conf: no such configuration file" in missing.stderr


def test_install_and_uninstall_shim(tmp_path):
    config = write_config(str(tmp_path / "m.conf"), str(tmp_path))
    dry = run("install", "--target", str(tmp_path), "--config", config, "--dry-run")
    assert dry.returncode == 0 and dry.stdout.startswith(f"would write {tmp_path}/courier_greylist.py:\n")
    assert repr([config]) in dry.stdout and not (tmp_path / "courier_greylist.py").exists()
    result = run("install", "--target", str(tmp_path), "--config", config)
    assert result.returncode == 0, result.stderr
    shim = (tmp_path / "courier_greylist.py").read_text()
    assert repr([config]) in shim and "def initFilter" in shim
    assert "list 'courier_greylist' in pythonfilter.conf" in result.stdout
    assert run("install", "--target", str(tmp_path), "--name", "greylist").returncode == 1
    dry = run("install", "--target", str(tmp_path), "--uninstall", "--dry-run")
    assert dry.stdout == f"would remove {tmp_path}/courier_greylist.py\n"
    assert (tmp_path / "courier_greylist.py").exists()
    assert run("install", "--target", str(tmp_path), "--uninstall").returncode == 0
    assert not (tmp_path / "courier_greylist.py").exists()
    missing = run("install", "--target", str(tmp_path), "--config", str(tmp_path / "missing.conf"))
    assert missing.returncode == 1 and "no such configuration file; nothing installed" in missing.stderr
    assert not (tmp_path / "courier_greylist.py").exists()


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


# --- the operator's commands (issue 6) --------------------------------------------------

TRIPLET = ["--sender", "alice@example.com", "--recipient", "bob@example.net", "--ip", "192.0.2.10"]


@pytest.mark.parametrize("command", ["check", "check-config", "show", "allow", "delete", "stats", "purge",
                                     "report", "export", "import", "migrate", "install"])
def test_every_command_has_help(command):
    result = run(command, "--help")
    assert result.returncode == 0 and result.stdout.startswith("usage: greylist " + command)


def test_show_allow_delete_as_a_user_types_them(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    config = write_config(str(tmp_path / "m.conf"), str(store), whitelist_recipients=["postmaster@"])
    nothing = run("show", "--config", config, *TRIPLET)  # reads only: no store made up
    assert nothing.returncode == 1 and f"no store in {store} (nothing was greylisted" in nothing.stderr
    assert os.listdir(store) == []

    other = write_control(str(tmp_path / "C0"), "other@example.org")
    assert run("check", "--config", config, other).returncode == 75
    unknown = run("show", "--config", config, *TRIPLET)
    assert unknown.returncode == 0 and "bob@example.net: unknown" in unknown.stdout
    assert "client network 192.0.2.0/24" in unknown.stdout

    control = write_control(str(tmp_path / "C"))
    assert run("check", "--config", config, control).returncode == 75
    pending = run("show", "--config", config, *TRIPLET)
    assert "bob@example.net: pending since" in pending.stdout and "a retry passes from" in pending.stdout
    as_json = json.loads(run("show", "--config", config, "--json", *TRIPLET).stdout)
    assert as_json["triplets"][0]["state"] == "pending"

    allowed = run("allow", "--config", config, *TRIPLET)
    assert allowed.returncode == 0 and "allowed: alice@example.com -> bob@example.net" in allowed.stdout
    assert run("check", "--config", config, control).returncode == 0  # let through now
    assert "passed; last seen" in run("show", "--config", config, *TRIPLET).stdout

    deleted = run("delete", "--config", config, *TRIPLET)
    assert deleted.returncode == 0 and "deleted 1 entry" in deleted.stdout
    assert run("check", "--config", config, control).returncode == 75  # greylisted afresh
    pasted = ["--sender", " <Alice@Example.com>", "--recipient", "<bob@example.net>", "--ip", "192.0.2.10"]
    assert run("allow", "--config", config, *pasted).returncode == 0  # as pasted from a log or header
    assert run("check", "--config", config, control).returncode == 0

    covered = run("show", "--config", config, "--sender", "x@example.org", "--recipient",
                  "postmaster@example.net", "--ip", "203.0.113.1")
    assert "the next message: whitelist (whitelisted:recipient:postmaster@), accepted" in covered.stdout
    assert ("postmaster@example.net: whitelisted:recipient:postmaster@: its messages pass without "
            "greylisting") in covered.stdout
    mixed = run("show", "--config", config, "--sender", "x@example.org", "--recipient",
                "postmaster@example.net", "--recipient", "carol@example.net", "--ip", "203.0.113.1")
    assert ("the next message: greylist (new), reply: 451 4.7.1 Greylisting in action, please come "
            "back in 00:05:00") in mixed.stdout  # carol still waits
    assert "postmaster@example.net: whitelisted:recipient:postmaster@" in mixed.stdout
    assert "carol@example.net: unknown (never seen, or forgotten)" in mixed.stdout
    bad_ip = run("show", "--config", config, "--sender", "a@b", "--recipient", "c@d", "--ip", "nope")
    assert bad_ip.returncode == 1 and "not an IP address" in bad_ip.stderr
    assert run("allow", "--config", config, "--sender", "a@b").returncode == 2  # usage


def test_stats_and_purge(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    config = write_config(str(tmp_path / "m.conf"), str(store), greylist_time=0,
                          auto_whitelist_clients=1, senders_not_passed_ttl=3600)
    for n in range(4):
        control = write_control(str(tmp_path / f"C{n}"), f"s{n}@example.com")
        run("check", "--config", config, control)
    run("check", "--config", config, str(tmp_path / "C0"))  # one passes: the network counts 1
    stats = run("stats", "--config", config, "--json")
    assert stats.returncode == 0, stats.stderr
    tables = json.loads(stats.stdout)["tables"]
    assert tables["greylist_NotPassed"]["entries"] == 3
    assert tables["greylist_Passed"]["entries"] == 1
    assert tables["greylist_AutoWhitelist"]["networks"][0]["network"] == "192.0.2.0/24"
    assert tables["greylist_AutoWhitelist"]["whitelisted_networks"] == 1
    text = run("stats", "--config", config).stdout
    assert "greylist_NotPassed: 3 entries" in text and "< 1 hour" in text
    shown = run("show", "--config", config, "--sender", "s0@example.com", "--recipient", "bob@example.net",
                "--ip", "192.0.2.99").stdout
    assert "auto-whitelist: 192.0.2.0/24: 1 triplets passed" in shown and "auto-whitelisted" in shown

    # age the pending entries past their TTL: exported, aged, imported into an empty store
    # (into the same store the newer entries would win)
    exported = run("export", "--config", config).stdout
    old = "\n".join(json.dumps(dict(row, timestamp=row["timestamp"] - 7200))
                    if row["table"] == "greylist_NotPassed" else json.dumps(row)
                    for row in map(json.loads, exported.splitlines()))
    dump = tmp_path / "dump"
    dump.write_text(old + "\n")
    shutil.rmtree(store)
    store.mkdir()
    assert run("import", "--config", config, str(dump)).returncode == 0
    purged = run("purge", "--config", config)
    assert purged.returncode == 0 and "purged 3 expired entries" in purged.stdout
    tables = json.loads(run("stats", "--config", config, "--json").stdout)["tables"]
    assert tables["greylist_NotPassed"]["entries"] == 0 and tables["greylist_Passed"]["entries"] == 1


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


def test_report_from_files_and_stdin(tmp_path):
    log = tmp_path / "maillog"
    log.write_text(
        "Nov 25 10:00:00 mx courierfilter: greylist: action=greylist, reason=new, "
        "client_address=192.0.2.10, sender=a@example.com, recipients=b@example.net, wait=00:05:00\n"
        "Nov 25 10:07:00 mx courierfilter: greylist: action=pass, reason=passed, "
        "client_address=192.0.2.11, sender=a@example.com, recipients=b@example.net, delay=420\n"
        "Nov 25 10:08:00 mx courierd: unrelated\n")
    result = run("report", str(log))
    assert result.returncode == 0, result.stderr
    assert "2 decisions" in result.stdout
    assert "192.0.2.0/24" in result.stdout and "a@example.com" in result.stdout
    assert "5-10 min        1 #" in result.stdout
    piped = subprocess.run(greylist_command("report", "--json"), input=log.read_text(),
                           capture_output=True, text=True, cwd=REPO, timeout=60)
    assert json.loads(piped.stdout)["actions"] == {"greylist": 1, "pass": 1}
    rotated = tmp_path / "maillog.1.gz"
    rotated.write_bytes(gzip.compress(log.read_bytes()))
    both = run("report", "--json", str(log), str(rotated))
    assert json.loads(both.stdout)["actions"] == {"greylist": 2, "pass": 2}
    leader, follower = pty.openpty()  # a terminal on stdin: refused at once, never waited on
    try:
        waiting = subprocess.run(greylist_command("report"), stdin=follower,
                                 capture_output=True, text=True, cwd=REPO, timeout=30)
    finally:
        os.close(leader)
        os.close(follower)
    assert waiting.returncode == 1 and "or send the log on standard input" in waiting.stderr
    missing = run("report", str(tmp_path / "nope"))
    assert missing.returncode == 1 and "No such file" in missing.stderr
    png = run("report", str(log), "--png", str(tmp_path / "delays.png"))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert png.returncode == 1 and "--png needs matplotlib" in png.stderr
    else:
        assert png.returncode == 0 and (tmp_path / "delays.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_check_explain_names_the_rule(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    config = write_config(str(tmp_path / "m.conf"), str(store), whitelist_clients=["192.0.2.0/24"])
    result = run("check", "--config", config, "--explain", write_control(str(tmp_path / "C")))
    assert result.returncode == 0
    assert "whitelist (whitelisted:client:192.0.2.0/24)" in result.stderr
