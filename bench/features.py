"""What the settings beyond the reference cost per decision (ours only, one thread).

    python bench/features.py [--seconds 2]

Times do_filter on 200 control files against a fresh store in a temporary
directory (greylist_time 0, so after the first round every message passes
as known), first with the defaults, then with every policy feature on:
whitelist files (the shipped pool-senders list), recipient whitelist,
sender normalisation, auto-whitelisting (never reached) and
skip_authenticated.  Prints microseconds per decision for each.

Then the metrics file, paired so that the machine's drift does not blur
it: two filters on one store, one without and one with ``metrics_file`` (its
counts, and its writer thread writing every second), deciding the same
messages in alternating bursts; the ratio of their total times.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

from helpers import Clock, write_control  # noqa: E402

from greylist.filter import GreylistFilter  # noqa: E402
from greylist.metrics import Counts, MetricsFile  # noqa: E402
from greylist.settings import Settings  # noqa: E402
from greylist.stores.dbm import DbmStore  # noqa: E402

FEATURES = dict(whitelist_files=("builtin:pool-senders",), whitelist_recipients=("postmaster@",),
                normalize_senders=True, auto_whitelist_clients=1000, skip_authenticated=True)


def per_decision(seconds: float, metrics: bool = False, **settings) -> float:
    directory = tempfile.mkdtemp(prefix="greylist-features-")
    counts = writer = None
    try:
        store = DbmStore(directory, auto_whitelist=settings.get("auto_whitelist_clients", 0) > 0)
        if metrics:
            counts = Counts()
            writer = MetricsFile(counts, os.path.join(directory, "m.prom"), 1.0, print)
            writer.start()
        greylist = GreylistFilter(Settings(db_dir=directory, greylist_time=0, **settings), store,
                                  clock=Clock(), log=lambda line: None, purge="never", counts=counts)
        paths = [write_control(os.path.join(directory, f"C{n}"), f"list-{n}@example.com",
                               client_name=f"h{n}.example.net") for n in range(200)]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}; dbm store; one thread")
    for label, settings in (("defaults (the reference's behaviour)", {}), ("every feature on", FEATURES),
                            ("defaults again", {})):
        print(f"{label:<40} {per_decision(args.seconds, **settings):7.1f} us per decision")
    off, on = metrics_paired(args.seconds * 5)
    print(f"{'metrics_file off / on (paired bursts)':<40} {off:7.1f} / {on:.1f} us per decision "
          f"({on / off - 1:+.1%})")

if __name__ == "__main__":
    main()
