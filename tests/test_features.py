"""Every policy setting beyond the reference, through do_filter on real control files and stores."""

from __future__ import annotations

import dbm
import os
import shutil
import subprocess
import sys

import pytest
from helpers import Clock, needs_gdbm, write_control

from greylist.filter import GreylistFilter
from greylist.relay import SmtpAccessError
from greylist.settings import Settings
from greylist.stores import AUTO_WHITELIST_TABLE, NOT_PASSED_TABLE, PASSED_TABLE
from greylist.stores.dbm import DbmStore
from greylist.tables import wanted_tables
from greylist.whitelist_files import WhitelistFileError, builtin_names, resolve

GREYLIST = "451 4.7.1 Greylisting in action, please come back in "


@pytest.fixture
def env(tmp_path):
    class Env:
        clock = Clock()
        lines: list = []
        store_dir = tmp_path / "store"
        dir = tmp_path
        count = 0

        def filter(self, **overrides):
            self.store_dir.mkdir(exist_ok=True)
            settings = Settings(db_dir=str(self.store_dir), **overrides)
            self.store = DbmStore(str(self.store_dir), tables=wanted_tables(settings))
            return GreylistFilter(settings, self.store, clock=self.clock, log=self.lines.append,
                                  purge="never")

        def control(self, **kwargs):
            self.count += 1
            return write_control(str(tmp_path / f"C{self.count}"), **kwargs)

        def body(self, text: str):
            self.count += 1
            path = tmp_path / f"D{self.count}"
            path.write_bytes(text.encode())
            return str(path)

    e = Env()
    yield e
    if hasattr(e, "store"):
        e.store.close()


def entries(store, table):
    return dict(store.items(table))


# --- whitelists -------------------------------------------------------------------


@pytest.mark.parametrize("entry, ip, name, listed", [
    ("192.0.2.10", "192.0.2.10", None, True),
    ("192.0.2.10", "192.0.2.11", None, False),
    ("192.0.2.0/24", "::ffff:192.0.2.77", None, True),
    ("198.51.100.0/22", "198.51.103.1", None, True),
    ("198.51.100.0/22", "198.51.104.1", None, False),
    ("2001:db8:1::/48", "2001:db8:1:ffff::1", None, True),
    ("2001:db8:1::/48", "2001:db8:2::1", None, False),
    ("mail-ed1-f41.google.com", "203.0.113.5", "MAIL-ed1-f41.google.com", True),
    (".google.com", "203.0.113.5", "mail-ed1-f41.google.com", True),
    (".google.com", "203.0.113.5", "google.com", True),
    (".google.com", "203.0.113.5", "evilgoogle.com", False),
    (".google.com", "203.0.113.5", "google.com.evil.example", False),
    (".google.com", "203.0.113.5", None, False),
])
def test_whitelist_clients(env, entry, ip, name, listed):
    f = env.filter(whitelist_clients=(entry,))
    reply = f.do_filter("", [env.control(ip=ip, client_name=name)])
    if listed:
        assert reply == ""
        assert f"action=whitelist, reason=whitelisted:client:{entry}," in env.lines[-1]
        assert entries(env.store, NOT_PASSED_TABLE) == {}  # whitelisted mail leaves no trace
    else:
        assert reply.startswith(GREYLIST)


def test_whitelist_senders(env):
    f = env.filter(whitelist_senders=("boss@example.com", "@lists.example.org", "@.partner.example"))
    for sender in ("Boss@Example.com", "news@lists.example.org", "x@mail.partner.example",
                   "y@partner.example"):
        assert f.do_filter("", [env.control(sender=sender)]) == ""
        assert "action=whitelist, reason=whitelisted:sender:" in env.lines[-1]
    for sender in ("other@example.com", "news@sub.lists.example.org", "x@notpartner.example"):
        assert f.do_filter("", [env.control(sender=sender)]).startswith(GREYLIST)


