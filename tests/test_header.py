"""The X-Greylist header: one line in front of the message, every other byte unchanged, safe to fail."""

from __future__ import annotations

import os
import subprocess
import sys

import dkim
import pytest
from helpers import Clock, write_control

from greylist import header
from greylist.filter import GreylistFilter
from greylist.settings import Settings, SettingsError, load_settings
from greylist.stores.dbm import DbmStore
from greylist.version import VERSION

NOW = 1_796_558_400.0  # Sun, 06 Dec 2026 12:00:00 UTC
MESSAGE = (b"From: Alice <alice@example.com>\nTo: bob@example.net\nSubject: a  folded\n"
           b" subject line\nContent-Type: text/plain; charset=utf-8\n"
           b"Content-Transfer-Encoding: 8bit\n\nGr\xc3\xbc\xc3\x9fe,  two spaces\tand a tab\n\n.\nend\n")


def test_the_line_as_postgrey_writes_it():
    line = header.header_line("delays", "passed", 421.7, "courier-greylist-1.0 at mx.example.org", NOW)
    assert line == (b"X-Greylist: delayed 421 seconds by courier-greylist-1.0 at mx.example.org; "
                    b"Sun, 06 Dec 2026 12:00:00 +0000\n")
    assert header.header_line("delays", "known", None, "s", NOW) is None
    assert header.header_line("all", "known", None, "s", NOW).startswith(
        b"X-Greylist: not delayed (known sender) by s;")
    assert b"(whitelisted client)" in header.header_line("all", "whitelisted:client:192.0.2.0/24", None, "s",
                                                         NOW)


def test_prepend_changes_no_other_byte(tmp_path):
    path = tmp_path / "D"
    path.write_bytes(MESSAGE)
    os.chmod(path, 0o640)
    inode = os.stat(path).st_ino
    header.prepend(str(path), b"X-Greylist: delayed 1 seconds by s; d\n")
    assert path.read_bytes() == b"X-Greylist: delayed 1 seconds by s; d\n" + MESSAGE
    assert os.stat(path).st_ino == inode and oct(os.stat(path).st_mode & 0o777) == "0o640"  # in place


def _sign(tmp_path) -> tuple:
    key = tmp_path / "key.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
    public = subprocess.run(["openssl", "rsa", "-in", str(key), "-pubout", "-outform", "DER"], check=True,
                            capture_output=True).stdout
    import base64

    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)
    message = MESSAGE.replace(b"\n", b"\r\n")
    signature = dkim.sign(message, b"sel", b"example.com", key.read_bytes(),
                          include_headers=[b"from", b"to", b"subject", b"content-type"])
    # Courier keeps a message file with LF line ends; DKIM is computed over CRLF.
    return (signature + message).replace(b"\r\n", b"\n"), (lambda name, timeout=5: record)


def test_a_dkim_signature_still_verifies(tmp_path):
    signed, dns = _sign(tmp_path)
    path = tmp_path / "D"
    path.write_bytes(signed)
    assert dkim.verify(signed.replace(b"\n", b"\r\n"), dnsfunc=dns)
    header.prepend(str(path), header.header_line("delays", "passed", 300, "courier-greylist at mx", NOW))
    after = path.read_bytes()
    assert after.startswith(b"X-Greylist: delayed 300 seconds") and after.endswith(signed)
    assert dkim.verify(after.replace(b"\n", b"\r\n"), dnsfunc=dns)


FULL = r'''
import os, resource, signal, sys
sys.path.insert(0, {repo!r})
from greylist import header
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the limit answers EFBIG instead of killing
size = os.path.getsize(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (size + int(sys.argv[2]), size + int(sys.argv[2])))
try:
    header.prepend(sys.argv[1], b"X-Greylist: delayed 9 seconds by s; d\n")
except OSError as error:
    print("failed:", error)
'''


