"""End to end: the unmodified pythonfilter dispatcher of courier-pythonfilter 3.0.6 loads us.

The dispatcher reads pythonfilter.conf from /etc, /usr/local/etc or Courier's
sysconfdir, which courier.config asks the ``courier-config`` program for; a
``courier-config`` on PATH points sysconfdir and localstatedir at a temporary
directory, as a Courier installation there would.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time

import pytest
from helpers import write_config, write_control

SYSTEM_CONFS = ["/etc/pythonfilter.conf", "/usr/local/etc/pythonfilter.conf"]
BIN = os.path.dirname(sys.executable)

pytestmark = pytest.mark.skipif(
    any(os.path.exists(p) for p in SYSTEM_CONFS),
    reason="a system pythonfilter.conf exists and would take precedence over the test's")


def greylist(*args):
    return subprocess.run([sys.executable, "-m", "greylist", *args], capture_output=True, text=True,
                          timeout=60)


class Dispatcher:
    def __init__(self, tmp_path, config_path, modules="courier_greylist\n"):
        self.root = tmp_path
        etc, spool, bindir = tmp_path / "etc", tmp_path / "spool", tmp_path / "bin"
        for path in (etc, spool / "allfilters", spool / "tmp", bindir):
            path.mkdir(parents=True)
        (etc / "pythonfilter.conf").write_text(modules)
        fake = bindir / "courier-config"
        fake.write_text(f"#!/bin/sh\necho sysconfdir={etc}\necho localstatedir={spool}\n")
        fake.chmod(0o755)
        self.socket_path = str(spool / "allfilters" / "pythonfilter")
        self.log = open(tmp_path / "dispatcher.log", "w+")
        env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}")
        program = shutil.which("pythonfilter", path=BIN)
        assert program, "courier-pythonfilter's dispatcher is not installed"
        self.proc = subprocess.Popen([sys.executable, program], stdin=subprocess.PIPE,
                                     stdout=self.log, stderr=self.log, env=env, cwd=str(tmp_path))

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
            conn.settimeout(30)
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
            self.proc.wait(timeout=30)
        return self.output()

    def output(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()


@pytest.fixture
def installed(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    config = write_config(str(tmp_path / "pythonfilter-modules.conf"), str(store), greylist_time=0)
    result = greylist("install", "--config", config)  # the README's step, exactly
    assert result.returncode == 0, result.stderr
    yield config, store
    greylist("install", "--uninstall")


def test_dispatcher_greylists_then_accepts(tmp_path, installed):
    config, store = installed
    dispatcher = Dispatcher(tmp_path, config)
    try:
        assert dispatcher.wait_ready(), dispatcher.output()
        body = tmp_path / "spool" / "tmp" / "D1"
        body.write_text("Subject: hello\n\nhi\n")
        control = write_control(str(tmp_path / "spool" / "tmp" / "C1"), "Alice@Example.com",
                                ["bob@example.net", "carol@example.net"], "::ffff:192.0.2.10")
        first = dispatcher.send(str(body), [control])
        assert first == "451 4.7.1 Greylisting in action, please come back in 00:00:00"
        # Relative paths, as courierfilter sends them, are resolved in the spool's tmp.
        second = dispatcher.send("D1", ["C1"])
        assert second == "200 Ok"
    finally:
        log = dispatcher.stop()
    assert dispatcher.proc.returncode == 0
    assert 'Initialized the "greylist" python filter' in log
    assert log.count("greylist: action=greylist, reason=new") == 1  # run once per message, not twice
    assert log.count("greylist: action=pass, reason=passed") == 1
    assert "Uncaught exception" not in log
    assert sorted(os.listdir(store))[0] == "greylist.lock"


def test_dispatcher_stops_with_one_clear_line_on_bad_config(tmp_path, installed):
    config, store = installed
    write_config(config, "/nonexistent/greylist")
    dispatcher = Dispatcher(tmp_path, config)
    assert dispatcher.wait_ready() is False
    log = dispatcher.stop()
    assert "greylist: cannot start: store directory /nonexistent/greylist does not exist" in log
    assert "Traceback" not in log