def test_whitelist_recipients_all_or_the_rest_still_waits(env):
    f = env.filter(whitelist_recipients=("postmaster@", "abuse@example.net", "@vip.example.net"))
    for recipient in ("postmaster@example.net", "POSTMASTER@other.example", "abuse@example.net",
                      "ceo@vip.example.net"):
        assert f.do_filter("", [env.control(recipients=[recipient])]) == ""
        assert "reason=whitelisted:recipient:" in env.lines[-1]
    # A whitelisted recipient does not carry the others through: a spammer adding
    # postmaster@ to every message would otherwise skip greylisting.
    path = env.control(recipients=["postmaster@example.net", "bob@example.net"])
    assert f.do_filter("", [path]).startswith(GREYLIST)
    assert "whitelisted_recipients=1" in env.lines[-1]
    assert len(entries(env.store, NOT_PASSED_TABLE)) == 1  # only bob's triplet
    env.clock.advance(301)
    assert f.do_filter("", [path]) == ""


def test_whitelist_files_reread_when_changed(env):
    listing = env.dir / "whitelist"
    listing.write_text("# clients\n198.51.100.0/24\nsender: @example.com\nbogus entry here\n")
    f = env.filter(whitelist_files=(str(listing),))
    assert any("whitelist:4: 'bogus entry here' is not" in line for line in env.lines)
    assert f.do_filter("", [env.control(ip="198.51.100.9", sender="x@else.example")]) == ""
    assert f.do_filter("", [env.control(ip="203.0.113.9")]) == ""  # sender @example.com
    assert f.do_filter("", [env.control(ip="203.0.113.9", sender="x@else.example")]).startswith(GREYLIST)

    listing.write_text("recipient: bob@example.net\n")  # a change of size and time
    os.utime(listing, ns=(1, 1))
    assert f.do_filter("", [env.control(ip="198.51.100.9", sender="y@else.example")]) == ""
    assert "reason=whitelisted:recipient:bob@example.net" in env.lines[-1]
    assert f.do_filter("", [env.control(ip="198.51.100.9", sender="y@else.example",
                                        recipients=["carol@example.net"])]).startswith(GREYLIST)

    listing.unlink()  # gone: the last entries stay, one line says so
    for _ in range(3):
        assert f.do_filter("", [env.control(sender="z@else.example")]) == ""
    assert sum("cannot read it any more" in line for line in env.lines) == 1


def test_a_whitelist_file_that_does_not_exist_yet_is_read_when_it_appears(env):
    listing = env.dir / "later"
    f = env.filter(whitelist_files=(str(listing),))  # mail is not stopped for it
    assert env.lines == [f"greylist: whitelist file {listing}: does not exist yet; read when it appears"]
    for _ in range(2):
        assert f.do_filter("", [env.control(ip="198.51.100.9")]).startswith(GREYLIST)
    assert len(env.lines) == 3  # no line per message about the file
    listing.write_text("198.51.100.0/24\n")
    assert f.do_filter("", [env.control(ip="198.51.100.9")]) == ""
    assert "action=whitelist, reason=whitelisted:client:198.51.100.0/24" in env.lines[-1]


def test_an_unreadable_whitelist_file_stops_start(env):
    (env.dir / "adirectory").mkdir()
    with pytest.raises(WhitelistFileError,
                       match="whitelist file .*/adirectory: not a regular file, but a directory"):
        env.filter(whitelist_files=(str(env.dir / "adirectory"),))


def test_builtin_pool_senders(env):
    assert "pool-senders" in builtin_names()
    assert os.path.exists(resolve("builtin:pool-senders"))
    f = env.filter(whitelist_files=("builtin:pool-senders",))
    assert not [line for line in env.lines if "ignored" in line]  # the shipped file is clean
    reply = f.do_filter("", [env.control(client_name="mail-eopbgr80052.outbound.protection.outlook.com")])
    assert reply == ""
    assert "reason=whitelisted:client:.outbound.protection.outlook.com" in env.lines[-1]


# --- auto-whitelisting ----------------------------------------------------------------


