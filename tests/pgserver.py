"""A real, throw-away PostgreSQL server on a loopback port, for tests and benchmarks.

Uses the server binaries of Debian's postgresql package (.ci/run installs it).
initdb refuses to run as root, so as root the cluster belongs to the
``postgres`` user.  Set GREYLIST_TEST_PG="host=... port=... dbname=... user=...
password=..." to use an existing server instead.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from typing import Optional


def server_binaries() -> Optional[str]:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(found[-1]) if found else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PostgresServer:
    """initdb, start, create a role and a database; stop and remove on close."""

    def __init__(self) -> None:
        self.bindir = server_binaries()
        if self.bindir is None:
            raise RuntimeError("no PostgreSQL server binaries (apt-get install postgresql)")
        self.root = tempfile.mkdtemp(prefix="greylist-pg-")
        os.chmod(self.root, 0o755)
        self.data = os.path.join(self.root, "data")
        self.port = _free_port()
        self.user = "greylist"
        self.password = "greylist-test"
        self.dbname = "greylist"
        self._as = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync")
        self.start()
        self.psql(f"CREATE ROLE {self.user} LOGIN PASSWORD '{self.password}'")
        self.psql(f"CREATE DATABASE {self.dbname} OWNER {self.user}")

    def _run(self, program: str, *args: str) -> str:
        result = subprocess.run([*self._as, os.path.join(self.bindir, program), *args],
                                capture_output=True, text=True, timeout=120, cwd=self.root)
        if result.returncode != 0:
            raise RuntimeError(f"{program} failed: {result.stderr.strip()}")
        return result.stdout

    def start(self) -> None:
        self._run("pg_ctl", "-D", self.data, "-l", os.path.join(self.root, "server.log"), "-w",
                  "-o", f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                        "-c fsync=off -c max_connections=100", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        return self._run("psql", "-h", self.root, "-p", str(self.port), "-U", "postgres", "-d", dbname,
                         "-v", "ON_ERROR_STOP=1", "-At", "-c", sql)

    def conninfo(self) -> dict:
        return {"host": "127.0.0.1", "port": self.port, "db": self.dbname, "user": self.user,
                "password": self.password}

    def close(self) -> None:
        try:
            self.stop()
        except RuntimeError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)


def from_environment() -> Optional[dict]:
    """Connection settings from GREYLIST_TEST_PG, if set."""
    text = os.environ.get("GREYLIST_TEST_PG")
    if not text:
        return None
    pairs = dict(part.split("=", 1) for part in text.split())
    return {"host": pairs.get("host", "127.0.0.1"), "port": int(pairs.get("port", 5432)),
            "db": pairs.get("dbname", "greylist"), "user": pairs.get("user", "greylist"),
            "password": pairs.get("password", "")}


def write_pg_config(path, info: dict, **greylist_settings) -> str:
    """A pythonfilter-modules.conf naming the server of ``info``, with greylist settings."""
    lines = ["[greylist.py]"] + [f"{k} = {v!r}" for k, v in greylist_settings.items()]
    lines += ["[ttldb]", "type = 'psycopg2'"] + [f"{k} = {v!r}" for k, v in info.items()]
    with open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return str(path)