@pytest.mark.parametrize("room", [0, 10])  # no room at all; room for part of the line
def test_a_full_disk_leaves_the_message_as_it_was(tmp_path, room):
    path = tmp_path / "D"
    path.write_bytes(MESSAGE)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", FULL.format(repo=repo), str(path), str(room)],
                            capture_output=True, text=True, timeout=60)
    assert "failed:" in result.stdout, result.stderr
    assert path.read_bytes() == MESSAGE


def test_what_is_not_a_message_file_is_refused(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="not a regular file"):
        header.prepend(str(fifo), b"X: y\n")
    target = tmp_path / "target"
    target.write_bytes(MESSAGE)
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(OSError):
        header.prepend(str(link), b"X: y\n")  # a link is never followed
    assert target.read_bytes() == MESSAGE


def _filter(tmp_path, clock, lines, **settings) -> GreylistFilter:
    (tmp_path / "store").mkdir(exist_ok=True)
    return GreylistFilter(Settings(db_dir=str(tmp_path / "store"), greylist_time=300,
                                   x_greylist_host="mx.example.org", **settings),
                          DbmStore(str(tmp_path / "store")), clock=clock, log=lines.append, purge="never")


def test_through_the_filter_delays_and_all(tmp_path):
    clock, lines = Clock(NOW), []
    control = write_control(str(tmp_path / "C"))
    body = tmp_path / "D"
    body.write_bytes(MESSAGE)
    greylist = _filter(tmp_path, clock, lines, x_greylist_header="delays")
    assert greylist.do_filter(str(body), [control]).startswith("451")
    assert body.read_bytes() == MESSAGE  # a greylisted message is not touched
    clock.advance(421)
    assert greylist.do_filter(str(body), [control]) == ""
    assert body.read_bytes() == (f"X-Greylist: delayed 421 seconds by courier-greylist-{VERSION} at "
                                 f"mx.example.org; Sun, 06 Dec 2026 12:07:01 +0000\n").encode() + MESSAGE
    body.write_bytes(MESSAGE)
    assert greylist.do_filter(str(body), [control]) == "" and body.read_bytes() == MESSAGE  # known: none
    greylist.store.close()
    greylist = _filter(tmp_path, clock, lines, x_greylist_header="all")
    assert greylist.do_filter(str(body), [control]) == ""
    assert body.read_bytes().startswith(b"X-Greylist: not delayed (known sender) by courier-greylist-")
    # A message that carries an earlier hop's header keeps it, under ours.
    body.write_bytes(b"X-Greylist: delayed 60 seconds by postgrey at mx.elsewhere\n" + MESSAGE)
    greylist.do_filter(str(body), [control])
    assert body.read_bytes().split(b"\n")[1] == b"X-Greylist: delayed 60 seconds by postgrey at mx.elsewhere"
    greylist.store.close()


def test_a_failed_rewrite_is_one_line_and_changes_no_decision(tmp_path):
    clock, lines = Clock(NOW), []
    greylist = _filter(tmp_path, clock, lines, x_greylist_header="all")
    assert greylist.do_filter(str(tmp_path / "missing"), [write_control(str(tmp_path / "C"), ip=None)]) == ""
    assert [line for line in lines if "X-Greylist header was not added" in line] == lines[-1:]
    greylist.store.close()


def test_the_defaults_touch_no_message(tmp_path):
    clock, lines = Clock(NOW), []
    body = tmp_path / "D"
    body.write_bytes(MESSAGE)
    greylist = _filter(tmp_path, clock, lines)
    greylist.do_filter(str(body), [write_control(str(tmp_path / "C"), ip=None)])
    assert body.read_bytes() == MESSAGE
    greylist.store.close()


def test_settings(tmp_path):
    path = tmp_path / "m.conf"
    path.write_text("[greylist.py]\nx_greylist_header = 'sometimes'\n")
    with pytest.raises(SettingsError, match="expected one of 'none', 'delays', 'all'"):
        load_settings([str(path)])
    path.write_text("[greylist.py]\nx_greylist_host = 'mx 1'\n")
    with pytest.raises(SettingsError, match="not a host name"):
        load_settings([str(path)])
