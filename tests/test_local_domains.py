"""Which domains are ours, as Courier's locals and hosteddomains say (replies are recorded for the others)."""

from __future__ import annotations

import dbm
import os

from greylist.local_domains import LocalDomains


def test_locals_lines_as_courier_reads_them(tmp_path):
    (tmp_path / "locals").write_text("# ours\nexample.org\n!outside.example.net\n.example.net\n")
    domains = LocalDomains(str(tmp_path))
    assert domains.is_local("example.org") and domains.is_local("EXAMPLE.ORG.")
    assert domains.is_local("mail.example.net") and not domains.is_local("outside.example.net")
    assert not domains.is_local("sub.example.org")  # a plain line is that domain only
    assert domains.remote(["a@example.org", "b@remote.example", "postmaster"]) == ("b@remote.example",)


def test_without_locals_me_is_the_local_domain(tmp_path):
    (tmp_path / "me").write_text("mx.example.org\n")
    assert LocalDomains(str(tmp_path)).is_local("mx.example.org")
    assert not LocalDomains(str(tmp_path)).is_local("example.org")


def test_hosted_domains_and_their_subdomains(tmp_path):
    (tmp_path / "locals").write_text("example.org\n")
    with dbm.open(str(tmp_path / "hosteddomains.dat"), "c") as db:
        db[b"hosted.example"] = b"1"
        db[b".wild.example"] = b"1"
    domains = LocalDomains(str(tmp_path))
    assert domains.is_local("hosted.example") and domains.is_local("a.b.wild.example")
    assert not domains.is_local("other.example")


def test_a_changed_locals_is_read_again(tmp_path):
    path = tmp_path / "locals"
    path.write_text("example.org\n")
    domains = LocalDomains(str(tmp_path))
    assert not domains.is_local("example.com")
    path.write_text("example.org\nexample.com\n")
    os.utime(path, ns=(1, 1))  # another time than the first write's, whatever the clock's grain
    assert domains.is_local("example.com")


def test_an_unreadable_locals_keeps_what_was_read_and_says_so_once(tmp_path):
    lines = []
    path = tmp_path / "locals"
    path.write_text("example.org\n")
    domains = LocalDomains(str(tmp_path), lines.append)
    assert domains.is_local("example.org")
    path.unlink()
    os.mkfifo(path)  # a FIFO where the file was: never read (it would block)
    assert domains.is_local("example.org") and domains.is_local("example.org")
    assert len(lines) == 1 and "locals" in lines[0]
