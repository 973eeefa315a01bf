"""Root at the command line works on a store as its owner, on both sides of a copy, and never
reads it through a link its owner (or anyone writing there) planted.  Files a command reads or
writes by name on the command line are opened as the user who named them."""

from __future__ import annotations

import os
import subprocess

import pytest
from host import greylist_command

from greylist.stores.dbm import DbmStore

SECRET = b"1790000042" * 60


def run(*args):
    return subprocess.run(greylist_command(*args), capture_output=True, text=True, timeout=60)


def owned_by(directory, uid) -> bool:
    return all(os.stat(os.path.join(directory, name), follow_symlinks=False).st_uid == uid
               for name in os.listdir(directory)) and os.stat(directory).st_uid == uid


@pytest.fixture
def nobodys_store(beside_nobody):
    """A store of the nobody user's, with one pending triplet in it."""
    store, control, nobody = beside_nobody
    os.chown(store, nobody.pw_uid, nobody.pw_gid)
    assert run("check", "--db-dir", str(store), control).returncode == 75
    assert owned_by(store, nobody.pw_uid)
    return store, nobody


def test_root_migrates_into_a_new_directory_made_for_the_sources_owner(nobodys_store):
    store, nobody = nobodys_store
    copy = store.parent / "copy"
    result = run("migrate", "--db-dir", str(store), "--to-db-dir", str(copy))
    assert result.returncode == 0, result.stderr
    assert "copied 1 entries" in result.stderr
    assert owned_by(copy, nobody.pw_uid) and oct(copy.stat().st_mode & 0o777) == "0o700"


def test_root_never_reads_a_store_through_a_link_its_owner_planted(nobodys_store, tmp_path):
    """Two defences, each enough here: root reads the store as its owner, and no store file is
    opened through a link.  The secret looks like a time, so that a copy would keep it."""
    store, nobody = nobodys_store
    secret = tmp_path / "secret"  # root's, in root's own directory
    secret.write_bytes(SECRET * 100)
    os.chmod(secret, 0o600)
    DbmStore(str(store), flavour="dbm.dumb").close()
    for table in ("greylist_Passed", "greylist_NotPassed"):
        data = store / f"{table}.dat"
        if data.exists():
            os.unlink(data)
        os.symlink(secret, data)
    copy = store.parent / "copy"
    result = run("migrate", "--db-dir", str(store), "--to-db-dir", str(copy))
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    for directory, _, names in os.walk(store.parent):
        for name in names:
            path = os.path.join(directory, name)
            if not os.path.islink(path):
                with open(path, "rb") as handle:
                    assert SECRET[:10] not in handle.read(), path
    for command in (["export", "--db-dir", str(store)], ["stats", "--db-dir", str(store)]):
        refused = run(*command)
        assert refused.returncode == 1 and SECRET[:10].decode() not in refused.stdout


def test_a_copy_between_stores_of_two_owners_is_refused(nobodys_store):
    store, nobody = nobodys_store
    other = store.parent / "roots"
    other.mkdir(mode=0o700)
    DbmStore(str(other)).close()  # root's own
    result = run("migrate", "--db-dir", str(store), "--to-db-dir", str(other))
    assert result.returncode == 1
    assert f"the source store belongs to uid {nobody.pw_uid}, the destination to uid 0" in result.stderr


def test_root_imports_a_file_only_root_may_read(nobodys_store, tmp_path):
    store, nobody = nobodys_store
    backup = tmp_path / "backup.jsonl"  # under root's 0700 pytest directory
    exported = run("export", "--db-dir", str(store), str(backup))
    assert exported.returncode == 0, exported.stderr
    os.chmod(backup, 0o600)
    fresh = store.parent / "fresh"
    fresh.mkdir()
    os.chown(fresh, nobody.pw_uid, nobody.pw_gid)
    result = run("import", "--db-dir", str(fresh), str(backup))
    assert result.returncode == 0, result.stderr
    assert "imported 1 entries" in result.stderr and owned_by(fresh, nobody.pw_uid)
