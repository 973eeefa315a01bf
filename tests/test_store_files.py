"""The dbm store's file helpers: temporaries of their own, and the sweep of those a killed process left."""

from __future__ import annotations

import os
import subprocess
import sys

from greylist.stores.dbm.files import create_temporary, remove_stale_temporaries, temporary_owner


def test_the_sweep_of_stale_temporaries_spares_live_ones(tmp_path):
    base = str(tmp_path / "greylist_Passed")
    alive = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    try:
        names = {pid: f"greylist_Passed.fold.{pid}.0badcafe" for pid in (os.getpid(), alive.pid, gone.pid)}
        for name in names.values():
            (tmp_path / name).write_bytes(b"half a fold")
        others = [f"greylist_Passed.compact.{gone.pid}.0badcafe",  # another purpose's
                  f"greylist_NotPassed.fold.{gone.pid}.0badcafe",  # another file's
                  "greylist_Passed.fold.notapid.0badcafe"]
        for name in others:
            (tmp_path / name).write_bytes(b"")
        remove_stale_temporaries(base, "fold")
        left = set(os.listdir(tmp_path))
        assert names[os.getpid()] in left and names[alive.pid] in left
        assert names[gone.pid] not in left
        assert set(others) <= left
    finally:
        alive.stdin.close()
        alive.wait()


def test_a_temporary_is_this_operations_own_and_names_its_process(tmp_path):
    base = str(tmp_path / "greylist_Passed")
    first, second = create_temporary(base, "fold"), create_temporary(base, "fold")
    for fd, _ in (first, second):
        os.close(fd)
    assert first[1] != second[1]
    assert temporary_owner(base, os.path.basename(first[1]), "fold") == os.getpid()
    assert temporary_owner(base, os.path.basename(first[1]), "compact") is None
