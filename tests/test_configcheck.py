"""configcheck.py: check-config says whether the dispatcher would start, and why not, creating nothing."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers import run_greylist as run
from helpers import write_config, write_control

from greylist.configcheck import check
from greylist.replies import UNAVAILABLE_REPLY
from greylist.stores.dbm import DbmStore


def check_config(config: str) -> subprocess.CompletedProcess:
    return run("check-config", "--config", config)


def _started(config: str, control: str) -> bool:
    """Whether initFilter, as the dispatcher calls it, starts the filter on this file."""
    reply = subprocess.run([sys.executable, "-c", "import greylist\n"
                            f"greylist.initFilter([{config!r}])\n"
                            f"print(repr(greylist.doFilter('', [{control!r}])))"],
                           capture_output=True, text=True, timeout=60).stdout.strip()
    assert reply, "the filter gave no reply"
    return reply != repr(UNAVAILABLE_REPLY)


STARTS = {"good", "a misspelt key", "a whitelist file that comes later",
          "a metrics directory that is missing", "fewer delays",
          "a header and greytraps"}  # the others stop the filter at start


@pytest.mark.parametrize("name, text", [
    ("good", "[ttldb]\ndir = '{store}'\n"),
    ("no store directory", "[ttldb]\ndir = '{store}/nope'\n"),
    ("a value of the wrong kind", "[greylist.py]\ngreylist_time = 'soon'\n[ttldb]\ndir = '{store}'\n"),
    ("a misspelt key", "[greylist.py]\ngreylist_tme = 60\n[ttldb]\ndir = '{store}'\n"),
    ("not a configuration file", "this is not ini\n"),
    ("a whitelist file that comes later", "[greylist.py]\nwhitelist_files = ['{store}/later']\n"
                                          "[ttldb]\ndir = '{store}'\n"),
    ("a whitelist file that is a directory", "[greylist.py]\nwhitelist_files = ['{store}']\n"
                                             "[ttldb]\ndir = '{store}'\n"),
    ("no smtpaccess database", "[greylist.py]\nskip_relayclients = True\nsmtpaccess_file = '{store}/no'\n"
                               "[ttldb]\ndir = '{store}'\n"),
    ("a pattern file that is missing", "[greylist.py]\ngreylist_clients = 'suspicious'\n"
                                       "generic_rdns_files = ['{store}/patterns']\n"
                                       "[ttldb]\ndir = '{store}'\n"),
    ("a metrics directory that is missing", "[greylist.py]\nmetrics_file = '{store}/no/greylist.prom'\n"
                                            "[ttldb]\ndir = '{store}'\n"),
    ("an unknown store type", "[ttldb]\ntype = 'mysql'\n"),
    ("fewer delays", "[greylist.py]\nwhitelist_replies = 'in-reply-to'\nauto_whitelist_senders = True\n"
                     "auto_whitelist_domains = 2\n[ttldb]\ndir = '{store}'\n"),
    ("a header and greytraps", "[greylist.py]\nx_greylist_header = 'all'\n"
                               "greytrap_recipients = ['@trap.example']\n[ttldb]\ndir = '{store}'\n"),
    ("a free-mail list that is not one", "[greylist.py]\nauto_whitelist_domains_except = ['@gmail.com']\n"
                                         "[ttldb]\ndir = '{store}'\n"),
])
def test_check_config_says_the_dispatcher_starts_exactly_when_it_does(tmp_path, name, text):
    store = tmp_path / "store"
    store.mkdir()
    config = tmp_path / "m.conf"
    config.write_text(text.format(store=store))
    before = sorted(os.listdir(store))
    report = check([str(config)])
    assert sorted(os.listdir(store)) == before  # check-config made nothing
    started = _started(str(config), write_control(str(tmp_path / "C")))
    assert (report.problems == []) == started, report.lines()
    assert started == (name in STARTS)  # both answers are tried


def test_every_problem_is_one_line_and_the_verdict_comes_last(tmp_path):
    config = tmp_path / "m.conf"
    config.write_text(f"[greylist.py]\nskip_relayclients = True\nsmtpaccess_file = '{tmp_path}/no'\n"
                      f"[ttldb]\ndir = '{tmp_path}/nope'\n")
    lines = check([str(config)]).lines()
    problems = [line for line in lines if line.startswith("problem: ")]
    assert len(problems) == 2 and all("\n" not in line for line in problems)
    assert lines[-1] == "2 problems: the dispatcher would not start, or not decide normally"


def test_check_config_says_whether_the_dispatcher_would_start(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    later = tmp_path / "later"
    config = write_config(str(tmp_path / "m.conf"), str(store), learn_only=True,
                          whitelist_files=[str(later)])
    good = run("check-config", "--config", config)
    assert good.returncode == 0, good.stderr
    assert f"  learn_only = True  ({config} [greylist.py] learn_only)" in good.stdout
    assert "  greylist_time = 300  (default)" in good.stdout
    # Under the keys a postmaster writes, in their sections, lists as lists:
    assert (f"[ttldb]\n  type = 'dbm'  ({config} [ttldb] type)\n"
            f"  dir = '{store}'  ({config} [ttldb] dir)\n") in good.stdout
    assert f"  whitelist_files = ['{later}']  (" in good.stdout
    assert f"note: whitelist file {later}: does not exist yet; read when it appears" in good.stdout
    assert f"note: no store in {store} yet: the dispatcher will create it" in good.stdout
    assert good.stdout.endswith("the dispatcher would start and decide normally\n")
    assert os.listdir(store) == [] and not later.exists()  # nothing made

    DbmStore(str(store)).close()
    with open(store / "greylist.lock", "r+b") as lock:
        lock.seek(4)
        lock.write((7).to_bytes(4, "little"))
    foreign = run("check-config", "--config", config)
    assert foreign.returncode == 1
    assert "problem: the store in" in foreign.stderr and "has format 7" in foreign.stderr

    for text, problem in [
        (f"[ttldb]\ndir = '{tmp_path}/nope'\n", f"store directory {tmp_path}/nope does not exist"),
        ("[greylist.py]\nlearn_only = yes\n", "learn_only: write True (with a capital letter), not yes"),
    ]:
        (tmp_path / "bad.conf").write_text(text)
        bad = run("check-config", "--config", str(tmp_path / "bad.conf"))
        assert bad.returncode == 1 and problem in bad.stderr, bad.stderr
    missing = run("check-config", "--config", str(tmp_path / "absent.conf"))
    assert missing.returncode == 1 and "absent.conf: no such configuration file" in missing.stderr


@pytest.mark.parametrize("setting, value", [("auto_whitelist_clients", 3),
                                            ("match_retry_by_message_id", True),
                                            ("whitelist_replies", True),
                                            ("auto_whitelist_senders", True),
                                            ("auto_whitelist_domains", 2),
                                            ("greytrap_recipients", ["trap@example.org"])])
def test_tables_the_dispatcher_makes_at_start_are_no_problem(tmp_path, setting, value):
    store = tmp_path / "store"
    store.mkdir()
    DbmStore(str(store)).close()  # an existing store, without the new feature's table
    config = write_config(str(tmp_path / "m.conf"), str(store), **{setting: value})
    result = check_config(config)
    assert result.returncode == 0, result.stderr
    assert "does not exist yet: the dispatcher will create it" in result.stdout


def test_a_password_every_user_may_read_is_noted(tmp_path):
    config = tmp_path / "m.conf"
    config.write_text("[ttldb]\ntype = 'psycopg2'\nhost = '127.0.0.1'\nport = 1\npassword = 'secret'\n"
                      "timeout = 1\n")
    config.chmod(0o644)
    assert f"note: {config} holds the PostgreSQL password and every user may read it" in \
        check_config(str(config)).stdout
    config.chmod(0o640)
    assert "holds the PostgreSQL password" not in check_config(str(config)).stdout


def test_whitelist_replies_says_whose_mail_it_records(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    config = write_config(str(tmp_path / "m.conf"), str(store), whitelist_replies=True)
    result = check_config(config)
    assert result.returncode == 0, result.stderr
    assert "whitelist_replies: no mail is recorded" in result.stdout
    config = write_config(str(tmp_path / "m.conf"), str(store), whitelist_replies=True,
                          skip_authenticated=True)
    assert "no mail is recorded" not in check_config(config).stdout
