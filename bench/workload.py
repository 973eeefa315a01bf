"""The benchmark's workload: pre-written stores, Courier control files, fresh copies of a store.

Used by run.py (which writes them) and worker.py (which decides on them).
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from greylist.triplet import client_network, parse_client_ip, triplet_key  # noqa: E402

DAY = 86400
PASSED_TTL = 36 * DAY
NOT_PASSED_TTL = DAY


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


def write_config(path: str, store) -> str:
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


def fresh_store(template, work) -> str:
    """A copy of the pre-written store (dbm files, or PostgreSQL tables); its config file."""
    if isinstance(template, dict):
        pg_reset(template)
        return write_config(os.path.join(work, "bench.conf"), template)
    store = os.path.join(work, "store")
    shutil.rmtree(store, ignore_errors=True)
    shutil.copytree(template, store)
    return write_config(os.path.join(work, "bench.conf"), store)
