"""Effectiveness: a month of a small domain's mail, replayed through the filter under each setting.

    python bench/replay.py            # about a minute; prints the table of docs/effectiveness.md
    python bench/replay.py --days 3   # a shorter month, for a smoke run

The traffic is generated (seeded, so every run is the same month) and
decided by the real filter (``GreylistFilter.do_filter`` on real control
files, a dbm store in a temporary directory, an injected clock): what this
measures is the rules, not the machine.

* 300 users at example.org; our users send mail out through SMTP AUTH
  (``skip_authenticated`` is on in every run, so that it passes), a third
  of it to people who never wrote before, and 60% of those answer within
  hours (with ``In-Reply-To``);
* correspondents that write once, weekly, or daily (newsletters, some to
  several users in one message); 60 organisations with several senders
  each behind one server; people at big providers whose retries come from
  any of four networks of a pool;
* every legitimate server retries a greylisted message after 5-15 minutes,
  then at doubling intervals;
* spam from one-shot clients that never retry: random senders, and some
  that forge what they could have learnt (the address one of our users
  wrote to, writing back to that user; a sender of an organisation we
  hear from; a free-mail address).

For each setting it prints the share of legitimate messages delayed, their
median and 95th-percentile delay, and the share of spam that passed.
"""

from __future__ import annotations

import argparse
import heapq
import os
import random
import shutil
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import courier.config  # noqa: E402

from greylist.filter import GreylistFilter  # noqa: E402
from greylist.settings import Settings  # noqa: E402
from greylist.stores.dbm import DbmStore  # noqa: E402
from greylist.tables import wanted_tables  # noqa: E402

DAY = 86400
START = 1_790_000_000.0
USERS = [f"u{n}@example.org" for n in range(300)]
FREE_MAIL = ("gmail.com", "outlook.com", "yahoo.com")

SETTINGS = [
    ("defaults", {}),
    ("whitelist_replies = True", {"whitelist_replies": True}),
    ("whitelist_replies = 'in-reply-to'", {"whitelist_replies": "in-reply-to"}),
    ("auto_whitelist_senders = True", {"auto_whitelist_senders": True}),
    ("auto_whitelist_domains = 2", {"auto_whitelist_domains": 2}),
    ("all three", {"whitelist_replies": True, "auto_whitelist_senders": True, "auto_whitelist_domains": 2}),
    ("all three, 'in-reply-to'", {"whitelist_replies": "in-reply-to", "auto_whitelist_senders": True,
                                  "auto_whitelist_domains": 2}),
]


class Message:
    """One message as its sending server sees it: where it comes from, and whether it retries."""

    __slots__ = ("kind", "sender", "recipients", "networks", "legit", "first", "references",
                 "message_id", "outbound")

    def __init__(self, kind, sender, recipients, networks, legit=True, references=(), message_id=None,
                 outbound=False):
        self.kind, self.sender, self.recipients, self.networks = kind, sender, recipients, networks
        self.legit, self.references, self.message_id, self.outbound = legit, references, message_id, outbound
        self.first = None


def _network(rng: random.Random) -> str:
    return f"{rng.randrange(11, 223)}.{rng.randrange(256)}.{rng.randrange(256)}"


