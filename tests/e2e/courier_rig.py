"""A real Courier MTA on loopback, with the unmodified pythonfilter dispatcher running this package.

Set up by running the README's install block itself (its fenced block after
the "the install block" marker, with this run's paths and the wheel CI built),
plus what a test host needs and a mail server would not: esmtpd on
127.0.0.1:2525, mail from 127.0.0.1 treated as a remote client (no
RELAYCLIENT), no DNS look-ups, every outgoing message routed to a dead
loopback port, and rsyslog for the mail log.  Everything changed in
/etc/courier and elsewhere is put back, and every daemon stopped, by close().
"""

from __future__ import annotations

import atexit
import os
import pwd
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Optional

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGES = ["courier-mta", "rsyslog"]
PORT = 2525
BASE = "/opt/courier-greylist-e2e"
MAIL_LOG = "/var/log/mail.log"
CONFIG = "/etc/pythonfilter-modules.conf"  # the README's: the settings, where courier-pythonfilter reads them
STORE = "/var/lib/pythonfilter"  # the README's: the store, where courier-pythonfilter keeps it
PACKAGE_CONFIG = "/etc/courier-greylist/greylist.conf"  # the Debian package's settings
_MORE = "# a test's own settings follow"
# A domain this Courier accepts mail for; deliveries go to a dead loopback port.
# Courier remembers an address whose delivery failed (/var/lib/courier/track)
# and refuses it for a while ("556 Address unavailable" after an 8 s delay):
# every run and every test uses addresses of its own.
DOMAIN = "example.net"
CHANGED = ["/etc/courier/esmtpd", "/etc/courier/smtpaccess/default", "/etc/courier/esmtproutes",
           "/etc/pythonfilter-modules.conf",
           "/etc/courier/esmtpacceptmailfor.dir/greylist-e2e", "/etc/resolv.conf",
           "/etc/pythonfilter.conf",
           "/usr/lib/courier/filters/pythonfilter", "/etc/courier/filters/active/pythonfilter",
           "/usr/local/sbin/greylist", "/var/lib/courier/allfilters/.courier-greylist.status",
           "/var/backups/greylist.jsonl.gz", "/etc/greylist-pg.conf", "/etc/courier/enablefiltering"]


def readme_block(name: str) -> str:
    """The fenced block after the README's marker ``<!-- the NAME block: tests/e2e runs … -->``."""
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as handle:
        text = handle.read()
    start = text.index("```sh\n", text.index(f"<!-- the {name} block: tests/e2e runs")) + len("```sh\n")
    return text[start:text.index("```", start)]


def readme_install_block() -> str:
    return readme_block("install")


# A root shell's PATH (Debian's), whatever the test runner's is: the blocks call greylist from there.
ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def run_block(name: str, check: bool = True, given: Optional[dict] = None, cwd: str = REPO,
              **names: str) -> subprocess.CompletedProcess:
    """One of the README's blocks, as written (names set at its top replaced by ``names``), in bash -e.

    ``given``: names the reader has from an earlier block (the install block's ``PREFIX``).
    """
    script = [f"{key}={value}" for key, value in (given or {}).items()]
    for line in readme_block(name).splitlines():
        key = line.split("=", 1)[0]
        script.append(f"{key}={names.pop(key)}" if key in names and "=" in line else line)
    assert not names, f"the README's {name} block no longer sets {sorted(names)}"
    result = subprocess.run(["bash", "-e", "-c", "\n".join(script)], capture_output=True, text=True,
                            cwd=cwd, timeout=900, env=dict(os.environ, PATH=ROOT_PATH))
    if check and result.returncode != 0:
        raise RuntimeError(f"the README's {name} block failed ({result.returncode}): "
                           f"{result.stdout[-1500:]}{result.stderr[-1500:]}")
    return result


_BUILT: dict = {}


