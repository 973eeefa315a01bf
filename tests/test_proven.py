"""Fewer legitimate delays: replies to our users' mail, proven senders and proven domains.

Through do_filter on real control files and real dbm files (every flavour
this Python has), with an injected clock; Courier's ``locals`` is the test's.
"""

from __future__ import annotations

import ipaddress
import shutil

import courier.config
import pytest
from helpers import DBM_FLAVOURS, Clock, write_control

from greylist import policy
from greylist.filter import GreylistFilter
from greylist.settings import Settings
from greylist.stores import StoreError
from greylist.stores.dbm import DbmStore
from greylist.tables import DOMAINS_TABLE, NOT_PASSED_TABLE, REPLIES_TABLE, SENDERS_TABLE, wanted_tables

GREYLIST = "451 4.7.1 Greylisting in action, please come back in "
OURS = "alice@example.org"  # example.org is in the test's locals


@pytest.fixture(params=DBM_FLAVOURS)
def env(tmp_path, monkeypatch, request):
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "locals").write_text("example.org\n.example.org\n!outside.example.org\n")
    monkeypatch.setattr(courier.config, "sysconfdir", str(etc))

    class Env:
        clock = Clock()
        lines: list = []
        count = 0
        store = None

        def filter(self, **overrides) -> GreylistFilter:
            (tmp_path / "store").mkdir(exist_ok=True)
            settings = Settings(db_dir=str(tmp_path / "store"), greylist_time=300, **overrides)
            self.store = DbmStore(settings.db_dir, flavour=request.param, tables=wanted_tables(settings))
            return GreylistFilter(settings, self.store, clock=self.clock, log=self.lines.append,
                                  purge="never")

        def control(self, **kwargs) -> str:
            self.count += 1
            return write_control(str(tmp_path / f"C{self.count}"), **kwargs)

        def body(self, headers: str) -> str:
            self.count += 1
            path = tmp_path / f"D{self.count}"
            path.write_bytes(headers.encode() + b"\n\nHello\n")
            return str(path)

    e = Env()
    yield e
    if e.store is not None:
        e.store.close()


def decide(f: GreylistFilter, env, body: str = "", **control) -> str:
    return f.do_filter(body, [env.control(**control)])


# --- replies ---------------------------------------------------------------------------


@pytest.mark.parametrize("outbound", [
    {"auth_user": "alice", "ip": "203.0.113.9"},  # SMTP AUTH
    {"source": "local", "ip": "127.0.0.1"},  # the local sendmail, as Courier writes its control file
    {"ip": None},  # no client address
])
def test_a_reply_to_our_users_mail_passes_at_its_first_attempt(env, outbound):
    f = env.filter(whitelist_replies=True, skip_authenticated=True)
    assert decide(f, env, sender=OURS, recipients=("carol@remote.example", "bob@example.org"),
                  **outbound) == ""
    assert len(dict(env.store.items(REPLIES_TABLE))) == 1  # the remote recipient only
    env.clock.advance(3600)
    assert decide(f, env, sender="Carol@Remote.example", recipients=(OURS,), ip="198.51.100.7") == ""
    assert "action=whitelist, reason=reply" in env.lines[-1]
    assert not dict(env.store.items(NOT_PASSED_TABLE))  # nothing left waiting
    # the local recipient of that mail was not recorded: a forger writing as bob waits
    assert decide(f, env, sender="bob@example.org", recipients=(OURS,),
                  ip="198.51.100.7").startswith(GREYLIST)
    # nor does the remote address reach another of our users
    assert decide(f, env, sender="carol@remote.example", recipients=("dave@example.org",),
                  ip="198.51.100.7").startswith(GREYLIST)


def test_a_reply_passes_for_senders_passed_ttl_after_our_users_last_mail(env):
    f = env.filter(whitelist_replies=True, skip_authenticated=True, senders_passed_ttl=86400)
    decide(f, env, sender=OURS, recipients=("carol@remote.example",), ip=None)
    env.clock.advance(86400 + 1)
    assert decide(f, env, sender="carol@remote.example", recipients=(OURS,)).startswith(GREYLIST)