def test_auto_whitelist_after_passes_until_silent(env):
    f = env.filter(auto_whitelist_clients=2, greylist_time=300, senders_passed_ttl=86400)

    def pass_one(sender):
        path = env.control(sender=sender, ip="192.0.2.10")
        assert f.do_filter("", [path]).startswith(GREYLIST)
        env.clock.advance(301)
        assert f.do_filter("", [path]) == ""

    pass_one("a@example.com")
    # one pass counted: a new sender from the network still waits
    assert f.do_filter("", [env.control(sender="b@example.com")]).startswith(GREYLIST)
    pass_one("c@example.com")
    record = dict((k, (t, c)) for k, t, c in env.store.counted_items(AUTO_WHITELIST_TABLE))
    assert record["192.0.2.0/24"][1] == 2
    # now any sender from 192.0.2.0/24 goes through, and leaves no triplet behind
    pending = len(entries(env.store, NOT_PASSED_TABLE))
    assert f.do_filter("", [env.control(sender="new@example.org", ip="192.0.2.200")]) == ""
    assert "action=whitelist, reason=auto-whitelisted" in env.lines[-1]
    assert len(entries(env.store, NOT_PASSED_TABLE)) == pending
    # other networks are not affected
    assert f.do_filter("", [env.control(sender="new@example.org", ip="192.0.3.1")]).startswith(GREYLIST)
    # silent for longer than senders_passed_ttl: counting starts again
    env.clock.advance(86400 + 1)
    assert f.do_filter("", [env.control(sender="new2@example.org", ip="192.0.2.5")]).startswith(GREYLIST)


@pytest.mark.parametrize("ipv6_prefix, network, inside, outside", [
    (48, "2001:db8:1::/48", "2001:db8:1:ffff::9", "2001:db8:2::1"),
    (64, "2001:db8:1::/64", "2001:db8:1:0:ffff::9", "2001:db8:1:1::1"),
])
def test_auto_whitelist_of_ipv6_clients_covers_ipv6_prefix_only(env, ipv6_prefix, network, inside, outside):
    f = env.filter(auto_whitelist_clients=1, greylist_time=0, ipv6_prefix=ipv6_prefix)
    path = env.control(ip="2001:db8:1::1")
    assert f.do_filter("", [path]).startswith(GREYLIST)
    assert f.do_filter("", [path]) == ""
    assert [(key, count) for key, _, count in env.store.counted_items(AUTO_WHITELIST_TABLE)] == [(network, 1)]
    assert f.do_filter("", [env.control(sender="new@example.org", ip=inside)]) == ""
    assert "action=whitelist, reason=auto-whitelisted" in env.lines[-1]
    assert f.do_filter("", [env.control(sender="new@example.org", ip=outside)]).startswith(GREYLIST)


def test_auto_whitelist_counts_different_triplets_only(env):
    f = env.filter(auto_whitelist_clients=2, greylist_time=0)
    path = env.control()
    f.do_filter("", [path])
    for _ in range(5):  # the same triplet again and again is one pass
        assert f.do_filter("", [path]) == ""
    [(network, _, passes)] = list(env.store.counted_items(AUTO_WHITELIST_TABLE))
    assert (network, passes) == ("192.0.2.0/24", 1)


def test_auto_whitelist_off_creates_no_table(env):
    f = env.filter()
    f.do_filter("", [env.control()])
    assert AUTO_WHITELIST_TABLE not in env.store.tables
    assert not any(name.startswith(AUTO_WHITELIST_TABLE) for name in os.listdir(env.store_dir))


def test_auto_whitelist_purged_with_passed_ttl(env):
    f = env.filter(auto_whitelist_clients=1, greylist_time=0, senders_passed_ttl=1000)
    path = env.control()
    f.do_filter("", [path])
    f.do_filter("", [path])
    assert len(list(env.store.counted_items(AUTO_WHITELIST_TABLE))) == 1
    env.clock.advance(1001)
    assert f.purge(env.clock()) >= 1
    assert list(env.store.counted_items(AUTO_WHITELIST_TABLE)) == []


# --- smarter triplets -------------------------------------------------------------------


def test_normalize_senders_shares_a_triplet(env):
    f = env.filter(normalize_senders=True)
    assert f.do_filter("", [env.control(sender="list-bounces-1234@lists.example.org")]).startswith(GREYLIST)
    env.clock.advance(301)
    assert f.do_filter("", [env.control(sender="list-bounces-5678@lists.example.org")]) == ""
    assert f.do_filter("", [env.control(sender="prvs=0123abcdef=list-bounces-9@lists.example.org")]) == ""


def test_normalize_senders_off_keeps_reference_keys(env):
    f = env.filter()
    f.do_filter("", [env.control(sender="list-bounces-1234@lists.example.org")])
    env.clock.advance(301)
    assert f.do_filter("", [env.control(sender="list-bounces-5678@lists.example.org")]).startswith(GREYLIST)


