"""Proven with the real Courier MTA: SMTP in, greylisting reply out.

Run as root; .ci/run runs it after the unit tests.
Run with: python -m pytest -m e2e tests/e2e
"""

from __future__ import annotations

import grp
import gzip
import json
import os
import re
import smtplib
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from courier_rig import PORT, ROOT_PATH, CourierRig, run_block, unavailable
from pgserver import PostgresServer

from greylist.tables import ALL_TABLES

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(bool(unavailable()), reason=unavailable() or "-")]

GREYLIST = "4.7.1 Greylisting in action, please come back in 00:00:00"


@pytest.fixture(scope="module")
def rig():
    courier = CourierRig(greylist_time=0, whitelist_file=True)
    yield courier
    courier.close()


def test_the_install_block_as_written(rig):
    """It ends with greylist status: deciding, with the settings it made readable by Courier only
    (a settings file the host had already keeps its owner and mode, as the README says)."""
    assert "restarted: the dispatcher runs (pid " in rig.install_output
    assert "\ngreylist: deciding since " in rig.install_output
    info = os.stat(rig.config)
    if rig.config_before is None:
        assert oct(info.st_mode & 0o777) == "0o640" and info.st_uid == 0
        assert info.st_gid == grp.getgrnam("courier").gr_gid
    else:
        before = rig.config_before
        assert (info.st_mode, info.st_uid, info.st_gid) == (before.st_mode, before.st_uid, before.st_gid)
    assert os.path.realpath("/usr/local/sbin/greylist") == os.path.join(rig.venv, "bin", "greylist")
    status = subprocess.run(["greylist", "status"], capture_output=True, text=True, timeout=60,
                            env=dict(os.environ, PATH=ROOT_PATH))
    assert status.returncode == 0, status.stdout
    assert f"settings: {rig.config}, unchanged since the start" in status.stdout


def test_new_triplet_gets_4xx_at_end_of_data_then_250(rig):
    mark = rig.log_mark()
    recipient = rig.address("bob")
    assert rig.send("alice@sender.example", recipient) == (451, GREYLIST)
    code, text = rig.send("alice@sender.example", recipient)
    assert code == 250, text
    log = rig.log_since(mark, "action=pass")
    assert "greylist: action=greylist, reason=new, client_address=::ffff:127.0.0.1, " \
           f"sender=alice@sender.example, recipients={recipient}, wait=00:00:00" in log
    assert f"greylist: action=pass, reason=passed, client_address=::ffff:127.0.0.1, " \
           f"sender=alice@sender.example, recipients={recipient}" in log


def test_filter_restart_loses_no_state(rig):
    recipient = rig.address("carol")
    assert rig.send("carol@sender.example", recipient)[0] == 451
    rig.restart_filter()
    assert rig.send("carol@sender.example", recipient)[0] == 250


def test_courier_restart_loses_no_state(rig):
    recipient = rig.address("dave")
    assert rig.send("dave@sender.example", recipient)[0] == 451
    rig.restart_courier()
    assert rig.send("dave@sender.example", recipient)[0] == 250


def test_whitelist_file_edited_while_courier_runs(rig):
    """A client whitelisted by a file edit goes straight through; IPv4-mapped as Courier writes it."""
    recipient = rig.address("erin")
    rig.set_whitelist("client: 127.0.0.0/8\n")
    try:
        mark = rig.log_mark()
        assert rig.send("erin@sender.example", recipient)[0] == 250
        log = rig.log_since(mark, "action=whitelist")
        assert "greylist: action=whitelist, reason=whitelisted:client:127.0.0.0/8, " \
               "client_address=::ffff:127.0.0.1" in log
        assert "whitelist file" in log and "read again" in log
    finally:
        rig.set_whitelist("# empty again\n")
    assert rig.send("frank@sender.example", rig.address("frank"))[0] == 451