def month(days: int, seed: int = 1) -> list:
    """The month's first attempts: (time, Message), in time order."""
    rng = random.Random(seed)
    events = []
    end = START + days * DAY

    def at(when: float, message: Message) -> None:
        if when < end:
            events.append((when, message))

    for _ in range(int(600 * days / 30)):  # people who write once
        at(START + rng.uniform(0, days * DAY),
           Message("once", f"p{rng.randrange(10**6)}@once{rng.randrange(10**6)}.example", [rng.choice(USERS)],
                   [_network(rng)]))
    for n in range(150):  # weekly correspondents, each to one or two users of ours
        sender, net, mine = f"w{n}@corr{n}.example", [_network(rng)], rng.sample(USERS, rng.choice((1, 2)))
        when = START + rng.uniform(0, 7 * DAY)
        while when < end:
            at(when, Message("weekly", sender, [rng.choice(mine)], net))
            when += rng.uniform(5, 9) * DAY
    for n in range(40):  # newsletters and notifications, daily
        sender, net = f"news@list{n}.example", [_network(rng)]
        readers = rng.sample(USERS, rng.randrange(5, 60))
        when = START + rng.uniform(0, DAY)
        while when < end:
            batch = 4 if n % 4 == 0 else 1  # some servers send one message to several readers
            for start in range(0, len(readers), batch):
                at(when + start, Message("daily", sender, readers[start:start + batch], net))
            when += DAY + rng.uniform(-3600, 3600)
    for n in range(60):  # organisations: several senders behind one server
        net, senders = [_network(rng)], [f"s{k}@org{n}.example" for k in range(rng.randrange(3, 15))]
        for _ in range(int(rng.randrange(10, 80) * days / 30)):
            recipients = rng.sample(USERS, rng.choice((1, 1, 1, 2, 3)))
            message = Message("organisation", rng.choice(senders), recipients, net)
            at(START + rng.uniform(0, days * DAY), message)
    for n in range(8):  # big providers: retries come from any network of a pool
        domain = FREE_MAIL[n] if n < len(FREE_MAIL) else f"bigmail{n}.example"
        pool = [_network(rng) for _ in range(4)]
        for _ in range(int(400 * days / 30)):
            at(START + rng.uniform(0, days * DAY),
               Message("pool", f"x{rng.randrange(3000)}@{domain}", [rng.choice(USERS)], pool))
    # Our users' mail out, and the replies; spam that forges a pair it learnt is made from these.
    pairs = []
    for k in range(int(20 * days)):
        when = START + rng.uniform(0, days * DAY)
        user = rng.choice(USERS)
        new = rng.random() < 1 / 3
        known = rng.randrange(150)
        remote = f"r{k}@answer{rng.randrange(10**6)}.example" if new else f"w{known}@corr{known}.example"
        message_id = f"{k}.{user}"
        at(when, Message("outbound", user, [remote], ["127.0.0"], message_id=message_id, outbound=True))
        pairs.append((remote, user))
        if new and rng.random() < 0.6:
            at(when + rng.expovariate(1 / 7200), Message("reply", remote, [user], [_network(rng)],
                                                         references=(message_id,)))
    for _ in range(int(700 * days)):  # spam, one attempt each
        when, roll = START + rng.uniform(0, days * DAY), rng.random()
        if roll < 0.05 and pairs:
            remote, user = rng.choice(pairs)  # a forged reply: the pair of a leaked thread
            message = Message("spam: forged reply", remote, [user], [_network(rng)], legit=False)
        elif roll < 0.10:
            message = Message("spam: forged organisation", f"s0@org{rng.randrange(60)}.example",
                              [rng.choice(USERS)], [_network(rng)], legit=False)
        elif roll < 0.20:
            message = Message("spam: free mail", f"z{rng.randrange(10**6)}@{rng.choice(FREE_MAIL)}",
                              [rng.choice(USERS)], [_network(rng)], legit=False)
        else:
            message = Message("spam", f"{rng.randrange(10**9)}@spam{rng.randrange(10**6)}.example",
                              rng.sample(USERS, rng.choice((1, 1, 2, 5))), [_network(rng)], legit=False)
        at(when, message)
    events.sort(key=lambda event: event[0])
    return events


def _control(path: str, message: Message, address: str) -> None:
    lines = ["uesmtp", "s" + message.sender]
    lines += [f"fdns; mx.example ([{address}])", "OTCPREMOTEIP=" + address]
    if message.outbound:
        lines.append("i" + message.sender.split("@")[0])
    for recipient in message.recipients:
        lines += ["r" + recipient, "Rrfc822;" + recipient, "N"]
    with open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")


def _body(path: str, message: Message) -> str:
    headers = [f"Message-ID: <{message.message_id}>"] if message.message_id else []
    if message.references:
        headers.append(f"In-Reply-To: <{message.references[-1]}>")
    with open(path, "w") as handle:
        handle.write("\n".join(headers + ["Subject: x", "", "hello"]) + "\n")
    return path