COURIER_SPF = (
    "Received-SPF: pass (example.com: 192.0.2.10 is authorized to use 'alice@example.com' in "
    "'mfrom' identity (mechanism 'ip4:192.0.2.0/24' matched))\n"
    "  SPF=MAILFROM;\n  sender=alice@example.com;\n  remoteip=::ffff:{ip};\n"
    "  remotehost=mx.example.org;\n  helo=helo.example.org;\n  receiver=mx.local;\n"
)
RECEIVED = ("Received: from helo.example.org (mx.example.org [::ffff:{ip}])\n"
            "  by mx.local with ESMTP; Wed, 25 Nov 2026 14:00:00 +0000\n  id 000A.0001\n")


def test_spf_triplets_follow_a_pool_to_another_network(env):
    f = env.filter(spf_triplets=True)
    first = env.body((COURIER_SPF + RECEIVED).format(ip="192.0.2.10") + "Subject: x\n\nbody\n")
    assert f.do_filter(first, [env.control(ip="192.0.2.10")]).startswith(GREYLIST)
    assert "spf_domain=example.com" in env.lines[-1]
    env.clock.advance(301)
    retry = env.body((COURIER_SPF + RECEIVED).format(ip="198.51.100.20") + "Subject: x\n\nbody\n")
    assert f.do_filter(retry, [env.control(ip="198.51.100.20")]) == ""


@pytest.mark.parametrize("body", [
    # the client's own header, below Courier's Received line: not believed
    RECEIVED + COURIER_SPF + "Subject: x\n\n",
    # a verdict on HELO, not on MAIL FROM
    COURIER_SPF.replace("SPF=MAILFROM", "SPF=HELO") + RECEIVED + "\n",
    # for another sender
    COURIER_SPF.replace("sender=alice@example.com", "sender=mallory@example.com") + RECEIVED + "\n",
    COURIER_SPF.replace("Received-SPF: pass", "Received-SPF: softfail") + RECEIVED + "\n",
    "",
])
def test_spf_triplets_need_courier_pass_for_the_sender(env, body):
    f = env.filter(spf_triplets=True)
    path = env.body(body.format(ip="192.0.2.10"))
    f.do_filter(path, [env.control(ip="192.0.2.10")])
    assert "spf_domain" not in env.lines[-1]
    env.clock.advance(301)
    assert f.do_filter(env.body(body.format(ip="198.51.100.20")),
                       [env.control(ip="198.51.100.20")]).startswith(GREYLIST)


def test_spf_triplets_missing_body_falls_back_to_network(env):
    f = env.filter(spf_triplets=True)
    assert f.do_filter(str(env.dir / "no-such-D"), [env.control()]).startswith(GREYLIST)
    assert "spf_domain" not in env.lines[-1]


# --- skipping, learning, replies, logs --------------------------------------------------


def test_skip_authenticated(env):
    f = env.filter(skip_authenticated=True)
    assert f.do_filter("", [env.control(auth_user="alice")]) == ""
    assert "action=whitelist, reason=authenticated" in env.lines[-1]
    assert f.do_filter("", [env.control()]).startswith(GREYLIST)
    g = env.filter()
    assert g.do_filter("", [env.control(auth_user="alice", sender="other@example.com")]).startswith(GREYLIST)


SMTPACCESS = "192.168\tallow,RELAYCLIENT\n203.0.113.9\tallow\n:2001:0db8:0001\tallow,RELAYCLIENT\n"


def _smtpaccess(directory, text, name="smtpaccess.dat"):
    """An smtpaccess database written with this Python's dbm, renamed into place as makedat does."""
    target = os.path.join(str(directory), name)
    building = target + ".tmp"
    with dbm.open(building, "n") as db:
        for line in text.splitlines():
            key, value = line.split("\t")
            db[key] = value
    for suffix in ("", ".dat", ".dir"):  # one file (gdbm, ndbm) or two (dbm.dumb)
        if os.path.exists(building + suffix):
            os.rename(building + suffix, target + suffix)
    return target


def _assert_relayclients(env, f):
    assert f.do_filter("", [env.control(ip="192.168.4.5")]) == ""
    assert "action=whitelist, reason=relayclient" in env.lines[-1]
    assert f.do_filter("", [env.control(ip="2001:db8:1::25")]) == ""
    assert "action=whitelist, reason=relayclient" in env.lines[-1]
    assert f.do_filter("", [env.control(ip="203.0.113.9")]).startswith(GREYLIST)  # allowed, no relay
    assert f.do_filter("", [env.control(ip="192.169.0.1")]).startswith(GREYLIST)