def test_dns_lists_through_courier(rig, tmp_path_factory):
    """A client on the DNSWL gets 250 at its first attempt; on a DNSBL, the 451 carries the longer wait."""
    from dnslist_server import WL, Rbldnsd

    lists = Rbldnsd(str(tmp_path_factory.mktemp("zones")))  # its zone lists 127.0.0.1
    try:
        rig.set_settings(f"dnswl_zones = ['{WL}']\ndns_servers = ['{lists.server}']\n")
        mark = rig.log_mark()
        assert rig.send("grace@sender.example", rig.address("grace"))[0] == 250
        assert f"greylist: action=pass, reason=dnswl:{WL}, client_address=::ffff:127.0.0.1" in \
            rig.log_since(mark, "reason=dnswl")
        rig.set_settings(f"dnsbl_zones = ['{WL}']\ndnsbl_greylist_time = 600\n"
                         f"dns_servers = ['{lists.server}']\n")
        mark = rig.log_mark()
        assert rig.send("heidi@sender.example", rig.address("heidi")) == (
            451, "4.7.1 Greylisting in action, please come back in 00:10:00")
        assert f"dnsbl={WL}" in rig.log_since(mark, "action=greylist")
    finally:
        lists.stop()
        rig.set_settings("")


def set_line(rig, key: str, line: str) -> None:
    """Edit the settings file as a postmaster would: the line of ``key`` in [greylist.py] becomes ``line``."""
    with open(rig.config) as handle:
        text = handle.read()
    text = re.sub(rf"^{key} = .*\n", "", text, flags=re.MULTILINE)
    with open(rig.config, "w") as handle:
        handle.write(text.replace("[greylist.py]\n", f"[greylist.py]\n{line}\n", 1))


def test_settings_applied_with_the_documented_command_ten_times_in_a_row(rig):
    """Each time, the next new triplet gets the new greylist_time in its 451."""
    try:
        for n in range(1, 11):
            set_line(rig, "greylist_time", f"greylist_time = {n * 60}")
            applied = run_block("restart")
            assert f"greylisting with the settings of {rig.config}" in applied.stdout
            assert rig.send(f"ten{n}@sender.example", rig.address(f"ten{n}")) == (
                451, f"4.7.1 Greylisting in action, please come back in 00:{n:02d}:00")
    finally:
        set_line(rig, "greylist_time", "greylist_time = 0")
        run_block("restart")


def test_a_bad_setting_is_refused_and_mail_stays_greylisted(rig):
    set_line(rig, "learn_only", "learn_only = yes")
    try:
        refused = run_block("restart", check=False)
        assert refused.returncode == 1
        assert "learn_only: write True (with a capital letter), not yes" in refused.stderr
        assert "nothing restarted: the running filter keeps its settings" in refused.stderr
        assert rig.send("bad@sender.example", rig.address("bad")) == (451, GREYLIST)
    finally:
        set_line(rig, "learn_only", "learn_only = False")
        run_block("restart")


def test_rollback_to_courier_pythonfilters_module_and_back_greylists_nobody_again(rig):
    """A triplet pending under this filter passes at its retry under the reference (its journal was
    folded into the gdbm file as the dispatcher exited), and one pending under the reference passes
    under this filter.  (Each address gets two messages at most: Courier refuses an address for a
    while after a delivery to it failed, and deliveries here go to a dead port.)"""
    ours, theirs = rig.address("rollback-ours"), rig.address("rollback-theirs")
    assert rig.send("ours@sender.example", ours) == (451, GREYLIST)
    try:
        run_block("rollback")
        status = subprocess.run(["greylist", "status"], capture_output=True, text=True, timeout=60,
                                env=dict(os.environ, PATH=ROOT_PATH))
        assert status.returncode == 1 and "greylist: not run by this dispatcher" in status.stdout
        assert rig.send("ours@sender.example", ours)[0] == 250  # the reference found it pending
        assert rig.send("theirs@sender.example", theirs) == (451, GREYLIST)  # and greylists a new one
    finally:
        run_block("return")
    assert rig.send("theirs@sender.example", theirs)[0] == 250  # this filter found it pending
    assert rig.send("new@sender.example", rig.address("rollback-new")) == (451, GREYLIST)


def greylist_command(*args: str) -> subprocess.CompletedProcess:
    """``greylist ARGS`` as root types it."""
    return subprocess.run(["greylist", *args], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PATH=ROOT_PATH))


def test_the_allow_block_lets_its_triplet_through(rig):
    result = run_block("allow")
    assert "allowed: alice@example.com -> bob@example.net from 192.0.2.10" in result.stdout
    shown = greylist_command("show", "--sender", "alice@example.com", "--recipient", "bob@example.net",
                             "--ip", "192.0.2.10")
    assert "bob@example.net: passed; last seen" in shown.stdout, shown.stdout


