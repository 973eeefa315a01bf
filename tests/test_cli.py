"""The command line as a user types it."""

from __future__ import annotations

import os

import pytest
from helpers import have_gdbm, write_config, write_control
from helpers import run_greylist as run

from greylist.stores.dbm import DbmStore

GREYLIST = "451 4.7.1 Greylisting in action, please come back in "


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


# --- the operator's commands (issue 6) --------------------------------------------------

TRIPLET = ["--sender", "alice@example.com", "--recipient", "bob@example.net", "--ip", "192.0.2.10"]


@pytest.mark.parametrize("command", ["check", "check-config", "show", "allow", "delete", "stats", "purge",
                                     "report", "export", "import", "migrate", "install"])
def test_every_command_has_help(command):
    result = run(command, "--help")
    assert result.returncode == 0 and result.stdout.startswith("usage: greylist " + command)


def test_check_explain_names_the_rule(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    config = write_config(str(tmp_path / "m.conf"), str(store), whitelist_clients=["192.0.2.0/24"])
    result = run("check", "--config", config, "--explain", write_control(str(tmp_path / "C")))
    assert result.returncode == 0
    assert "whitelist (whitelisted:client:192.0.2.0/24)" in result.stderr


def test_install_with_several_settings_files_reads_each_in_turn(tmp_path):
    from greylist.cli.shim import installed_config_paths
    from greylist.settings import load_settings

    first, second = tmp_path / "pythonfilter-modules.conf", tmp_path / "greylist.conf"
    first.write_text("[greylist.py]\ngreylist_time = 60\nlearn_only = True\n")
    second.write_text("[greylist.py]\ngreylist_time = 120\n")
    result = run("install", "--target", str(tmp_path), "--config", str(first), "--config", str(second))
    assert result.returncode == 0, result.stderr
    paths = installed_config_paths(str(tmp_path))
    assert paths == [str(first), str(second)]
    settings = load_settings(paths)
    assert settings.greylist_time == 120 and settings.learn_only  # the later file's over the earlier's


def test_uninstall_removes_what_python_compiled_of_the_module(tmp_path):
    assert run("install", "--target", str(tmp_path)).returncode == 0
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "courier_greylist.cpython-311.pyc").write_bytes(b"")
    (tmp_path / "__pycache__" / "other.cpython-311.pyc").write_bytes(b"")
    assert run("install", "--target", str(tmp_path), "--uninstall").returncode == 0
    assert sorted(os.listdir(tmp_path / "__pycache__")) == ["other.cpython-311.pyc"]
    assert not (tmp_path / "courier_greylist.py").exists()


def test_every_command_reads_the_settings_files_the_installed_module_names(tmp_path, monkeypatch):
    """Without --config, the files the running filter reads (greylist install --config), for the
    store commands, check-config and the report alike; --config still wins."""
    import argparse

    from greylist.cli import common

    installed = tmp_path / "greylist.conf"
    installed.write_text(f"[greylist.py]\nipv4_prefix = 16\n[ttldb]\ntype = 'dbm'\ndir = '{tmp_path}/db'\n")
    given = tmp_path / "given.conf"
    given.write_text(f"[greylist.py]\nipv4_prefix = 20\n[ttldb]\ntype = 'dbm'\ndir = '{tmp_path}/db'\n")
    monkeypatch.setattr(common, "installed_config_paths", lambda: [str(installed)])
    plain = argparse.Namespace(config=None, db_dir=None)
    assert common.settings_for(plain).ipv4_prefix == 16
    assert common.settings_only(plain).ipv4_prefix == 16  # greylist report's
    named = argparse.Namespace(config=str(given), db_dir=None)
    assert common.settings_for(named).ipv4_prefix == 20
    assert common.settings_only(named).ipv4_prefix == 20
