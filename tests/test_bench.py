"""The benchmark must not rot: a tiny run of it, with no timing assertion."""

import os
import shutil
import subprocess
import sys

import pytest
from helpers import REPO, needs_gdbm


def test_benchmark_smoke_run():
    result = subprocess.run([sys.executable, os.path.join(REPO, "bench", "run.py"), "--quick",
                             "--flavours", "dbm.dumb"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    ours = [line for line in lines if line.split()[2:3] == ["ours"] or " ours " in line]
    assert len(ours) == 14, result.stdout  # 2 sizes x 7 modes
    assert sum(line.startswith(("tmpfs 1 thread ", "tmpfs first 3000 ")) for line in ours) == 4
    assert all("failed" not in line and "capped" not in line for line in ours), result.stdout
    assert any("x " in line for line in ours)  # a ratio against the reference was printed
    # Our background purge was timed: its duration and longest wait are numbers, not "-".
    purges = [line.split() for line in ours if line.startswith("purge")]
    assert len(purges) == 2 and all(row[8] != "-" and row[9] != "-" for row in purges), result.stdout
    assert sum(line.startswith("ours, 4 threads / 1 thread: ") for line in lines) == 2, result.stdout
    for impl in ("ours", "reference"):
        bursts = [line for line in lines if line.startswith(f"{impl}, 4 threads / 1 thread in bursts: ")]
        assert len(bursts) == 2 and all(" pairs of " in line for line in bursts), result.stdout


def test_features_benchmark_smoke_run():
    result = subprocess.run([sys.executable, os.path.join(REPO, "bench", "features.py"), "--seconds", "0.05"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "metrics_file off / on (paired bursts)" in result.stdout
    if "DNS lists: not measured" in result.stdout:  # no rbldnsd here
        assert result.stdout.count("us per decision") == 6
    else:
        assert result.stdout.count("us per decision") == 9
        assert "ms, the longest decision (dns_timeout 2 s)" in result.stdout


def test_replay_smoke_run():
    """A day of the replayed month: a row per setting; the In-Reply-To form lets no forged reply through."""
    result = subprocess.run([sys.executable, os.path.join(REPO, "bench", "replay.py"), "--days", "1"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = [line.split(" | ") for line in result.stdout.splitlines() if line.startswith("| ") and "%" in line]
    assert [row[0] for row in rows][0] == "| defaults" and len(rows) == 7
    assert all(row[-1] == "0 |" for row in rows if "in-reply-to" in row[0] or row[0] == "| defaults")


@needs_gdbm
def test_profile_smoke_run():
    """Where a decision's time goes: both implementations' user and kernel time, ours by phase."""
    result = subprocess.run([sys.executable, os.path.join(REPO, "bench", "profile.py"), "--size", "2000",
                             "--decisions", "300", "--instructions", "0"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    timed = [line for line in lines
             if line.startswith(("ours ", "reference ")) and "us a decision: user" in line]
    assert len(timed) == 4
    assert "ours by phase (us):" in lines and any(line.strip().startswith("take the lock") for line in lines)


@needs_gdbm
def test_profile_counts_instructions():
    """The figure the machine's drift does not move: user-space instructions a decision, both sides."""
    if shutil.which("valgrind") is None:
        pytest.skip("needs valgrind, which counts the instructions")
    result = subprocess.run([sys.executable, os.path.join(REPO, "bench", "profile.py"), "--size", "2000",
                             "--decisions", "100", "--instructions", "50"], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    counted = {line.split()[0]: float(line.split()[1].rstrip("k")) for line in result.stdout.splitlines()
               if "instructions a decision (callgrind" in line}
    assert set(counted) == {"ours", "reference"}
    assert all(10 < thousands < 2000 for thousands in counted.values()), result.stdout
