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
  the purge runs, and the peak RSS of the process.

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
import array
import hashlib
import json
import os
import queue
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from greylist.triplet import client_network, parse_client_ip, triplet_key  # noqa: E402

DAY = 86400
PASSED_TTL = 36 * DAY
NOT_PASSED_TTL = DAY


# --- the workload --------------------------------------------------------------------


def triplet(i: int):
    """Sender, recipient and client IP of pre-written triplet number i."""
    return f"s{i}@bench.example", f"r{i}@bench.example", f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}"


def key_of(i: int) -> str:
    # The /24 network of 10.a.b.c is "10.a.b": computed directly, a million times over.
    return hashlib.md5(f"s{i}@bench.example"f"r{i}@bench.example"f"10.{i >> 16}.{(i >> 8) & 255}"
                       .encode()).hexdigest()


def _check_key_of() -> None:
    sender, recipient, ip = triplet(70000)
    assert key_of(70000) == triplet_key(sender, recipient, client_network(parse_client_ip(ip)))


def state_of(i: int, now: float, rng: random.Random):
    """Which store entry i goes in, and its time: a fifth pending, half expired."""
    table = "greylist_NotPassed" if i % 5 == 0 else "greylist_Passed"
    ttl = NOT_PASSED_TTL if table == "greylist_NotPassed" else PASSED_TTL
    stamp = now - ttl - 3600 - rng.random() * DAY if i % 2 else now - rng.random() * ttl / 2
    return table, int(stamp)


def prewrite(directory: str, flavour: str, size: int) -> None:
    """Write ``size`` entries straight into the store files of the given flavour."""
    _check_key_of()
    now, rng = time.time(), random.Random(size)
    if flavour == "dbm.gnu":
        import dbm.gnu

        dbs = {t: dbm.gnu.open(os.path.join(directory, t), "nf", 0o600)
               for t in ("greylist_Passed", "greylist_NotPassed")}
        for i in range(size):
            table, stamp = state_of(i, now, rng)
            dbs[table][key_of(i)] = str(stamp)
        for db in dbs.values():
            db.close()
        return
    files = {}
    for table in ("greylist_Passed", "greylist_NotPassed"):
        files[table] = (open(os.path.join(directory, table + ".dat"), "wb"),
                        open(os.path.join(directory, table + ".dir"), "w", encoding="latin-1"), [0])
    for i in range(size):
        table, stamp = state_of(i, now, rng)
        dat, index, count = files[table]
        pos = count[0] * 512
        dat.seek(pos)
        dat.write(str(stamp).encode())
        index.write(f"{key_of(i)!r}, ({pos}, 10)\n")
        count[0] += 1
    for dat, index, _ in files.values():
        dat.close()
        index.close()


def write_controls(directory: str, count: int, size: int) -> list:
    """Control files: 70% a fresh known triplet of the store (or a repeat), 30% new."""
    rng = random.Random(1)
    known = [i for i in range(size) if i % 2 == 0 and i % 5 != 0]
    paths, news = [], []
    for n in range(count):
        if rng.random() < 0.7 and (known or news):
            sender, recipient, ip = triplet(rng.choice(known)) if known else rng.choice(news)
        else:
            sender, recipient, ip = (f"new{n}@fresh.example", f"user{n % 97}@bench.example",
                                     f"203.0.{n % 250}.{n % 199}")
            news.append((sender, recipient, ip))
        path = os.path.join(directory, f"C{n}")
        with open(path, "w") as handle:
            handle.write(f"uesmtp\ns{sender}\nfdns; mx (mx [{ip}])\nOTCPREMOTEIP={ip}\n"
                         f"M{n:016X}\nr{recipient}\nRrfc822;{recipient}\nN\n")
        paths.append(path)
    return paths


# --- one measured process ------------------------------------------------------------


