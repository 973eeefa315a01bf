"""What the settings beyond the reference cost per decision (ours only, one thread).

    python bench/features.py [--seconds 2]

Times do_filter on 200 control files against a fresh store in a temporary
directory (greylist_time 0, so after the first round every message passes
as known), first with the defaults, then with every policy feature on:
whitelist files (the shipped pool-senders list), recipient whitelist,
sender normalisation, auto-whitelisting (never reached) and
skip_authenticated.  Prints microseconds per decision for each.

Then the X-Greylist header's rewrite of a 10 MB message, per MB.

Then our users' mail (SMTP AUTH with skip_authenticated), without and with
whitelist_replies, which records its remote recipient: one store write.

Then the DNS lists (rbldnsd on a loopback port, as the tests start it): a
decision whose answers come from the cache, one that asks the server (every
client new), and the longest decision when the server never answers
(dns_timeout at its default, 2 s).

Then the metrics file, paired so that the machine's drift does not blur
it: two filters on one store, one without and one with ``metrics_file`` (its
counts, and its writer thread writing every second), deciding the same
messages in alternating bursts; the ratio of their total times.

Last, a whitelist file of a million lines replaced while mail flows: the
longest decision until the new file is in, and how long reading it took.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from typing import Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

from helpers import Clock, write_control  # noqa: E402

from greylist.filter import GreylistFilter  # noqa: E402
from greylist.metrics import Counts, MetricsFile  # noqa: E402
from greylist.settings import Settings  # noqa: E402
from greylist.stores.dbm import DbmStore  # noqa: E402
from greylist.tables import wanted_tables  # noqa: E402

FEATURES = dict(whitelist_files=("builtin:pool-senders",), whitelist_recipients=("postmaster@",),
                normalize_senders=True, auto_whitelist_clients=1000, skip_authenticated=True)


def per_decision(seconds: float, metrics: bool = False, ip: str = "192.0.2.10",
                 auth_user: Optional[str] = None, **settings) -> float:
    directory = tempfile.mkdtemp(prefix="greylist-features-")
    counts = writer = None
    try:
        store = DbmStore(directory, tables=wanted_tables(Settings(**settings)))
        if metrics:
            counts = Counts()
            writer = MetricsFile(counts, os.path.join(directory, "m.prom"), 1.0, print)
            writer.start()
        greylist = GreylistFilter(Settings(db_dir=directory, greylist_time=0, **settings), store,
                                  clock=Clock(), log=lambda line: None, purge="never", counts=counts)
        paths = [write_control(os.path.join(directory, f"C{n}"), f"list-{n}@example.com", ip=ip,
                               client_name=f"h{n}.example.net", auth_user=auth_user) for n in range(200)]
        for path in paths:
            greylist.do_filter("", [path])
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            for path in paths:
                greylist.do_filter("", [path])
            count += len(paths)
        elapsed = time.perf_counter() - started
        if writer is not None:
            writer.close()
        store.close()
        return elapsed / count * 1e6
    finally:
        shutil.rmtree(directory)


def outbound_costs(seconds: float) -> tuple:
    """Microseconds per message of our users (SMTP AUTH, skip_authenticated), without and with
    whitelist_replies (which records its remote recipient: one store write)."""
    import courier.config

    etc = tempfile.mkdtemp(prefix="greylist-features-etc-")
    saved = courier.config.sysconfdir
    try:
        with open(os.path.join(etc, "locals"), "w") as handle:
            handle.write("example.com\n")  # the senders' domain: bob@example.net is remote
        courier.config.sysconfdir = etc
        return (per_decision(seconds, auth_user="alice", skip_authenticated=True),
                per_decision(seconds, auth_user="alice", skip_authenticated=True, whitelist_replies=True))
    finally:
        courier.config.sysconfdir = saved
        shutil.rmtree(etc)


def header_cost(megabytes: int = 10, rounds: int = 20) -> float:
    """Milliseconds per MB of message that the X-Greylist header's rewrite costs (the median)."""
    from greylist import header

    directory = tempfile.mkdtemp(prefix="greylist-features-")
    try:
        path = os.path.join(directory, "D")
        took = []
        for _ in range(rounds):
            with open(path, "wb") as handle:
                handle.write(b"Subject: x\n\n" + b"0123456789abcdef" * (megabytes << 16))
            started = time.perf_counter()
            header.prepend(path, b"X-Greylist: delayed 300 seconds by courier-greylist at mx; date\n")
            took.append(time.perf_counter() - started)
        took.sort()
        return took[len(took) // 2] / megabytes * 1000
    finally:
        shutil.rmtree(directory)


def dns_costs(seconds: float) -> Optional[dict]:
    """Microseconds per decision with DNS lists, cached and asked; the longest with a silent server."""
    from dnslist_server import BL, WL, MisbehavingServer, Rbldnsd

    directory = tempfile.mkdtemp(prefix="greylist-features-")
    try:
        try:
            server = Rbldnsd(directory)
        except BaseException as error:  # pytest.skip when rbldnsd is not installed
            print(f"DNS lists: not measured ({error})")
            return None
        try:
            lists = dict(dnswl_zones=(WL,), dnsbl_zones=(BL,), dns_servers=(("127.0.0.1", server.port),))
            # A client on neither list: decided by greylisting, as with the defaults.
            result = {"default": per_decision(seconds, ip="203.0.113.5"),
                      "cached": per_decision(seconds, ip="203.0.113.5", **lists)}
            store_dir = os.path.join(directory, "asked")
            os.mkdir(store_dir)
            store = DbmStore(store_dir)
            greylist = GreylistFilter(Settings(db_dir=store_dir, greylist_time=0, **lists), store,
                                      clock=Clock(), log=lambda line: None, purge="never")
            paths = [write_control(os.path.join(store_dir, f"C{n}"), f"s{n}@example.com",
                                   ip=f"10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}")
                     for n in range(2000 if seconds >= 1 else 100)]  # every client new: nothing cached
            started = time.perf_counter()
            for path in paths:
                greylist.do_filter("", [path])
            result["asked"] = (time.perf_counter() - started) / len(paths) * 1e6
            store.close()
        finally:
            server.stop()
        silent = MisbehavingServer()
        store_dir = os.path.join(directory, "silent")
        os.mkdir(store_dir)
        store = DbmStore(store_dir)
        greylist = GreylistFilter(Settings(db_dir=store_dir, dnsbl_zones=(BL,), dnswl_zones=(WL,),
                                           dns_servers=(("127.0.0.1", silent.port),)),
                                  store, clock=Clock(), log=lambda line: None, purge="never")
        longest = 0.0
        for n in range(3 if seconds >= 1 else 1):
            path = write_control(os.path.join(store_dir, f"C{n}"), ip=f"10.9.9.{n}")
            started = time.perf_counter()
            greylist.do_filter("", [path])
            longest = max(longest, time.perf_counter() - started)
        result["silent_longest_ms"] = longest * 1000
        store.close()
        silent.close()
        return result
    finally:
        shutil.rmtree(directory)


def metrics_paired(seconds: float) -> tuple:
    """Microseconds per decision without and with metrics, in alternating bursts on one store."""
    directory = tempfile.mkdtemp(prefix="greylist-features-")
    try:
        store = DbmStore(directory)
        counts = Counts()
        writer = MetricsFile(counts, os.path.join(directory, "m.prom"), 1.0, print)
        writer.start()
        clock = Clock()
        settings = Settings(db_dir=directory, greylist_time=0)
        plain = GreylistFilter(settings, store, clock=clock, log=lambda line: None, purge="never")
        counted = GreylistFilter(settings, store, clock=clock, log=lambda line: None, purge="never",
                                 counts=counts)
        paths = [write_control(os.path.join(directory, f"C{n}"), f"list-{n}@example.com")
                 for n in range(200)]
        for path in paths:
            plain.do_filter("", [path])
        spent = {plain: 0.0, counted: 0.0}
        done = 0
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            for greylist in ((plain, counted) if done % 2 == 0 else (counted, plain)):
                burst = time.perf_counter()
                for path in paths:
                    greylist.do_filter("", [path])
                spent[greylist] += time.perf_counter() - burst
            done += 1
        writer.close()
        store.close()
        per = done * len(paths) / 1e6
        return spent[plain] / per, spent[counted] / per
    finally:
        shutil.rmtree(directory)


def whitelist_reread(lines: int = 1_000_000) -> tuple:
    """(longest decision, 99th percentile, seconds until the new file was in) when a large
    whitelist file changes while mail flows."""
    directory = tempfile.mkdtemp(prefix="greylist-features-")
    try:
        listing = os.path.join(directory, "whitelist")

        def write(last: str) -> None:
            with open(listing + ".new", "w") as handle:
                handle.writelines(f"client: 10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}\n"
                                  for n in range(lines - 1))
                handle.write(f"client: {last}\n")
            os.replace(listing + ".new", listing)

        write("198.51.100.1")
        store = DbmStore(directory)
        said: list = []
        greylist = GreylistFilter(Settings(db_dir=directory, greylist_time=0, whitelist_files=(listing,)),
                                  store, clock=Clock(), log=said.append, purge="never")
        paths = [write_control(os.path.join(directory, f"C{n}"), f"list-{n}@example.com") for n in range(200)]
        paths.append(write_control(os.path.join(directory, "Cnew"), ip="203.0.113.1"))
        write("203.0.113.1")
        took, changed = [], time.perf_counter()
        while not said or "whitelisted:client:203.0.113.1" not in said[-1]:
            for path in paths:
                started = time.perf_counter()
                greylist.do_filter("", [path])
                took.append(time.perf_counter() - started)
        store.close()
        took.sort()
        return took[-1], took[int(len(took) * 0.99)], time.perf_counter() - changed
    finally:
        shutil.rmtree(directory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}; dbm store; one thread")
    for label, settings in (("defaults (the reference's behaviour)", {}), ("every feature on", FEATURES),
                            ("defaults again", {})):
        print(f"{label:<40} {per_decision(args.seconds, **settings):7.1f} us per decision")
    print(f"{'X-Greylist header, a 10 MB message':<40} {header_cost():7.2f} ms per MB")
    plain, recorded = outbound_costs(args.seconds)
    print(f"{'our users mail, skip_authenticated':<40} {plain:7.1f} us per decision")
    print(f"{'the same, recorded for whitelist_replies':<40} {recorded:7.1f} us per decision")
    dns = dns_costs(args.seconds)
    if dns is not None:
        print(f"{'defaults, a client on neither list':<40} {dns['default']:7.1f} us per decision")
        print(f"{'DNS lists, answers from the cache':<40} {dns['cached']:7.1f} us per decision")
        print(f"{'DNS lists, every client asked':<40} {dns['asked']:7.1f} us per decision")
        print(f"{'DNS server that never answers':<40} {dns['silent_longest_ms']:7.1f} ms, the longest "
              f"decision (dns_timeout 2 s)")
    off, on = metrics_paired(args.seconds * 5)
    print(f"{'metrics_file off / on (paired bursts)':<40} {off:7.1f} / {on:.1f} us per decision "
          f"({on / off - 1:+.1%})")
    longest, p99, reading = whitelist_reread()
    print(f"{'a 1,000,000-line whitelist file changed':<40} {longest * 1000:7.1f} ms, the longest "
          f"decision while it was read again ({reading:.1f} s; 99% within {p99 * 1000:.1f} ms)")

if __name__ == "__main__":
    main()