def test_a_reply_to_several_of_our_users_leaves_out_those_who_wrote(env):
    f = env.filter(whitelist_replies=True)
    decide(f, env, sender=OURS, recipients=("carol@remote.example",), ip=None)
    assert decide(f, env, sender="carol@remote.example", recipients=(OURS, "dave@example.org")) \
        .startswith(GREYLIST)  # dave never wrote to carol: his triplet waits
    assert "whitelisted_recipients=1" in env.lines[-1]
    assert len(dict(env.store.items(NOT_PASSED_TABLE))) == 1


def test_without_skip_authenticated_authenticated_mail_is_not_ours(env):
    f = env.filter(whitelist_replies=True)  # skip_authenticated off: greylisted like any other
    assert decide(f, env, sender=OURS, recipients=("carol@remote.example",), auth_user="alice",
                  ip="203.0.113.9").startswith(GREYLIST)
    assert decide(f, env, sender=OURS, recipients=("carol@remote.example",), source="local",
                  ip="127.0.0.1").startswith(GREYLIST)  # as the reference does
    assert not dict(env.store.items(REPLIES_TABLE))


def test_the_local_sendmail_passes_with_skip_authenticated(env):
    f = env.filter(skip_authenticated=True)
    assert decide(f, env, sender=OURS, source="local", ip="127.0.0.1") == ""
    assert "action=whitelist, reason=local, client_address=127.0.0.1" in env.lines[-1]


def test_in_reply_to_form_needs_the_message_our_user_sent(env):
    f = env.filter(whitelist_replies="in-reply-to")
    sent = env.body("Message-ID: <abc.123@example.org>\nSubject: hi")
    decide(f, env, body=sent, sender=OURS, recipients=("carol@remote.example",), ip=None)
    # a message of carol's that answers nothing of ours waits
    assert decide(f, env, body=env.body("Subject: buy now"), sender="carol@remote.example",
                  recipients=(OURS,)).startswith(GREYLIST)
    answer = env.body("In-Reply-To: <abc.123@example.org>\nReferences: <older@x> <abc.123@example.org>")
    assert decide(f, env, body=answer, sender="carol@remote.example", recipients=(OURS,),
                  ip="198.51.100.8") == ""
    assert "reason=reply" in env.lines[-1]


def test_a_failed_record_is_one_line_and_our_users_mail_still_passes(env, tmp_path):
    f = env.filter(whitelist_replies=True)
    shutil.rmtree(tmp_path / "store")  # the store is gone: every transaction fails
    assert decide(f, env, sender=OURS, recipients=("carol@remote.example",), ip=None) == ""
    assert [line for line in env.lines if "could not record" in line] == env.lines[-2:-1]
    assert "action=pass, reason=no-client-ip" in env.lines[-1]
    with pytest.raises(StoreError):
        env.store.close()  # says so too
    env.store = None


# --- proven senders and domains ---------------------------------------------------------


def pass_once(f, env, sender: str, ip: str = "192.0.2.10", recipient: str = "bob@example.net") -> None:
    assert decide(f, env, sender=sender, recipients=(recipient,), ip=ip).startswith(GREYLIST)
    env.clock.advance(301)
    assert decide(f, env, sender=sender, recipients=(recipient,), ip=ip) == ""


def test_a_proven_sender_passes_from_its_network_for_any_recipient(env):
    f = env.filter(auto_whitelist_senders=True)
    pass_once(f, env, "news@shop.example")
    assert decide(f, env, sender="news@shop.example", recipients=("zed@example.net",), ip="192.0.2.99") == ""
    assert "action=whitelist, reason=auto-whitelisted:sender" in env.lines[-1]
    # from another network, or another sender of the domain: greylisted
    assert decide(f, env, sender="news@shop.example", recipients=("zed@example.net",),
                  ip="198.51.100.1").startswith(GREYLIST)
    assert decide(f, env, sender="other@shop.example", recipients=("zed@example.net",),
                  ip="192.0.2.99").startswith(GREYLIST)


def test_a_domain_is_proven_by_distinct_senders_only(env):
    f = env.filter(auto_whitelist_domains=2)
    pass_once(f, env, "a@shop.example")
    pass_once(f, env, "a@shop.example", recipient="other@example.net")  # the same sender again
    assert decide(f, env, sender="new@shop.example", recipients=("z@example.net",)).startswith(GREYLIST)
    env.clock.advance(301)
    assert decide(f, env, sender="new@shop.example", recipients=("z@example.net",)) == ""  # the second
    assert decide(f, env, sender="third@shop.example", recipients=("y@example.net",)) == ""
    assert "action=whitelist, reason=auto-whitelisted:domain" in env.lines[-1]
    assert [count for _, _, count in env.store.counted_items(DOMAINS_TABLE)] == [2]