def _load(impl: str, config: str, purge: bool):
    """The filter function of one implementation, initialised on ``config``."""
    if impl == "reference":
        import courier.config

        courier.config._standard_config_paths = [config]
        from pythonfilter import greylist as reference

        reference.init_filter()
        if not purge:
            for db in (reference._senders_passed, reference._senders_not_passed):
                db.last_purged = time.time()
        return reference.do_filter, None
    import greylist

    greylist.initFilter(config_paths=[config])
    the_filter = greylist._filter
    if not purge:
        the_filter.upkeep.mode = "never"
    window = {}
    upkeep = the_filter.upkeep  # it starts the background purge
    original = upkeep.purge

    def timed_purge(now):
        window["start"] = time.perf_counter()
        try:
            return original(now)
        finally:
            window["end"] = time.perf_counter()

    upkeep.purge = timed_purge
    return greylist.doFilter, window


def _memory() -> dict:
    """Peak resident set (VmHWM) and current anonymous memory (RssAnon), in MB."""
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            name, _, rest = line.partition(":")
            if name in ("VmHWM", "RssAnon"):
                values[name] = int(rest.split()[0]) / 1024
    return values


def _children_peak() -> float:
    """The largest peak RSS (VmHWM, MB) among this process's living children (a fold's copy)."""
    peak = 0.0
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return peak
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/children") as children:
                pids = children.read().split()
        except OSError:
            continue
        for pid in pids:
            try:
                with open(f"/proc/{pid}/status") as status:
                    for line in status:
                        if line.startswith("VmHWM:"):
                            peak = max(peak, int(line.split()[1]) / 1024)
            except OSError:
                continue
    return peak