def test_the_backup_block_writes_every_entry_and_reads_them_back(rig):
    assert rig.send("backup@sender.example", rig.address("backup"))[0] == 451  # something to back up
    result = run_block("backup")
    with gzip.open("/var/backups/greylist.jsonl.gz", "rt") as handle:
        saved = [json.loads(line) for line in handle]
    assert saved and {entry["table"] for entry in saved} <= set(ALL_TABLES)  # (earlier tests' tables too)
    assert f"exported {len(saved):,} entries" in result.stderr
    assert f"imported {len(saved):,} entries" in result.stderr


def test_the_migrate_block_copies_the_store_into_postgresql_twice_without_change(rig, tmp_path):
    """The database (a server of the test's own) and its [ttldb] in a file of its own, as the
    README says; then its migrate block, as written, and once more."""
    server = PostgresServer()
    try:
        info = server.conninfo()
        with open("/etc/greylist-pg.conf", "w") as handle:
            handle.write("[ttldb]\ntype = 'psycopg2'\n" + "".join(f"{k} = {v!r}\n" for k, v in info.items()))
        assert rig.send("migrate@sender.example", rig.address("migrate"))[0] == 451
        first = run_block("migrate")
        second = run_block("migrate")
        copied = re.search(r"copied ([\d,]+) entries", first.stderr).group(1)
        assert int(copied.replace(",", "")) > 0 and f"copied {copied} entries" in second.stderr
        exported = greylist_command("export", "--config", "/etc/greylist-pg.conf")
        assert exported.returncode == 0, exported.stderr
        assert len(exported.stdout.splitlines()) == int(copied.replace(",", ""))
    finally:
        server.close()


def _set_esmtpd(name: str, value: str) -> None:
    with open("/etc/courier/esmtpd") as handle:
        text = handle.read()
    with open("/etc/courier/esmtpd", "w") as handle:
        handle.write(re.sub(rf"^{name}=.*$", f"{name}={value}", text, flags=re.MULTILINE))


def test_replies_to_our_users_mail_pass_at_their_first_attempt(rig):
    """Our users write out through SMTP AUTH and the local sendmail; the replies get 250 at once."""
    user, password = f"gl{rig.token}", "e2e-" + rig.token
    subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", user], check=True)
    try:
        subprocess.run(["chpasswd"], input=f"{user}:{password}\n", text=True, check=True)
        _set_esmtpd("ESMTPAUTH", '"LOGIN PLAIN"')
        subprocess.run(["esmtpd", "stop"], check=False)
        subprocess.run(["esmtpd", "start"], check=True)
        rig.wait_ready()
        run_block("replies")
        rig.set_settings("skip_authenticated = True\nwhitelist_replies = True\n")
        alice, carol = rig.address("replies-alice"), f"carol-{rig.token}@remote.example"
        mark = rig.log_mark()
        client = smtplib.SMTP("127.0.0.1", PORT, timeout=30)
        try:
            client.ehlo("client.example.org")
            client.login(user, password)
            client.sendmail(alice, [carol], b"Subject: out\r\n\r\nhello\r\n")
        finally:
            client.quit()
        assert f"action=whitelist, reason=authenticated, client_address=::ffff:127.0.0.1, " \
               f"sender={alice}, recipients={carol}" in rig.log_since(mark, "reason=authenticated")
        code, text = rig.send(carol, alice)  # its first attempt
        assert code == 250, text
        assert f"action=whitelist, reason=reply, client_address=::ffff:127.0.0.1, sender={carol}" \
            in rig.log_since(mark, "reason=reply")
        dave, erin = rig.address("replies-dave"), f"erin-{rig.token}@remote.example"
        mark = rig.log_mark()
        sent = subprocess.run(["/usr/sbin/sendmail", "-f", dave, erin], input=b"Subject: out\n\nhi\n",
                              capture_output=True, timeout=60)
        assert sent.returncode == 0, sent.stderr
        assert f"action=whitelist, reason=local, client_address=127.0.0.1, client_name=localhost, " \
               f"sender={dave}, recipients={erin}" in rig.log_since(mark, "reason=local")
        code, text = rig.send(erin, dave)
        assert code == 250, text
        assert f"action=whitelist, reason=reply, client_address=::ffff:127.0.0.1, sender={erin}" \
            in rig.log_since(mark, f"sender={erin}")
    finally:
        rig.set_settings("")
        subprocess.run(["userdel", user], check=False)
        _set_esmtpd("ESMTPAUTH", '""')
        subprocess.run(["esmtpd", "stop"], check=False)
        subprocess.run(["esmtpd", "start"], check=True)
        rig.wait_ready()


