"""Benchmark: courier-pythonfilter 3.0.6's greylist module against courier-greylist.

Same run, same interpreter, same generated Courier control files, same dbm
flavour, stores pre-written directly into the files (half of the entries
expired).  Workload: 70% messages from known triplets, 30% new.  For each
store size and flavour it measures, for both modules:

* decisions/s and p50/p99/max latency with 1 thread, 4 threads, and 2
  processes on one store (purge held off, as between two purges); and 4
  threads against 1 once more, in bursts paired within one process
  (``paired_threads``), which the machine's drift does not blur;
* the first call after start with the purge due (the reference purges inside
  it), how long the purge takes, the longest wait of a decision made while
  the purge runs, and the peak RSS of the process;
* decisions/s over the first 3,000 decisions after start ("first 3000");
* both of those 1-thread figures again with the stores on tmpfs (/dev/shm),
  where fsync costs nothing and only the code counts ("tmpfs ..." rows).

    python bench/run.py            # the full run, about 13 minutes on 2 cores
    python bench/run.py --quick    # tiny sizes, seconds (the test suite runs this)

Each measurement is made in rounds (3 by default), what is compared side by
side within a round; rows show the round of median rate and ratios are the
median of the rounds' own ratios (see ``_round_order``).

Run it with an interpreter that has dbm.gnu (Debian: /usr/bin/python3 with
python3-gdbm) to get the gdbm rows; dbm.dumb rows are always there.  Runs of
the reference that would take hours are capped and reported as such.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from workload import fresh_store, pg_prewrite, prewrite, write_controls  # noqa: E402

FIRST = 3000  # decisions after start, for the "first" rows
MODES = ["1 thread", "4 threads", "2 processes", "purge", f"first {FIRST}",
         "tmpfs 1 thread", f"tmpfs first {FIRST}"]
# Compared with the reference side by side in each round (the others: ours next to ours).
SIDE_BY_SIDE = ["1 thread", f"first {FIRST}", "tmpfs 1 thread", f"tmpfs first {FIRST}"]


def measure(impl, template, work, paths, mode, seconds, cap) -> dict:
    """One measurement; the "tmpfs" modes copy the store to work["tmpfs"], the others to work["disk"]."""
    config = fresh_store(template, work["tmpfs" if mode.startswith("tmpfs ") else "disk"])
    processes = 2 if mode == "2 processes" else 1
    threads = 4 if mode == "4 threads" else 1
    purge = mode == "purge"
    if mode.endswith(f"first {FIRST}"):  # from start, no time box
        paths, seconds = paths[:FIRST], 1e9
    specs = [dict(impl=impl, config=config, paths=paths[n::processes], threads=threads,
                  seconds=seconds, purge=purge) for n in range(processes)]
    return _run_workers(specs, work["disk"], cap)


def measure_paired(impl, template, work, paths, cap) -> dict:
    """4 threads against 1 thread, paired burst by burst in one process."""
    spec = dict(impl=impl, config=fresh_store(template, work["disk"]), paths=paths, threads=4,
                seconds=0, purge=False, paired=True)
    return _run_workers([spec], work["disk"], cap)


def _run_workers(specs: list, work: str, cap: float) -> dict:
    """Run one worker process per spec; their results, merged (or why they failed)."""
    procs = []
    for spec in specs:
        spec_path = os.path.join(work, f"spec{len(procs)}.json")
        with open(spec_path, "w") as handle:
            json.dump(spec, handle)
        procs.append(subprocess.Popen([sys.executable, os.path.join(HERE, "worker.py"), spec_path],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=cap)
            if proc.returncode != 0:
                last = (err.strip().splitlines() or ["?"])[-1]
                return {"failed": last[:90]}
            results.append(json.loads(out))
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
            proc.wait()
        return {"failed": f"capped: no result within {cap} s"}
    merged = dict(results[0])
    if "ratios" in merged:  # paired bursts: the worker's own figures
        return merged
    if len(results) > 1:
        merged["decisions"] = sum(r["decisions"] for r in results)
        merged["elapsed"] = max(r["elapsed"] for r in results)
        for k in ("p50", "p99", "max"):
            merged[k] = max(r[k] for r in results if r[k] is not None)
    merged["rate"] = merged["decisions"] / merged["elapsed"] if merged["elapsed"] else 0
    return merged


def _median_round(results: list) -> dict:
    """Of several rounds of one measurement, the one of median rate (or a failure)."""
    done = sorted((r for r in results if "failed" not in r), key=lambda r: r["rate"])
    return done[len(done) // 2] if done else results[0]


def _spread(results: list) -> str:
    """The rates of all rounds, when there were several."""
    done = [r for r in results if "failed" not in r]
    if len(results) < 2:
        return ""
    rates = ", ".join(f"{r['rate']:.0f}" for r in done)
    text = f"  (rounds: {rates}"
    if any(r.get("stall") is not None for r in done):  # a purge: its longest wait in each round
        stalls = ", ".join(_ms(r.get("stall")) for r in done)
        text += f"; stall ms: {stalls}"
    return text + ")"


def _child(r: dict) -> str:
    """Peak RSS of a child process (ours: a fold's copy), when there was one."""
    return f"{r['child_mb']:.0f}" if r.get("child_mb") else "-"


def _ms(value) -> str:
    return "-" if value is None else f"{value * 1000:.2f}"


def _rate_ratio(ours: dict, ref: dict):
    # A reference run that made a handful of decisions in its time box (its purge
    # took the time) gives no meaningful rate to compare with.
    if "failed" in ours or "failed" in ref or not ours.get("rate") or not ref.get("rate") \
            or ref.get("decisions", 0) < 5:
        return None
    return ours["rate"] / ref["rate"]


def _paired(these: list, those: list) -> list:
    """The ratio of rates round by round: each pair was measured seconds apart."""
    ratios = (_rate_ratio(a, b) for a, b in zip(these, those))
    return [r for r in ratios if r is not None]


def _median(values: list):
    if not values:
        return None
    ordered, middle = sorted(values), len(values) // 2
    return ordered[middle] if len(values) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def _round_order(modes: list, round_index: int) -> list:
    """(mode, impl) in the order one round measures them.

    This machine's speed drifts by up to half within seconds to minutes, so
    what is compared is measured side by side: the reference next to ours,
    and our modes next to each other; every other round runs backwards, so
    that a steady drift favours neither side.
    """
    others = [m for m in modes if m not in SIDE_BY_SIDE and m != "purge"]
    order = [(m, impl) for m in modes if m in SIDE_BY_SIDE for impl in ("reference", "ours")]
    order += [(m, "ours") for m in others]
    order += [(m, "reference") for m in others]
    order += [("purge", impl) for impl in ("reference", "ours") if "purge" in modes]
    return order if round_index % 2 == 0 else order[::-1]


def _print_paired(impl: str, paired: dict) -> None:
    label = f"{impl}, 4 threads / 1 thread in bursts: "
    if "failed" in paired:
        print(label + paired["failed"])
    elif not paired["ratios"]:
        print(label + "too few control files for a pair")
    else:
        ratios = sorted(paired["ratios"])
        quarter = len(ratios) // 4
        print(f"{label}{_median(ratios):.2f}  ({len(ratios)} pairs of {paired['burst']} decisions "
              f"in one process; middle half {ratios[quarter]:.2f}-{ratios[-1 - quarter]:.2f})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    parser.add_argument("--prewrite", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--sizes", help="comma-separated store sizes (default 0,10000,100000,1000000)")
    parser.add_argument("--flavours", help="comma-separated dbm flavours (default: all this Python has)")
    parser.add_argument("--modes", help="comma-separated modes (default: all)")
    parser.add_argument("--seconds", type=float, default=1.0, help="time box of each measurement")
    parser.add_argument("--repeat", type=int, default=None,
                        help="rounds of every measurement (default 3; --quick 1); rows show the median round")
    parser.add_argument("--cap", type=float, default=40.0, help="give up a run after this many seconds")
    args = parser.parse_args()
    if args.prewrite:
        prewrite(args.prewrite[0], args.prewrite[1], int(args.prewrite[2]))
        return 0

    try:
        import dbm.gnu  # noqa: F401
        flavours = ["dbm.gnu", "dbm.dumb"]
    except ImportError:
        flavours = ["dbm.dumb"]
    if args.quick:
        sizes, seconds, count, cap = [0, 200], 0.3, 300, 30.0
        repeat = args.repeat or 1
    else:
        sizes = [int(s) for s in (args.sizes or "0,10000,100000,1000000").split(",")]
        seconds, count, cap = args.seconds, 30000, args.cap
        repeat = args.repeat or 3
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
    from pgserver import PostgresServer, from_environment, server_binaries

    pg_info, pg_server = from_environment(), None
    if pg_info is None and server_binaries() is not None:
        try:
            import psycopg  # noqa: F401
            import psycopg2  # noqa: F401  (the reference's driver)
        except ImportError:
            pass
        else:
            flavours.append("postgresql")
    elif pg_info is not None:
        flavours.append("postgresql")
    if args.flavours:
        flavours = [f for f in args.flavours.split(",") if f in flavours]
    modes = [m for m in MODES if not args.modes or m in args.modes.split(",")]
    if not os.path.isdir("/dev/shm"):
        print("no /dev/shm here: the tmpfs rows are left out")
        modes = [m for m in modes if not m.startswith("tmpfs ")]
    print(f"python {sys.version.split()[0]} ({sys.executable}); flavours {', '.join(flavours)}; "
          f"{os.cpu_count()} cores; {seconds} s per measurement")
    # The stores on the disk of the temporary directory; for the tmpfs rows, on /dev/shm,
    # where fsync costs nothing and only the code counts.
    work = {"disk": tempfile.mkdtemp(prefix="greylist-bench-")}
    if any(m.startswith("tmpfs ") for m in modes):
        work["tmpfs"] = tempfile.mkdtemp(prefix="greylist-bench-", dir="/dev/shm")
    print("stores in " + " and ".join(f"{path} ({kind})" for kind, path in work.items()))
    try:
        controls = os.path.join(work["disk"], "controls")
        for flavour in flavours:
            for size in sizes:
                if flavour != "dbm.gnu" and size > 100000:
                    print(f"\n{flavour}, {size:,} triplets: skipped (measured to 100k)")
                    continue
                t0 = time.perf_counter()
                if flavour == "postgresql":
                    if pg_info is None:
                        pg_server = PostgresServer()
                        pg_info = pg_server.conninfo()
                    template = pg_info
                    pg_prewrite(pg_info, size)
                else:
                    template = os.path.join(work["disk"], "template")
                    shutil.rmtree(template, ignore_errors=True)
                    os.mkdir(template)
                    # In a child process, so that this process stays small: a child
                    # inherits its parent's peak RSS figure.
                    subprocess.run([sys.executable, __file__, "--prewrite", template, flavour,
                                    str(size)], check=True)
                shutil.rmtree(controls, ignore_errors=True)
                os.mkdir(controls)
                paths = write_controls(controls, count, size)
                print(f"\n{flavour}, {size:,} triplets (pre-written in {time.perf_counter() - t0:.1f} s)")
                print(f"{'mode':<17} {'impl':<10} {'dec/s':>9} {'ratio':>7} {'p50 ms':>8} {'p99 ms':>8} "
                      f"{'max ms':>8} {'1st ms':>9} {'purge s':>8} {'stall ms':>9} {'RSS MB':>7} {'anon':>7} "
                      f"{'child':>6}")
                # Every mode is measured once per round, in the order of
                # _round_order; each row is the round of median rate.
                rounds: dict = {}
                # The first-decisions and tmpfs rows are gdbm's (and the smoke run's): the
                # reference on dbm.dumb rewrites its index per decision (3,000 of them take
                # minutes at 10k triplets), and PostgreSQL's server keeps its own files.
                these = [m for m in modes if m in MODES[:4] or flavour == "dbm.gnu"
                         or (args.quick and flavour == "dbm.dumb")]
                for round_index in range(repeat):
                    for mode, impl in _round_order(these, round_index):
                        rounds.setdefault((mode, impl), []).append(
                            measure(impl, template, work, paths, mode, seconds, cap))
                for mode in these:
                    rows = {impl: _median_round(rounds[(mode, impl)]) for impl in ("reference", "ours")}
                    # With several rounds, the ratio is the median of the rounds' own ratios.
                    paired = _median(_paired(rounds[(mode, "ours")], rounds[(mode, "reference")]))
                    for impl, r in rows.items():
                        if "failed" in r:
                            print(f"{mode:<17} {impl:<10} {r['failed']}")
                            continue
                        ratio = f"{paired:.2f}x" if impl == "ours" and paired is not None else (
                            "-" if impl == "ours" else "")
                        purge = f"{r['purge']:.2f}" if r.get("purge") is not None else "-"
                        print(f"{mode:<17} {impl:<10} {r['rate']:>9.0f} {ratio:>7} {_ms(r['p50']):>8} "
                              f"{_ms(r['p99']):>8} {_ms(r['max']):>8} {_ms(r['first']):>9} {purge:>8} "
                              f"{_ms(r.get('stall')):>9} {r['rss_mb']:>7.0f} {r['anon_mb']:>7.0f} "
                              f"{_child(r):>6}{_spread(rounds[(mode, impl)])}")
                for mode in ("4 threads", "2 processes"):
                    if mode in these and "1 thread" in these:
                        ratios = _paired(rounds[(mode, "ours")], rounds[("1 thread", "ours")])
                        if ratios:
                            listed = ", ".join(f"{r:.2f}" for r in ratios)
                            print(f"ours, {mode} / 1 thread: {_median(ratios):.2f}"
                                  + (f"  (rounds: {listed})" if len(ratios) > 1 else ""))
                if "4 threads" in these and "1 thread" in these:
                    for impl in ("ours", "reference"):
                        _print_paired(impl, measure_paired(impl, template, work, paths, cap))
    finally:
        for path in work.values():
            shutil.rmtree(path, ignore_errors=True)
        if pg_server is not None:
            pg_server.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