def paired_threads(do_filter, paths: list, threads: int, budget: float = 8.0) -> dict:
    """4 threads against 1, in bursts a few tens of milliseconds apart, in one process.

    Rounds of separate processes seconds apart compare two measurements
    taken at different machine speeds (this machine drifts by up to half
    within seconds).  Here bursts of one thread and of ``threads`` threads
    alternate on consecutive, disjoint slices of the same workload, on
    threads that stay alive between bursts; every other pair runs the
    threads first.  The median of the pairs' ratios is the figure.  At most
    20 pairs, and as many as fit in ``budget`` seconds (the reference at
    100k dbm.dumb triplets makes a few decisions a second), but at least 3.
    """
    t0 = time.perf_counter()
    warmed = 0
    while warmed < min(200, len(paths) // 2) and (warmed < 5 or time.perf_counter() - t0 < 1.0):
        do_filter("", [paths[warmed]])
        warmed += 1
    rate = warmed / (time.perf_counter() - t0)
    left = len(paths) - warmed
    burst = max(20, min(int(rate * 0.05), left // 16))  # about 50 ms of one thread
    pairs = min(20, left // (2 * burst), max(3, int(budget * rate / (2 * burst))))
    inboxes = [queue.SimpleQueue() for _ in range(threads)]
    done: queue.SimpleQueue = queue.SimpleQueue()

    def serve(inbox) -> None:
        while True:
            chunk = inbox.get()
            if chunk is None:
                return
            for path in chunk:
                do_filter("", [path])
            done.put(None)

    pool = [threading.Thread(target=serve, args=(inbox,)) for inbox in inboxes]
    for thread in pool:
        thread.start()

    def run(chunk: list, count: int) -> float:
        start = time.perf_counter()
        for n in range(count):
            inboxes[n].put(chunk[n::count])
        for _ in range(count):
            done.get()
        return len(chunk) / (time.perf_counter() - start)

    ratios, at = [], warmed
    for n in range(pairs):
        first, second = paths[at:at + burst], paths[at + burst:at + 2 * burst]
        at += 2 * burst
        if n % 2 == 0:
            one, many = run(first, 1), run(second, threads)
        else:
            many, one = run(first, threads), run(second, 1)
        ratios.append(many / one)
    for inbox in inboxes:
        inbox.put(None)
    for thread in pool:
        thread.join()
    return {"ratios": ratios, "burst": burst}


def worker(spec: dict) -> dict:
    started = time.perf_counter()
    do_filter, window = _load(spec["impl"], spec["config"], spec["purge"])
    sys.stderr = open(os.devnull, "w")  # the decision log lines cost a write each, as in Courier
    if spec.get("paired"):
        return paired_threads(do_filter, spec["paths"], spec["threads"])
    peak_anon, peak_child = [0.0], [0.0]
    sampling = threading.Event()

    def sample() -> None:
        # Anonymous memory is what the process itself holds; VmHWM adds the
        # file pages it maps (the reference maps its gdbm files whole).
        while not sampling.wait(0.02):
            peak_anon[0] = max(peak_anon[0], _memory().get("RssAnon", 0.0))
            peak_child[0] = max(peak_child[0], _children_peak())

    threading.Thread(target=sample, daemon=True).start()
    opened = time.perf_counter() - started
    paths = spec["paths"]
    threads = spec["threads"]
    deadline = time.perf_counter() + spec["seconds"]
    # Start and latency of every decision, as flat arrays of floats: a purge
    # at 1M triplets sees 100,000 decisions, and tuples of them would add
    # 10 MB to the peak RSS measured here.
    starts = [array.array("d") for _ in range(threads)]
    waits = [array.array("d") for _ in range(threads)]
    first = {}

    def purging() -> bool:
        return window is not None and "start" in window and "end" not in window

    def run(n: int) -> None:
        # Past the time box, mail keeps coming while our background purge
        # runs (up to the cap): its last steps, under the lock, come at its
        # end, and a decision waiting for them must be seen.
        mine = paths[n::threads]
        index = 0
        while True:
            t0 = time.perf_counter()
            do_filter("", [mine[index % len(mine)]])
            t1 = time.perf_counter()
            if n == 0 and index == 0:
                first["latency"] = t1 - t0
            starts[n].append(t0)
            waits[n].append(t1 - t0)
            index += 1
            if t1 > deadline and not purging() or (index >= len(mine) and not spec["purge"]):
                break

    start = time.perf_counter()
    workers = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - start
    # Let our background purge finish, to report its duration.
    while purging():
        time.sleep(0.01)
    # The memory figures first: sorting the latencies below is the bench's own.
    sampling.set()
    memory = _memory()
    latencies = sorted(lat for per in waits for lat in per)
    result = {
        "decisions": len(latencies), "elapsed": elapsed, "open": opened,
        "first": first.get("latency"),
        "p50": latencies[len(latencies) // 2] if latencies else None,
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else None,
        "max": latencies[-1] if latencies else None,
    }
    result["rss_mb"] = memory.get("VmHWM", 0.0)
    result["anon_mb"] = max(peak_anon[0], memory.get("RssAnon", 0.0))
    result["child_mb"] = peak_child[0]
    if window is not None and "start" in window:
        result["purge"] = window["end"] - window["start"]
        during = sorted(((lat, t0 - window["start"]) for n in range(threads)
                         for t0, lat in zip(starts[n], waits[n])
                         if t0 + lat > window["start"] and t0 < window["end"]), reverse=True)
        result["stall"] = during[0][0] if during else 0.0
        if os.environ.get("BENCH_STALLS"):  # where in the purge the longest waits came
            worst = during[:5]
            sys.__stderr__.write(f"purge {window['end'] - window['start']:.2f} s, longest waits (ms at s): "
                             + ", ".join(f"{lat * 1000:.1f} at {at:.2f}" for lat, at in worst) + "\n")
    elif spec["impl"] == "reference" and spec["purge"]:
        result["purge"] = result["stall"] = first.get("latency")
    return result


# --- the orchestra -------------------------------------------------------------------


def _config(path: str, store) -> str:
    """A pythonfilter-modules.conf for a dbm directory, or a PostgreSQL connection (a dict)."""
    if isinstance(store, dict):
        ttldb = "type = 'psycopg2'\n" + "".join(f"{k} = {v!r}\n" for k, v in store.items())
    else:
        ttldb = f"type = 'dbm'\ndir = {store!r}\n"
    with open(path, "w") as handle:
        handle.write(f"[greylist.py]\ngreylist_time = 300\n[ttldb]\n{ttldb}")
    return path


# --- PostgreSQL ----------------------------------------------------------------------


def _pg(info: dict):
    import psycopg

    return psycopg.connect(host=info["host"], port=info["port"], dbname=info["db"], user=info["user"],
                           password=info["password"], autocommit=True)


def pg_prewrite(info: dict, size: int) -> None:
    """Template tables with ``size`` entries; each measurement starts from a copy."""
    now, rng = time.time(), random.Random(size)
    with _pg(info) as conn:
        for table in ("greylist_Passed", "greylist_NotPassed"):
            conn.execute(f"DROP TABLE IF EXISTS {table}, bench_{table}")
            conn.execute(f"CREATE TABLE bench_{table} (id CHAR(64) NOT NULL, value BIGINT NOT NULL)")
        rows: dict = {"greylist_Passed": [], "greylist_NotPassed": []}
        for i in range(size):
            table, stamp = state_of(i, now, rng)
            rows[table].append((key_of(i), stamp))
        for table, entries in rows.items():  # one COPY at a time on a connection
            with conn.cursor().copy(f"COPY bench_{table} (id, value) FROM STDIN") as copy:
                for row in entries:
                    copy.write_row(row)


def pg_reset(info: dict) -> None:
    """The reference's tables (no index of ours), filled from the templates."""
    with _pg(info) as conn:
        for table in ("greylist_Passed", "greylist_NotPassed"):
            conn.execute(f"DROP TABLE IF EXISTS {table}")
            conn.execute(f"CREATE TABLE {table} (id CHAR(64) NOT NULL, value BIGINT NOT NULL, "
                         f"PRIMARY KEY(id))")
            conn.execute(f"INSERT INTO {table} SELECT * FROM bench_{table}")
            conn.execute(f"ANALYZE {table}")


def _fresh_store(template, work) -> str:
    """A copy of the pre-written store (dbm files, or PostgreSQL tables); its config file."""
    if isinstance(template, dict):
        pg_reset(template)
        return _config(os.path.join(work, "bench.conf"), template)
    store = os.path.join(work, "store")
    shutil.rmtree(store, ignore_errors=True)
    shutil.copytree(template, store)
    return _config(os.path.join(work, "bench.conf"), store)


def measure(impl, template, work, paths, mode, seconds, cap) -> dict:
    config = _fresh_store(template, work)
    processes = 2 if mode == "2 processes" else 1
    threads = 4 if mode == "4 threads" else 1
    purge = mode == "purge"
    specs = [dict(impl=impl, config=config, paths=paths[n::processes], threads=threads,
                  seconds=seconds, purge=purge) for n in range(processes)]
    return _run_workers(specs, work, cap)


def measure_paired(impl, template, work, paths, cap) -> dict:
    """4 threads against 1 thread, paired burst by burst in one process."""
    spec = dict(impl=impl, config=_fresh_store(template, work), paths=paths, threads=4,
                seconds=0, purge=False, paired=True)
    return _run_workers([spec], work, cap)


def _run_workers(specs: list, work: str, cap: float) -> dict:
    """Run one worker process per spec; their results, merged (or why they failed)."""
    procs = []
    for spec in specs:
        spec_path = os.path.join(work, f"spec{len(procs)}.json")
        with open(spec_path, "w") as handle:
            json.dump(spec, handle)
        procs.append(subprocess.Popen([sys.executable, __file__, "--worker", spec_path],
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
    throughput = [m for m in modes if m != "purge"]
    order = [("1 thread", impl) for impl in ("reference", "ours") if "1 thread" in throughput]
    order += [(m, "ours") for m in throughput if m != "1 thread"]
    order += [(m, "reference") for m in throughput if m != "1 thread"]
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
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--prewrite", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--sizes", help="comma-separated store sizes (default 0,10000,100000,1000000)")
    parser.add_argument("--flavours", help="comma-separated dbm flavours (default: all this Python has)")
    parser.add_argument("--modes", help="comma-separated modes (default: all)")
    parser.add_argument("--seconds", type=float, default=1.0, help="time box of each measurement")
    parser.add_argument("--tmpfs", action="store_true",
                        help="keep both stores on tmpfs (/dev/shm), where fsync costs nothing: only the "
                             "code counts")
    parser.add_argument("--repeat", type=int, default=None,
                        help="rounds of every measurement (default 3; --quick 1); rows show the median round")
    parser.add_argument("--cap", type=float, default=40.0, help="give up a run after this many seconds")
    args = parser.parse_args()
    if args.prewrite:
        prewrite(args.prewrite[0], args.prewrite[1], int(args.prewrite[2]))
        return 0
    if args.worker:
        with open(args.worker) as handle:
            print(json.dumps(worker(json.load(handle))))
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
    modes = ["1 thread", "4 threads", "2 processes", "purge"]
    if args.modes:
        modes = [m for m in modes if m in args.modes.split(",")]
    print(f"python {sys.version.split()[0]} ({sys.executable}); flavours {', '.join(flavours)}; "
          f"{os.cpu_count()} cores; {seconds} s per measurement")
    work = tempfile.mkdtemp(prefix="greylist-bench-", dir="/dev/shm" if args.tmpfs else None)
    print(f"stores in {work} ({'tmpfs' if args.tmpfs else 'the disk of the temporary directory'})")
    try:
        controls = os.path.join(work, "controls")
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
                    template = os.path.join(work, "template")
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
                print(f"{'mode':<12} {'impl':<10} {'dec/s':>9} {'ratio':>7} {'p50 ms':>8} {'p99 ms':>8} "
                      f"{'max ms':>8} {'1st ms':>9} {'purge s':>8} {'stall ms':>9} {'RSS MB':>7} {'anon':>7} "
                      f"{'child':>6}")
                # Every mode is measured once per round, in the order of
                # _round_order; each row is the round of median rate.
                rounds: dict = {}
                for round_index in range(repeat):
                    for mode, impl in _round_order(modes, round_index):
                        rounds.setdefault((mode, impl), []).append(
                            measure(impl, template, work, paths, mode, seconds, cap))
                for mode in modes:
                    rows = {impl: _median_round(rounds[(mode, impl)]) for impl in ("reference", "ours")}
                    # With several rounds, the ratio is the median of the rounds' own ratios.
                    paired = _median(_paired(rounds[(mode, "ours")], rounds[(mode, "reference")]))
                    for impl, r in rows.items():
                        if "failed" in r:
                            print(f"{mode:<12} {impl:<10} {r['failed']}")
                            continue
                        ratio = f"{paired:.1f}x" if impl == "ours" and paired is not None else (
                            "-" if impl == "ours" else "")
                        purge = f"{r['purge']:.2f}" if r.get("purge") is not None else "-"
                        print(f"{mode:<12} {impl:<10} {r['rate']:>9.0f} {ratio:>7} {_ms(r['p50']):>8} "
                              f"{_ms(r['p99']):>8} {_ms(r['max']):>8} {_ms(r['first']):>9} {purge:>8} "
                              f"{_ms(r.get('stall')):>9} {r['rss_mb']:>7.0f} {r['anon_mb']:>7.0f} "
                              f"{_child(r):>6}{_spread(rounds[(mode, impl)])}")
                for mode in ("4 threads", "2 processes"):
                    if mode in modes and "1 thread" in modes:
                        ratios = _paired(rounds[(mode, "ours")], rounds[("1 thread", "ours")])
                        if ratios:
                            listed = ", ".join(f"{r:.2f}" for r in ratios)
                            print(f"ours, {mode} / 1 thread: {_median(ratios):.2f}"
                                  + (f"  (rounds: {listed})" if len(ratios) > 1 else ""))
                if "4 threads" in modes and "1 thread" in modes:
                    for impl in ("ours", "reference"):
                        _print_paired(impl, measure_paired(impl, template, work, paths, cap))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if pg_server is not None:
            pg_server.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
