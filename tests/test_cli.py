"""The command line as a user types it."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from helpers import REPO, write_config, write_control

GREYLIST = "451 4.7.1 Greylisting in action, please come back in "
STANDARD_CONFIGS = ["/etc/pythonfilter-modules.conf", "/usr/local/etc/pythonfilter-modules.conf"]


def run(*args, env=None, check_output=True):
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "greylist", *args], capture_output=True, text=True,
                          env=full_env, cwd=REPO, timeout=60)


def test_check_greylists_then_passes(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    config = write_config(str(tmp_path / "m.conf"), str(store), greylist_time=0)
    control = write_control(str(tmp_path / "C"))
    first = run("check", "--config", config, control)
    assert (first.returncode, first.stdout) == (75, GREYLIST + "00:00:00\n")
    assert f"store: dbm.{'gnu' if _gdbm() else 'dumb'} in {store}" in first.stderr
    second = run("check", "--config", config, "--explain", control)
    assert (second.returncode, second.stdout) == (0, "\n")
    assert "action=pass, reason=passed" in second.stderr


def _gdbm():
    try:
        import dbm.gnu  # noqa: F401
    except ImportError:
        return False
    return True


def test_module_form_and_db_dir(tmp_path):
    control = write_control(str(tmp_path / "C"))
    result = run(control, "--db-dir", str(tmp_path))
    assert result.returncode == 75 and result.stdout.startswith(GREYLIST + "00:05:00")
    assert os.path.exists(tmp_path / "greylist.lock")


@pytest.mark.skipif(any(os.path.exists(p) for p in STANDARD_CONFIGS),
                    reason="a system pythonfilter-modules.conf exists here")
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


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_root_acts_as_store_owner(tmp_path):
    nobody = pwd.getpwnam("nobody")
    tmp_path = Path(tempfile.mkdtemp(prefix="greylist-root-test-", dir="/tmp"))
    os.chmod(tmp_path, 0o755)
    store = tmp_path / "store"
    store.mkdir()
    os.chown(store, nobody.pw_uid, nobody.pw_gid)
    control = write_control(str(tmp_path / "C"))
    os.chmod(control, 0o644)
    result = run("check", "--db-dir", str(store), control)
    assert result.returncode == 75, result.stderr
    try:
        for name in os.listdir(store):
            assert os.stat(store / name).st_uid == nobody.pw_uid, name
        assert len(os.listdir(store)) >= 3
    finally:
        shutil.rmtree(tmp_path)


def test_install_and_uninstall_shim(tmp_path):
    config = write_config(str(tmp_path / "m.conf"), str(tmp_path))
    result = run("install", "--target", str(tmp_path), "--config", config)
    assert result.returncode == 0, result.stderr
    shim = (tmp_path / "courier_greylist.py").read_text()
    assert repr([config]) in shim and "def initFilter" in shim
    assert "list 'courier_greylist' in pythonfilter.conf" in result.stdout
    assert run("install", "--target", str(tmp_path), "--name", "greylist").returncode == 1
    assert run("install", "--target", str(tmp_path), "--uninstall").returncode == 0
    assert not (tmp_path / "courier_greylist.py").exists()


def test_export_import_roundtrip(tmp_path):
    source, target = tmp_path / "a", tmp_path / "b"
    for n in range(3):
        run("check", "--db-dir", str(source), write_control(str(tmp_path / f"C{n}"), f"s{n}@example.com"))
    exported = run("export", "--db-dir", str(source))
    assert exported.returncode == 0 and "exported 3 entries" in exported.stderr
    rows = [json.loads(line) for line in exported.stdout.splitlines()]
    assert {row["store"] for row in rows} == {"greylist_NotPassed"} and len(rows) == 3
    dump = tmp_path / "dump.jsonl"
    dump.write_text(exported.stdout)
    imported = run("import", "--db-dir", str(target), str(dump))
    assert imported.returncode == 0 and "imported 3 entries" in imported.stderr
    again = run("export", "--db-dir", str(target))
    assert sorted(again.stdout.splitlines()) == sorted(exported.stdout.splitlines())
    dump.write_text('{"store": "nope"}\n')
    bad = run("import", "--db-dir", str(target), str(dump))
    assert bad.returncode == 1 and "line 1: not an entry of an export" in bad.stderr


def test_migrate_between_dbm_directories(tmp_path):
    source, target = tmp_path / "a", tmp_path / "b"
    control = write_control(str(tmp_path / "C"))
    run("check", "--db-dir", str(source), control)
    assert run("migrate", "--db-dir", str(source)).returncode == 1
    moved = run("migrate", "--db-dir", str(source), "--to-db-dir", str(target))
    assert moved.returncode == 0 and "copied 1 entries" in moved.stderr
    assert run("export", "--db-dir", str(target)).stdout == run("export", "--db-dir", str(source)).stdout