def test_skip_relayclients(env):
    f = env.filter(skip_relayclients=True, smtpaccess_file=_smtpaccess(env.dir, SMTPACCESS))
    _assert_relayclients(env, f)


def test_skip_relayclients_rereads_a_replaced_database(env):
    path = _smtpaccess(env.dir, SMTPACCESS)
    f = env.filter(skip_relayclients=True, smtpaccess_file=path)
    assert f.do_filter("", [env.control(ip="198.51.100.7")]).startswith(GREYLIST)
    _smtpaccess(env.dir, SMTPACCESS + "198.51.100\tallow,RELAYCLIENT\n")  # makesmtpaccess ran
    assert f.do_filter("", [env.control(ip="198.51.100.7")]) == ""
    assert "action=whitelist, reason=relayclient" in env.lines[-1]
    os.unlink(path if os.path.exists(path) else path + ".dir")  # mid-replacement: the last copy holds
    assert f.do_filter("", [env.control(ip="198.51.100.7")]) == ""


MAKEDAT = shutil.which("makedat", path="/usr/lib/courier:/usr/sbin:/usr/bin")


@needs_gdbm
def test_skip_relayclients_reads_what_courier_makedat_wrote(env):
    if MAKEDAT is None:
        if os.environ.get("GREYLIST_TEST_COURIER") == "required":  # .ci/run, once Courier is installed
            pytest.fail("Courier's makedat is not installed")
        pytest.skip("Courier's makedat is not installed (Debian: courier-base)")
    source = env.dir / "smtpaccess"
    source.write_text(SMTPACCESS)
    target = env.dir / "smtpaccess.dat"
    subprocess.run([MAKEDAT, f"-src={source}", f"-file={target}", f"-tmp={env.dir}/tmp", "-cidr"],
                   check=True)
    _assert_relayclients(env, env.filter(skip_relayclients=True, smtpaccess_file=str(target)))


@needs_gdbm
def test_gdbm_smtpaccess_without_dbm_gnu_says_what_to_install(env):
    """Courier writes smtpaccess.dat with gdbm: a Python without dbm.gnu must say so, not guess."""
    import dbm.gnu

    path = str(env.dir / "smtpaccess.dat")
    with dbm.gnu.open(path, "n") as db:
        db["192.168"] = "allow,RELAYCLIENT"
    script = ("import sys; sys.modules['dbm.gnu'] = None\n"
              "from greylist.relay import SmtpAccess\n"
              f"SmtpAccess({path!r})\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "greylist.relay.SmtpAccessError: cannot read " + path in result.stderr
    assert "(install python3-gdbm: Courier writes it with gdbm)" in result.stderr


def test_skip_relayclients_without_database_stops_start(env):
    with pytest.raises(SmtpAccessError, match="cannot read .*/missing.dat"):
        env.filter(skip_relayclients=True, smtpaccess_file=str(env.dir / "missing.dat"))


def test_learn_only_records_but_accepts(env):
    f = env.filter(learn_only=True)
    path = env.control()
    assert f.do_filter("", [path]) == ""
    assert env.lines[-1].startswith("greylist: action=learn, reason=new, would=greylist,")
    assert "wait=00:05:00" in env.lines[-1]
    assert len(entries(env.store, NOT_PASSED_TABLE)) == 1
    env.clock.advance(100)
    assert f.do_filter("", [path]) == ""
    assert "action=learn, reason=early-retry" in env.lines[-1]
    env.clock.advance(201)
    assert f.do_filter("", [path]) == ""
    assert "action=pass, reason=passed" in env.lines[-1]
    assert len(entries(env.store, PASSED_TABLE)) == 1


def test_reply_template(env):
    f = env.filter(reply="450 4.2.0 Greylisted, see https://example.org/greylisting ({wait})")
    assert f.do_filter("", [env.control()]) == \
        "450 4.2.0 Greylisted, see https://example.org/greylisting (00:05:00)"


def test_log_decisions_off_still_logs_errors(env):
    f = env.filter(log_decisions=False)
    f.do_filter("", [env.control()])
    assert env.lines == []
    f.do_filter("", [str(env.dir / "missing")])
    assert env.lines and "action=error" in env.lines[-1]