def replay(events: list, overrides: dict, work: str) -> dict:
    """Every message through the filter; what became of the legitimate ones and of the spam."""
    store_dir = os.path.join(work, "store")
    shutil.rmtree(store_dir, ignore_errors=True)
    os.mkdir(store_dir)
    etc = os.path.join(work, "etc")  # Courier's configuration, as the replayed host's: never this host's
    os.makedirs(etc, exist_ok=True)
    with open(os.path.join(etc, "locals"), "w") as handle:
        handle.write("example.org\n")
    courier.config.sysconfdir = etc
    clock = [START]
    settings = Settings(db_dir=store_dir, skip_authenticated=True, log_decisions=False, **overrides)
    store = DbmStore(store_dir, tables=wanted_tables(settings))
    the_filter = GreylistFilter(settings, store, clock=lambda: clock[0], log=lambda line: None,
                                purge="never")
    control, body = os.path.join(work, "C"), os.path.join(work, "D")
    rng = random.Random(2)
    queue = [(when, n, message, 0) for n, (when, message) in enumerate(events)]
    heapq.heapify(queue)
    delays, legit, spam, spam_passed = [], 0, 0, {}
    counter = len(queue)
    try:
        while queue:
            when, _, message, attempt = heapq.heappop(queue)
            clock[0] = when
            if message.first is None:
                message.first = when
            address = f"{rng.choice(message.networks)}.{rng.randrange(1, 255)}"
            _control(control, message, address)
            reply = the_filter.do_filter(_body(body, message) if message.message_id or message.references
                                         else "", [control])
            if message.outbound:
                continue
            if reply == "":
                if message.legit:
                    legit += 1
                    delays.append(when - message.first)
                else:
                    spam += 1
                    spam_passed[message.kind] = spam_passed.get(message.kind, 0) + 1
            elif not message.legit:
                spam += 1
            elif attempt < 12:  # a real server retries: 5-15 minutes, then doubling
                wait = rng.uniform(300, 900) * 2 ** attempt
                counter += 1
                heapq.heappush(queue, (when + wait, counter, message, attempt + 1))
            else:
                legit += 1
                delays.append(float("inf"))
    finally:
        store.close()
    delayed = sorted(d for d in delays if d > 0)
    return {"legit": legit, "delayed": len(delayed), "spam": spam, "spam_passed": spam_passed,
            "median": statistics.median(delayed) if delayed else 0.0,
            "p95": delayed[int(0.95 * (len(delayed) - 1))] if delayed else 0.0}


def _minutes(seconds: float) -> str:
    return "never" if seconds == float("inf") else f"{seconds / 60:.0f} min"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--days", type=int, default=30, help="length of the replayed month (default 30)")
    args = parser.parse_args()
    events = month(args.days)
    print(f"{len(events):,} first attempts over {args.days} days "
          f"({sum(1 for _, m in events if m.legit and not m.outbound):,} legitimate, "
          f"{sum(1 for _, m in events if not m.legit):,} spam, "
          f"{sum(1 for _, m in events if m.outbound):,} sent by our users)")
    print("| setting | legitimate delayed | median delay | p95 delay | spam passed "
          "| of which forged replies |")
    print("|---|---|---|---|---|---|")
    work = tempfile.mkdtemp(prefix="greylist-replay-")
    try:
        baseline = None
        for name, overrides in SETTINGS:
            for _, message in events:
                message.first = None
            result = replay(events, overrides, work)
            share = result["delayed"] / result["legit"]
            baseline = share if baseline is None else baseline
            passed = sum(result["spam_passed"].values())
            print(f"| {name} | {share:.1%} ({share / baseline:.2f} of the defaults') | "
                  f"{_minutes(result['median'])} | {_minutes(result['p95'])} | "
                  f"{passed / result['spam']:.2%} | {result['spam_passed'].get('spam: forged reply', 0)} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