def apt(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``apt-get ARGS...`` as root, never asking."""
    return subprocess.run(["apt-get", *args], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))


def have_tool(program: str, package: str) -> None:
    """The Debian package that brings ``program``, installed if the host lacks it."""
    if shutil.which(program) is None:
        installed = apt("install", "-y", "-qq", package, timeout=600)
        assert installed.returncode == 0, installed.stderr


def debian_package(work: str) -> str:
    """The .deb built with the README's deb-build block in a copy of the checkout under ``work``
    (once a session: the modules that install it share it)."""
    if "deb" not in _BUILT:
        source = os.path.join(work, "source", "courier-greylist")
        shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
            ".venv*", ".git", "dist", "build", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis"))
        run_block("deb-build", cwd=source)
        kept = tempfile.mkdtemp(prefix="greylist-deb-")
        atexit.register(shutil.rmtree, kept, True)  # the session's: gone with it
        built = os.path.join(kept, "courier-greylist_0.1.0_amd64.deb")
        shutil.copy2(os.path.join(os.path.dirname(source), "courier-greylist_0.1.0_amd64.deb"), built)
        _BUILT["deb"] = built
    return _BUILT["deb"]


def wheel() -> str:
    """The wheel CI built into dist/ (.ci/run: python -m build), else one built here now."""
    dist = os.path.join(REPO, "dist")
    built = sorted(name for name in os.listdir(dist) if name.endswith(".whl")) if os.path.isdir(dist) else []
    if not built:
        run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", dist, REPO, timeout=600)
        built = sorted(name for name in os.listdir(dist) if name.endswith(".whl"))
    return os.path.join(dist, built[-1])


def run(*command: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {result.stderr.strip() or result.stdout.strip()}")
    return result


def unavailable() -> str:
    """Why this machine cannot run the rig, or '' when it can."""
    if os.geteuid() != 0:
        return "needs root (installs and starts Courier)"
    if shutil.which("apt-get") is None and shutil.which("courier-config") is None:
        return "needs apt-get to install Courier"
    return ""


class _NxdomainServer:
    """A DNS server on 127.0.0.1:53 that answers every query NXDOMAIN, at once."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 53))
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                query, peer = self.sock.recvfrom(4096)
            except OSError:
                continue
            if len(query) < 12:
                continue
            # Same id and question; QR set, RD copied, RA set, RCODE 3; no answers.
            flags = 0x8000 | (query[2] << 8 & 0x0100) | 0x0080 | 3
            reply = query[:2] + flags.to_bytes(2, "big") + query[4:6] + b"\0\0\0\0\0\0" + query[12:]
            try:
                self.sock.sendto(reply, peer)
            except OSError:
                pass

    def close(self) -> None:
        self._stop.set()
        self.thread.join(timeout=2)
        self.sock.close()


def _alive(pid: int) -> bool:
    """True while the process runs (a zombie waiting for its parent counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


class CourierRig:
    def __init__(self, greylist_time: int = 0, filter_name: str = "courier_greylist",
                 whitelist_file: bool = False) -> None:
        """``filter_name``: the pythonfilter.conf line: this package ("courier_greylist"),
        courier-pythonfilter's own module ("greylist"), or "" for no filter (benchmarks);
        "deb": this package, built and installed as a Debian package with the README's blocks.
        ``whitelist_file``: configure a whitelist file (``self.whitelist``), empty at first."""
        self.filter_name = filter_name
        self.whitelist_file = whitelist_file
        self.saved = tempfile.mkdtemp(prefix="greylist-e2e-saved-")
        self.token = os.urandom(4).hex()
        self.rsyslog_pid = None
        self._install_packages()
        self._save()
        try:
            self._configure_courier()
            self._start()  # as on a mail server: Courier runs before the filter is installed
            self._install_filter(greylist_time)
            self._cut_dns()  # after the install: pip needs it
            self.wait_ready()
        except BaseException:
            self.close()
            raise

    # set-up

    def _install_packages(self) -> None:
        if shutil.which("courier-config") and shutil.which("rsyslogd"):
            return
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env, timeout=600)
        result = subprocess.run(["apt-get", "install", "-y", "-qq", *PACKAGES], capture_output=True,
                                text=True, env=env, timeout=900)
        if result.returncode != 0:
            raise RuntimeError(f"apt-get install {' '.join(PACKAGES)} failed: {result.stderr[-500:]}")

    def _save(self) -> None:
        for path in CHANGED:
            if os.path.lexists(path):
                target = os.path.join(self.saved, path.strip("/").replace("/", "__"))
                shutil.copy2(path, target, follow_symlinks=False)

    def _install_filter(self, greylist_time: int) -> None:
        """The settings of the run; for this package, the README's install block does the rest."""
        self.base = f"{BASE}-{self.token}"  # a directory of this run's own
        os.makedirs(self.base)
        os.chmod(self.base, 0o755)
        self.venv = os.path.join(self.base, "venv")
        self.store = os.path.join(self.base, "store")
        extra = ""
        if self.whitelist_file:
            self.whitelist = os.path.join(self.base, "whitelist")
            self.set_whitelist("# empty for now\n")
            extra = f"whitelist_files = [{self.whitelist!r}]\n"
        settings = f"[greylist.py]\ngreylist_time = {greylist_time}\n{extra}{_MORE}\n"
        with open("/etc/pythonfilter.conf", "w") as handle:
            handle.write(f"{self.filter_name}\n" if self.filter_name != "courier_greylist" else "")
        if self.filter_name == "deb":
            self._install_package(greylist_time)
            return
        if self.filter_name == "courier_greylist":
            # The README's install block with its own CONFIG, then the settings of the
            # run applied as the README says a postmaster applies them.
            self.config, self.store = CONFIG, STORE
            self.made_store = not os.path.exists(STORE)
            # A Courier host that ran courier-pythonfilter has its settings file already.
            self.config_before = os.stat(CONFIG) if os.path.exists(CONFIG) else None
            self.package = wheel()
            result = run_block("install", PREFIX=self.venv, PACKAGE=self.package)
            self.install_output = result.stdout
            # The README's "Greylist less": the DNS lists need dnspython in the environment;
            # its "Several MX hosts": the PostgreSQL driver, with the README's own block.
            run(os.path.join(self.venv, "bin", "pip"), "install", "-q", "dnspython", timeout=600)
            run_block("driver", given={"PREFIX": self.venv, "PACKAGE": self.package})
            with open(self.config) as handle:
                installed = handle.read()
            with open(self.config, "w") as handle:
                handle.write(settings + installed)
            self.restart_filter()
            return
        # Benchmarks: no filter, or courier-pythonfilter's own module, in a venv of their own.
        self.config = os.path.join(self.base, "pythonfilter-modules.conf")
        with open(self.config, "w") as handle:
            handle.write(settings + f"\n[ttldb]\ntype = 'dbm'\ndir = '{self.store}'\n")
        os.chmod(self.config, 0o644)
        run("/usr/bin/python3", "-m", "venv", self.venv)
        run(os.path.join(self.venv, "bin", "pip"), "install", "-q", REPO, timeout=600)
        courier = pwd.getpwnam("courier")
        os.makedirs(self.store, mode=0o700)
        os.chown(self.store, courier.pw_uid, courier.pw_gid)
        if self.filter_name == "greylist":  # the reference reads only the standard files
            shutil.copy2(self.config, CONFIG)
        if os.path.lexists("/usr/lib/courier/filters/pythonfilter"):
            os.unlink("/usr/lib/courier/filters/pythonfilter")
        os.symlink(os.path.join(self.venv, "bin", "pythonfilter"), "/usr/lib/courier/filters/pythonfilter")
        if self.filter_name:
            run("filterctl", "start", "pythonfilter")

    def _install_package(self, greylist_time: int) -> None:
        """The README's deb-build block in a copy of the checkout, its deb-install block with
        the run's greylist_time set in the package's settings file as a postmaster would."""
        self.made_store = not os.path.exists(STORE)
        self.package = debian_package(self.base)
        self.config = PACKAGE_CONFIG
        with open("/etc/pythonfilter.conf", "w") as handle:
            handle.write("")  # the dispatcher's modules: the install block adds ours
        installed = run_block("deb-install", cwd=os.path.dirname(self.package), check=False,
                              DEB=os.path.basename(self.package))
        self.install_output = installed.stdout + installed.stderr
        if installed.returncode != 0:
            raise RuntimeError(f"the README's deb-install block failed: {self.install_output[-2000:]}")
        ours = f"greylist_time = {greylist_time}\n"
        if self.whitelist_file:
            self.whitelist = os.path.join(self.base, "whitelist")
            self.set_whitelist("# empty for now\n")
            ours += f"whitelist_files = [{self.whitelist!r}]\n"
        with open(self.config) as handle:
            text = handle.read()
        with open(self.config, "w") as handle:
            handle.write(text.replace("#greylist_time = 300", f"{ours}{_MORE}", 1))
        self.restart_filter()

    def _configure_courier(self) -> None:
        """A test host's needs: loopback port, a remote-looking client, no network."""
        with open("/etc/courier/esmtpd") as handle:
            lines = handle.read().splitlines()
        settings = {"ADDRESS": "127.0.0.1", "PORT": str(PORT), "MAXPERIP": "100", "MAXPERC": "100",
                    "BOFHCHECKDNS": "0", "ESMTPDSTART": "YES",
                    "TCPDOPTS": '"-stderrlogger=/usr/sbin/courierlogger -noidentlookup -nodnslookup"'}
        # In place: the file is sourced by a shell script that exports the names it set.
        missing = dict(settings)
        for number, line in enumerate(lines):
            name = line.split("=", 1)[0]
            if name in settings:
                lines[number] = f"{name}={settings[name]}"
                missing.pop(name, None)
        lines += [f"{k}={v}" for k, v in missing.items()]
        with open("/etc/courier/esmtpd", "w") as handle:
            handle.write("\n".join(lines) + "\n")
        with open("/etc/courier/smtpaccess/default") as handle:
            access = [line for line in handle.read().splitlines()
                      if not line.startswith(("127.0.0.1", ":0000:0000:0000:0000:0000:0000:0000:0001"))]
        with open("/etc/courier/smtpaccess/default", "w") as handle:
            handle.write("\n".join(access + ["127.0.0.1\tallow"]) + "\n")
        with open("/etc/courier/esmtpacceptmailfor.dir/greylist-e2e", "w") as handle:
            handle.write(f"{DOMAIN}\n")
        with open("/etc/courier/esmtproutes", "w") as handle:
            # Any mail going out goes to a dead port on loopback.
            handle.write(":[127.0.0.2],9\n")
        run("makesmtpaccess")
        run("makeacceptmailfor")

    def _cut_dns(self) -> None:
        # Courier's own resolver asks the nameservers of /etc/resolv.conf: for the
        # test it asks one on loopback that answers every question "no such domain".
        self.dns = _NxdomainServer()
        with open("/etc/resolv.conf", "w") as handle:
            handle.write("nameserver 127.0.0.1\n")

    def _start(self) -> None:
        # The package's own scripts may have started Courier with its old settings.
        self._stop_daemons()
        found = run("pgrep", "-x", "rsyslogd", check=False).stdout.split()
        if not any(_alive(int(pid)) for pid in found):  # (a zombie of an earlier rig's does not log)
            run("rsyslogd")
            self.rsyslog_pid = int(open("/run/rsyslogd.pid").read())
        # Courier asks the authentication daemon about every recipient; without it
        # each RCPT waits 8 s and is refused "556 Address unavailable".
        run("authdaemond", "start")
        run("courier", "start")
        run("courierfilter", "start")
        run("esmtpd", "start")

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if os.path.exists("/var/lib/courier/allfilters/pythonfilter"):
                try:
                    smtplib.SMTP("127.0.0.1", PORT, timeout=5).quit()
                    return
                except OSError:
                    pass
            time.sleep(0.1)
        raise RuntimeError("Courier or its filter did not come up:\n" + self.log_tail())

    # use

    def set_whitelist(self, text: str) -> None:
        """Replace the whitelist file, as an editor that renames would."""
        temporary = self.whitelist + ".new"
        with open(temporary, "w") as handle:
            handle.write(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, self.whitelist)

    def set_settings(self, text: str) -> None:
        """Settings of a test's own in [greylist.py] (replacing the last ones), then a restart:
        the dispatcher reads its settings when it starts."""
        with open(self.config) as handle:
            config = handle.read()
        start = config.index(_MORE) + len(_MORE) + 1
        end = config.find("\n[", start)
        end = len(config) if end < 0 else end + 1
        with open(self.config, "w") as handle:
            handle.write(config[:start] + text + config[end:])
        self.restart_filter()

    def address(self, name: str) -> str:
        """A recipient address no earlier run has used."""
        return f"{name}-{self.token}@{DOMAIN}"

    def send(self, sender: str, recipient: str) -> tuple:
        """One SMTP transaction; the reply to DATA as (code, text)."""
        client = smtplib.SMTP("127.0.0.1", PORT, timeout=30)
        try:
            client.ehlo("client.example.org")
            client.mail(sender)
            code, text = client.rcpt(recipient)
            if code != 250:
                return code, text.decode()
            code, text = client.docmd("DATA")
            if code != 354:
                return code, text.decode()
            client.send(b"Subject: greylisting test\r\n\r\nhello\r\n.\r\n")
            code, text = client.getreply()
            return code, text.decode()
        finally:
            try:
                client.quit()
            except smtplib.SMTPException:
                client.close()

    def restart_filter(self) -> subprocess.CompletedProcess:
        """The README's restart block, as written; it must succeed, and the filter then runs
        (no waiting here: the README's reader would not)."""
        return run_block("restart")

    def restart_courier(self) -> None:
        self._stop_daemons()
        run("authdaemond", "start")
        run("courier", "start")
        run("courierfilter", "start")
        run("esmtpd", "start")
        self.wait_ready()

    def log_mark(self) -> int:
        return os.path.getsize(MAIL_LOG) if os.path.exists(MAIL_LOG) else 0

    def log_since(self, mark: int, needle: str, timeout: float = 15) -> str:
        """The mail log written since ``mark``, once it contains ``needle``."""
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            if os.path.exists(MAIL_LOG):
                with open(MAIL_LOG, errors="replace") as handle:
                    handle.seek(mark)
                    text = handle.read()
                if needle in text:
                    return text
            time.sleep(0.1)
        return text

    def log_tail(self) -> str:
        if not os.path.exists(MAIL_LOG):
            return "(no mail log)"
        with open(MAIL_LOG, errors="replace") as handle:
            return "".join(handle.readlines()[-20:])

    # tear-down

    def _stop_daemons(self) -> None:
        for command in (["esmtpd", "stop"], ["courierfilter", "stop"], ["courier", "stop"],
                        ["authdaemond", "stop"]):
            run(*command, check=False)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if run("pgrep", "-u", "courier", check=False).returncode != 0:
                return
            time.sleep(0.1)
        run("pkill", "-u", "courier", check=False)

    def close(self) -> None:
        if self.filter_name == "deb":  # the package goes, with its settings (the store below)
            apt("purge", "-y", "courier-greylist")
        self._stop_daemons()
        run("pkill", "-f", "courierd|courieresmtp|courierlocal|courierfax|courierdsn|courieruucp",
            check=False)
        if self.rsyslog_pid:
            try:
                os.kill(self.rsyslog_pid, signal.SIGTERM)
            except OSError:
                pass
            # Gone before the next rig looks for a running rsyslogd (it would find this one dying,
            # start none, and the next tests would read an empty mail log).
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and _alive(self.rsyslog_pid):
                time.sleep(0.05)
        for path in CHANGED:
            saved = os.path.join(self.saved, path.strip("/").replace("/", "__"))
            if os.path.lexists(path):
                os.unlink(path)
            if os.path.lexists(saved):
                shutil.copy2(saved, path, follow_symlinks=False)
        run("makesmtpaccess", check=False)
        run("makeacceptmailfor", check=False)
        if getattr(self, "dns", None) is not None:
            self.dns.close()
        shutil.rmtree(self.saved, ignore_errors=True)
        if getattr(self, "base", None):
            shutil.rmtree(self.base, ignore_errors=True)
        if getattr(self, "made_store", False):
            shutil.rmtree(STORE, ignore_errors=True)
