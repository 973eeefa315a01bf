"""courier-pythonfilter 3.0.6's unmodified ``pythonfilter`` dispatcher, driven as courierfilter drives it.

It reads pythonfilter.conf from /etc, /usr/local/etc or Courier's sysconfdir,
which courier.config asks the ``courier-config`` program for; a
``courier-config`` on PATH points sysconfdir and localstatedir at the test's
directory, as a Courier installation there would, and where the host has a
pythonfilter.conf of its own the dispatcher runs in a mount namespace that
covers it with the test's (host.py).  Each message is one connection to its
socket, and the dispatcher decides it in a new thread, as on a mail server.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time

import pytest
from host import dispatcher_command, greylist_command

BIN = os.path.dirname(sys.executable)


def greylist(*args):
    return subprocess.run(greylist_command(*args), capture_output=True, text=True, timeout=60)


class Dispatcher:
    def __init__(self, tmp_path, config_path, modules="courier_greylist\n", env=None):
        self.root = tmp_path
        etc, spool, bindir = tmp_path / "etc", tmp_path / "spool", tmp_path / "bin"
        for path in (etc, spool / "allfilters", spool / "tmp", bindir):
            path.mkdir(parents=True)
        (etc / "pythonfilter.conf").write_text(modules)
        fake = bindir / "courier-config"
        fake.write_text(f"#!/bin/sh\necho sysconfdir={etc}\necho localstatedir={spool}\n")
        fake.chmod(0o755)
        self.socket_path = str(spool / "allfilters" / "pythonfilter")
        self.spool = spool / "tmp"
        self.log = open(tmp_path / "dispatcher.log", "w+")
        program = shutil.which("pythonfilter", path=BIN)
        assert program, "courier-pythonfilter's dispatcher is not installed"
        # ``env`` (libfaketime's, say) reaches the dispatcher alone, through env(1) right before
        # it: a libfaketime preloaded into the wrappers that exec it (unshare, sh) left its
        # shared memory behind in /dev/shm at each exec.
        dispatcher = [sys.executable, program]
        if env:
            dispatcher = ["env", *(f"{name}={value}" for name, value in env.items()), *dispatcher]
        env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}")
        try:
            command = dispatcher_command(dispatcher, str(etc / "pythonfilter.conf"))
        except RuntimeError as error:
            pytest.skip(str(error))
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=self.log, stderr=self.log,
                                     env=env, cwd=str(tmp_path))

    def wait_ready(self, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if os.path.exists(self.socket_path):
                return True
            if self.proc.poll() is not None:
                return False
            time.sleep(0.02)
        raise AssertionError("dispatcher did not create its socket:\n" + self.output())

    def send(self, body_path, control_paths):
        """Talk to the dispatcher as courierfilter does; return its reply."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(60)
            conn.connect(self.socket_path)
            conn.sendall(("\n".join([body_path, *control_paths]) + "\n\n").encode())
            chunks = []
            while True:
                data = conn.recv(4096)
                if not data:
                    break
                chunks.append(data)
        return b"".join(chunks).decode()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
        return self.output()

    def output(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()
