"""DNS list servers for the tests: Debian's rbldnsd on a loopback port, and UDP servers that misbehave.

The zones (``WL`` a DNSWL, ``BL`` a DNSBL) list IPv4 and IPv6 clients; the
tests use the addresses below.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time

from host import missing_tool

WL, BL = "wl.test", "bl.test"
WL_V4, WL_V6 = "192.0.2.10", "2001:db8::10"  # on the DNSWL (answer 127.0.0.2)
BL_V4, BL_V6 = "192.0.2.99", "2001:db8::99"  # on the DNSBL (answer 127.0.0.4)
REFUSED_V4 = "198.51.100.7"  # the DNSBL answers 127.255.255.254: "query refused", not a listing
UNLISTED_V4 = "203.0.113.5"
BOTH_V4 = "192.0.2.55"  # on both lists

_ZONE_FILES = {
    "wl4": f":127.0.0.2:listed\n{WL_V4}\n127.0.0.1\n{BOTH_V4}\n",
    "wl6": f":127.0.0.2:listed\n{WL_V6}\n",
    # A SOA gives "not listed" answers a negative TTL of 30 s.
    "bl4": f"$SOA 60 ns.bl.test. hostmaster.bl.test. 1 600 300 86400 30\n:127.0.0.4:spam\n{BL_V4}\n"
           f"{BOTH_V4}\n{REFUSED_V4} :127.255.255.254:refused\n127.0.0.2\n",  # the usual test entry
    "bl6": f":127.0.0.4:spam\n{BL_V6}\n",
}
_DATASETS = [f"{WL}:ip4set:wl4", f"{WL}:ip6trie:wl6", f"{BL}:ip4set:bl4", f"{BL}:ip6trie:bl6"]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Rbldnsd:
    """rbldnsd serving the test zones on 127.0.0.1:<port>, until stop()."""

    def __init__(self, directory: str) -> None:
        program = shutil.which("rbldnsd") or shutil.which("rbldnsd", path="/usr/sbin:/sbin")
        if program is None:
            missing_tool("Debian's rbldnsd, a DNS list server", "apt-get install rbldnsd")
        os.chmod(directory, 0o755)  # rbldnsd reads as the user it becomes
        for name, text in _ZONE_FILES.items():
            path = os.path.join(directory, name)
            with open(path, "w") as handle:
                handle.write(text)
            os.chmod(path, 0o644)
        self.port = free_udp_port()
        user = ["-u", "nobody"] if os.geteuid() == 0 else []  # it refuses to run as root
        command = [program, "-n", *user, "-w", directory, "-b", f"127.0.0.1/{self.port}", *_DATASETS]
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        started = []
        for line in self.proc.stdout:  # it says "started" once it answers
            started.append(line)
            if "started" in line:
                break
        if self.proc.poll() is not None or not started or "started" not in started[-1]:
            raise RuntimeError("rbldnsd did not start: " + "".join(started))
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()  # never let its pipe fill

    @property
    def server(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


class ScriptedServer:
    """A UDP DNS server on loopback that answers each query (its wire bytes) with what
    ``script`` returns: datagrams, each sent from the server's own address or, marked
    ``elsewhere``, from another port of the same host (to the client's port all the same)."""

    def __init__(self, script) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.other.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.queries = 0
        self._script = script
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(65535)
            except OSError:
                return
            self.queries += 1
            for datagram, elsewhere in self._script(data):
                (self.other if elsewhere else self.sock).sendto(datagram, peer)

    @property
    def server(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self.sock.close()
        self.other.close()


class MisbehavingServer(ScriptedServer):
    """A UDP 'DNS server' on loopback that never answers, or answers garbage."""

    def __init__(self, reply: bytes = b"") -> None:
        # The query's id, then the garbage.
        super().__init__(lambda query: [(query[:2] + reply, False)] if reply else [])


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return predicate()
