"""Where a decision's time goes: user and kernel time, ours and the reference's, and ours by phase.

    python bench/profile.py                 # 1M gdbm triplets on tmpfs, 20,000 decisions; ~2 minutes
    python bench/profile.py --size 100000   # a smaller store

Both stores are written into /dev/shm (tmpfs: fsync costs nothing, so
only the code and its system calls count), as run.py's "tmpfs" rows. Each
measurement runs in a process of its own on a fresh copy of the store,
with the decision line on (written to /dev/null), as in Courier.

1. ``os.times()`` around the decisions: microseconds of user and kernel
   time per decision, for ours and the reference, twice each in turn.
2. Ours by phase: the filter's own steps called one by one on the same
   messages (read the control file, gather the facts, key the message,
   look the keys up before the lock, take the lock, read, decide, write,
   let go, the decision line), each timed with ``perf_counter_ns``.  The
   timing adds about 0.1 us a phase.
3. With valgrind installed: user-space instructions per decision, ours and
   the reference's, counted by callgrind (the count of 300 + N decisions
   less that of 300, over N; ``--instructions N``, 2,000 by default, 0 skips
   it; the four counts run at once).  The machine's drift does not move
   this figure, so it shows a change of the code where the timings above
   cannot; kernel time is not in it.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from workload import prewrite, write_config, write_controls  # noqa: E402

MEASURE = r'''
import json, os, shutil, sys, time
sys.path.insert(0, {here!r})
import worker
from workload import write_config
impl, template, controls, count, place = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
store = os.path.join(place, "store")  # a place of its own: several measurements may run at once
shutil.rmtree(store, ignore_errors=True)
shutil.copytree(template, store)
config = write_config(os.path.join(place, "bench.conf"), store)
do_filter, window = worker._load(impl, config, False)
sys.stderr = open(os.devnull, "w")
paths = [os.path.join(controls, f"C{{n}}") for n in range(count)]
before, started = os.times(), time.perf_counter()
for path in paths:
    do_filter("", [path])
after, wall = os.times(), time.perf_counter() - started
print(json.dumps({{"wall": wall / count * 1e6, "user": (after.user - before.user) / count * 1e6,
                  "sys": (after.system - before.system) / count * 1e6}}))
'''

PHASES = r'''
import json, os, shutil, sys, time
sys.path.insert(0, {here!r})
import worker
template, controls, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
work = os.path.dirname(template)
store = os.path.join(work, "store")
shutil.rmtree(store, ignore_errors=True)
shutil.copytree(template, store)
worker._load("ours", os.path.join(work, "bench.conf"), False)
import greylist
from greylist import policy
from greylist.decision_line import Verdict
from greylist.envelope import read_envelope
from greylist.filter import read_stored
from greylist.tables import NOT_PASSED_TABLE, PASSED_TABLE
f = greylist._filter
sys.stderr = open(os.devnull, "w")
spent = {{}}
clock = time.perf_counter_ns
def lap(name, then):
    now = clock()
    spent[name] = spent.get(name, 0) + now - then
    return now
for n in range(count):
    t = clock()
    envelope = read_envelope([os.path.join(controls, f"C{{n}}")]); t = lap("read the control file", t)
    facts = f.exemptions.facts(envelope); t = lap("gather the facts", t)
    now = f.clock()
    request = policy.decide_message(facts, None, now, f.rules); t = lap("rules 1-7", t)
    keys = f.keys.of_message(facts.sender, request.recipients, facts.address); t = lap("key the message", t)
    f.store.prefetch((NOT_PASSED_TABLE, PASSED_TABLE), keys.unique); t = lap("look up before the lock (*)", t)
    tx = f.store.transaction(); tx.__enter__(); t = lap("take the lock", t)
    stored = read_stored(tx, keys); t = lap("read under the lock", t)
    decision = policy.decide_stored(request, stored, now, f.rules); t = lap("rules 8-12", t)
    tx.write(decision.writes); t = lap("write", t)
    tx.__exit__(None, None, None); t = lap("journal, let go of the lock", t)
    line = Verdict(decision, facts).log_line(); t = lap("the decision line", t)
    f.log(line); t = lap("write the decision line", t)
print(json.dumps({{name: value / count / 1000 for name, value in spent.items()}}))
'''


def _run(script: str, *args: str) -> dict:
    result = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                            timeout=600)
    if result.returncode != 0:
        raise SystemExit(f"measurement failed: {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def instructions(impl: str, template: str, controls: str, count: int, place: str) -> int:
    """User-space instructions of a measurement's whole process, counted by callgrind."""
    os.makedirs(place, exist_ok=True)
    # (a child the filter forks, courier-config say, would report a count of its own)
    result = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                             "--child-silent-after-fork=yes",
                             sys.executable, "-c", MEASURE.format(here=HERE), impl, template, controls,
                             str(count), place], capture_output=True, text=True, timeout=1200,
                            env=dict(os.environ, PYTHONHASHSEED="0"))  # the same dict layouts each run
    found = re.search(r"Collected : (\d+)", result.stderr)
    if result.returncode != 0 or found is None:
        raise SystemExit(f"callgrind failed: {result.stderr[-2000:]}")
    return int(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=1_000_000, help="pre-written triplets (default 1M)")
    parser.add_argument("--decisions", type=int, default=20000, help="decisions measured (default 20,000)")
    parser.add_argument("--instructions", type=int, default=2000, metavar="N",
                        help="decisions whose instructions callgrind counts (default 2,000; 0: none)")
    args = parser.parse_args()
    try:
        import dbm.gnu  # noqa: F401
    except ImportError:
        raise SystemExit("this Python has no dbm.gnu: run it with Debian's /usr/bin/python3 "
                         "and python3-gdbm") from None
    work = tempfile.mkdtemp(prefix="greylist-profile-", dir="/dev/shm")
    try:
        template = os.path.join(work, "template")
        os.mkdir(template)
        prewrite(template, "dbm.gnu", args.size)
        controls = os.path.join(work, "controls")
        os.mkdir(controls)
        write_controls(controls, max(args.decisions, 300 + args.instructions), args.size)
        write_config(os.path.join(work, "bench.conf"), os.path.join(work, "store"))
        measure = MEASURE.format(here=HERE)
        print(f"python {sys.version.split()[0]}; {args.size:,} gdbm triplets on tmpfs; "
              f"{args.decisions:,} decisions each")
        for _ in range(2):
            for impl in ("ours", "reference"):
                took = _run(measure, impl, template, controls, str(args.decisions), work)
                print(f"{impl:<10} {took['wall']:5.1f} us a decision: user {took['user']:4.1f}, "
                      f"kernel {took['sys']:4.1f}")
        phases = _run(PHASES.format(here=HERE), template, controls, str(args.decisions))
        print("ours by phase (us):")
        for name, value in phases.items():
            print(f"  {name:<30} {value:5.2f}")
        print(f"  {'all':<30} {sum(phases.values()):5.2f}")
        print("  (*) only when another process wrote since the last hold; alone, the lookups are made "
              "under the lock")
        if not args.instructions:
            return 0
        if shutil.which("valgrind") is None:
            print("instructions: not counted (install valgrind)")
            return 0
        # The four counts at once, each in a place of its own: callgrind is slow, and they do not
        # disturb one another's count as they would a timing.
        runs = [(impl, n) for impl in ("ours", "reference") for n in (300, 300 + args.instructions)]
        with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            counted = dict(zip(runs, pool.map(
                lambda run: instructions(run[0], template, controls, run[1],
                                         os.path.join(work, f"count-{run[0]}-{run[1]}")), runs)))
        for impl in ("ours", "reference"):
            few, many = counted[(impl, 300)], counted[(impl, 300 + args.instructions)]
            print(f"{impl:<10} {(many - few) / args.instructions / 1000:5.1f}k instructions a decision "
                  f"(callgrind, {args.instructions:,} decisions)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