def test_free_mail_domains_are_never_proven(env):
    f = env.filter(auto_whitelist_domains=1)
    pass_once(f, env, "a@gmail.com")
    assert decide(f, env, sender="b@gmail.com", recipients=("z@example.net",)).startswith(GREYLIST)
    assert not list(env.store.counted_items(DOMAINS_TABLE))


def test_normalised_senders_prove_one_sender(env):
    f = env.filter(auto_whitelist_senders=True, normalize_senders=True)
    pass_once(f, env, "bounce-1234@lists.example")
    assert decide(f, env, sender="bounce-9876@lists.example", recipients=("q@example.net",)) == ""
    assert "reason=auto-whitelisted:sender" in env.lines[-1]


def test_records_expire_with_senders_passed_ttl(env):
    f = env.filter(auto_whitelist_senders=True, senders_passed_ttl=86400)
    pass_once(f, env, "news@shop.example")
    env.clock.advance(86400 + 1)
    assert decide(f, env, sender="news@shop.example", recipients=("zed@example.net",)).startswith(GREYLIST)
    assert SENDERS_TABLE in env.store.tables


def test_defaults_open_none_of_the_new_tables(env):
    env.filter()
    assert not {SENDERS_TABLE, DOMAINS_TABLE, REPLIES_TABLE} & set(env.store.tables)


# --- the rules, pure -------------------------------------------------------------------


NOW = 1_790_000_000.0
RULES = policy.Rules(auto_whitelist_senders=True, auto_whitelist_domains=2)


def stored(**fields) -> policy.Stored:
    return policy.Stored(("k1", "k2"), {}, **fields)


def test_rule_order_sender_domain_reply_then_greylisting():
    request = policy.ReadStore(("a@x", "b@x"), RULES.timing)
    everything = stored(sender_key="s", sender=NOW - 10, domain_key="d", domain=(NOW - 10, 5),
                        replies=(NOW - 10, NOW - 10))
    assert policy.decide_stored(request, everything, NOW, RULES).reason == "auto-whitelisted:sender"
    assert policy.decide_stored(request, everything._replace(sender=None), NOW, RULES).reason \
        == "auto-whitelisted:domain"
    no_domain = everything._replace(sender=None, domain=(NOW - 10, 1))
    assert policy.decide_stored(request, no_domain, NOW, RULES).reason == "reply"
    half = no_domain._replace(replies=(NOW - 10, None))
    decision = policy.decide_stored(request, half, NOW, RULES)
    assert (decision.action, decision.whitelisted_recipients) == ("greylist", 1)
    assert [o.key for o in decision.outcomes] == ["k2"]


def test_a_pass_by_greylisting_records_the_sender_and_counts_a_new_one_for_its_domain():
    request = policy.ReadStore(("a@x",), RULES.timing)
    known = policy.Stored(("k",), {"k": policy.StoredState(None, NOW - 5)}, sender_key="s", domain_key="d",
                          domain=(NOW - 100, 1))
    writes = policy.decide_stored(request, known, NOW, RULES).writes
    assert policy.Write(SENDERS_TABLE, "s", int(NOW)) in writes
    assert policy.Write(DOMAINS_TABLE, "d", int(NOW), 2) in writes
    again = known._replace(sender=NOW - 50)  # alive: counted already
    assert policy.Write(DOMAINS_TABLE, "d", int(NOW), 1) in \
        policy.decide_stored(request, again, NOW, policy.Rules(auto_whitelist_domains=2)).writes


def test_our_users_mail_records_its_reply_keys():
    facts = policy.Facts("alice@example.org", ("c@remote",), "203.0.113.9",
                         ipaddress.ip_address("203.0.113.9"), None, True, reply_keys=("r1", "r2"))
    decision = policy.decide_message(facts, None, NOW, policy.Rules())
    assert (decision.action, decision.reason) == ("whitelist", "authenticated")
    assert decision.writes == [policy.Write(REPLIES_TABLE, "r1", int(NOW)),
                               policy.Write(REPLIES_TABLE, "r2", int(NOW))]
