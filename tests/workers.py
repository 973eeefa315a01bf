"""Programs the tests run as separate processes (python tests/workers.py NAME ...)."""

from __future__ import annotations

import os
import random
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from greylist.filter import GreylistFilter  # noqa: E402
from greylist.settings import Settings, load_settings  # noqa: E402
from greylist.stores import NOT_PASSED_TABLE, PASSED_TABLE, open_store  # noqa: E402
from greylist.stores.dbm import DbmStore  # noqa: E402


def replay(directory: str, flavour: str, threads: int, *control_paths: str) -> None:
    """Each thread decides every control file once, all in the same order, all starting together."""
    settings = Settings(greylist_time=0, db_dir=directory)
    _replay(settings, DbmStore(directory, flavour=flavour), threads, control_paths)


def replay_config(config: str, threads: int, *control_paths: str) -> None:
    """The same, on the store a configuration file names (PostgreSQL)."""
    settings = load_settings([config])
    _replay(settings, open_store(settings), threads, control_paths)


def _replay(settings, store, threads, control_paths) -> None:
    """Print how many decisions greylisted, how many failed, and the first failures.

    The threads start when a line arrives on stdin (after this process printed
    ``ready``), so that every worker of every process decides the same triplet
    at about the same time: without exclusion, two of them would both see it
    as new and both greylist it.
    """
    greylist = GreylistFilter(settings, store, log=lambda line: None, purge="never")
    counts = []
    errors = []
    go = threading.Event()

    def run() -> None:
        go.wait()
        greylisted = 0
        for path in control_paths:
            try:
                reply = greylist.do_filter("", [path])
            except BaseException as error:  # must never happen
                errors.append(repr(error))
                continue
            if reply.startswith("451 4.7.1"):
                greylisted += 1
            elif reply != "":
                errors.append(reply)
        counts.append(greylisted)

    workers = [threading.Thread(target=run) for _ in range(int(threads))]
    for worker in workers:
        worker.start()
    print("ready", flush=True)
    sys.stdin.readline()
    go.set()
    for worker in workers:
        worker.join()
    store.close()
    print(sum(counts), len(errors), *errors[:3], sep="\n", flush=True)


def crash_writer(directory: str, flavour: str, seed: str) -> None:
    """Write forever, acknowledging each committed change on stdout; the test kills us."""
    if int(seed) % 2:  # every other round, gdbm folds run in a child process, as for large files
        from greylist.stores.dbm import fold_copy

        fold_copy.IN_PROCESS_BELOW = 0
    store = DbmStore(directory, flavour=flavour)
    rng = random.Random(int(seed))
    pending = []
    out = os.fdopen(1, "wb", buffering=0)
    step = 0
    now = 1_790_000_000
    while True:
        step += 1
        if pending and rng.random() < 0.4:
            key = pending.pop(rng.randrange(len(pending)))
            with store.transaction() as tx:
                tx.set(PASSED_TABLE, key, now + step)
                tx.delete(NOT_PASSED_TABLE, key)
            out.write(f"P {key}\n".encode())
        else:
            key = f"{rng.getrandbits(128):032x}"
            with store.transaction() as tx:
                tx.set(NOT_PASSED_TABLE, key, now + step)
            pending.append(key)
            out.write(f"N {key}\n".encode())
        if step % 97 == 0:
            store.compact()


if __name__ == "__main__":
    {"replay": replay, "replay_config": replay_config,
     "crash_writer": crash_writer}[sys.argv[1]](*sys.argv[2:])