class _SmtpSink:
    """A mail server on loopback that keeps what Courier delivers to it, as a Maildir's new/ files."""

    def __init__(self, maildir: Path) -> None:
        self.maildir = maildir
        for sub in ("tmp", "new", "cur"):
            (maildir / sub).mkdir(parents=True, exist_ok=True)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            with connection, connection.makefile("rb") as incoming:
                connection.sendall(b"220 sink.example ESMTP\r\n")
                for line in incoming:
                    verb = line[:4].upper()
                    if verb == b"DATA":
                        connection.sendall(b"354 go on\r\n")
                        data = b""
                        for body_line in incoming:
                            if body_line == b".\r\n":
                                break
                            data += body_line[1:] if body_line.startswith(b"..") else body_line
                        name = f"{time.time():.6f}.sink"
                        (self.maildir / "tmp" / name).write_bytes(data)
                        os.rename(self.maildir / "tmp" / name, self.maildir / "new" / name)
                        connection.sendall(b"250 kept\r\n")
                    elif verb == b"QUIT":
                        connection.sendall(b"221 bye\r\n")
                        break
                    elif verb == b"EHLO":
                        connection.sendall(b"250-sink.example\r\n250 8BITMIME\r\n")
                    else:
                        connection.sendall(b"250 ok\r\n")

    def close(self) -> None:
        self.server.close()


def test_the_x_greylist_header_leaves_a_dkim_signature_valid(rig, tmp_path):
    """A signed message waits, passes, and is delivered with the header and a valid signature.

    Courier on this rig refuses every local mailbox at RCPT ("513 Syntax error"), so the
    message goes out as it would to the next hop: Courier's own esmtp delivery, routed for one
    domain to a server on loopback that keeps each message as a Maildir file.
    """
    import base64

    import dkim

    sink = _SmtpSink(tmp_path / "Maildir")
    domain = f"dkim-{rig.token}.example"
    with open("/etc/courier/esmtproutes") as handle:
        routes = handle.read()
    try:
        with open("/etc/courier/esmtproutes", "w") as handle:
            handle.write(f"{domain}: [127.0.0.1],{sink.port}\n" + routes)
        with open("/etc/courier/esmtpacceptmailfor.dir/greylist-e2e", "a") as handle:
            handle.write(f"{domain}\n")
        subprocess.run(["makeacceptmailfor"], check=True)
        rig.set_settings("x_greylist_header = 'delays'\nx_greylist_host = 'mx.example.org'\n")
        key = tmp_path / "key.pem"
        subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
        public = subprocess.run(["openssl", "rsa", "-in", str(key), "-pubout", "-outform", "DER"],
                                check=True, capture_output=True).stdout
        record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)
        mailbox = f"bob@{domain}"
        message = (f"From: Alice <alice@sender.example>\r\nTo: {mailbox}\r\nSubject: signed\r\n"
                   f"Date: Sun, 06 Dec 2026 12:00:00 +0000\r\nMessage-ID: <{rig.token}@sender.example>\r\n"
                   f"\r\nHello,\r\n\r\nthis message is signed.\r\n").encode()
        signed = dkim.sign(message, b"sel", b"sender.example", key.read_bytes(),
                           include_headers=[b"from", b"to", b"subject", b"date", b"message-id"]) + message
        for expected in (451, 250):
            client = smtplib.SMTP("127.0.0.1", PORT, timeout=30)
            try:
                client.ehlo("client.example.org")
                client.mail("alice@sender.example")
                assert client.rcpt(mailbox)[0] == 250
                code, _ = client.data(signed)
                assert code == expected
            finally:
                client.quit()
        new = tmp_path / "Maildir" / "new"
        deadline = time.monotonic() + 30  # delivery is Courier's, after the 250
        while not os.listdir(new) and time.monotonic() < deadline:
            time.sleep(0.1)
        delivered = (new / os.listdir(new)[0]).read_bytes()
        ours = rb"(^|\n)X-Greylist: delayed \d+ seconds by courier-greylist-\S+ at mx.example.org; "
        assert re.search(ours, delivered), delivered[:600]
        assert dkim.verify(delivered.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"),
                           dnsfunc=lambda name, timeout=5: record)
    finally:
        sink.close()
        with open("/etc/courier/esmtproutes", "w") as handle:
            handle.write(routes)
        rig.set_settings("")
