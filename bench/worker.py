"""One measured process of the benchmark: a filter loaded as the dispatcher loads it, deciding.

``python bench/worker.py SPEC.json`` prints the measurement as JSON (run.py starts it).
"""

from __future__ import annotations

import array
import json
import os
import queue
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


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
    import courier.config

    import greylist

    # The filter writes its status file in Courier's localstatedir: on a Courier host the
    # running dispatcher's.  The benchmark's goes beside its store instead.
    courier.config.localstatedir = os.path.dirname(config)
    os.makedirs(os.path.join(courier.config.localstatedir, "allfilters"), exist_ok=True)
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


if __name__ == "__main__":
    with open(sys.argv[1]) as handle:
        print(json.dumps(worker(json.load(handle))))
