"""report.py: the decision lines the filter writes, read back, counted and drawn."""

from __future__ import annotations

import gzip
import ipaddress
import json
import os
import pty
import subprocess

import pytest
from helpers import REPO
from helpers import run_greylist as run
from host import greylist_command
from hypothesis import given
from hypothesis import strategies as st

from greylist import policy
from greylist.decision_line import Verdict
from greylist.report import client_network, parse_line, render, summarise

# Any text a client can put in an envelope, control characters and quotes included.
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=150)


def _line(action: str, reason: str, **facts) -> str:
    decision = policy.Decision(action, reason=reason, wait=facts.pop("wait", None),
                               delay=facts.pop("delay", None))
    return Verdict(decision, policy.Facts(**facts)).log_line()


@given(sender=TEXT, recipient=TEXT, name=TEXT, error=TEXT)
def test_whatever_the_filter_writes_is_read_back_as_written(sender, recipient, name, error):
    fields = parse_line("Dec  6 10:00:00 mx courierfilter: " + Verdict(
        policy.Decision("error", reason="store-failure"),
        policy.Facts(sender, (recipient,), "192.0.2.1", ipaddress.ip_address("192.0.2.1"), name),
        error=error).log_line())
    assert (fields["sender"], fields["client_name"], fields["error"]) == (sender, name, error)
    assert fields["recipients"] == recipient[:100] + ("..." if len(recipient) > 100 else "")
    assert fields["action"] == "error" and fields["reason"] == "store-failure"


def test_report_parses_log_lines():
    lines = [
        "Nov 25 14:00:00 mx courierfilter: greylist: action=greylist, reason=new, "
        "client_address=192.0.2.10, sender=a@example.com, recipients=b@example.net, wait=00:05:00",
        "greylist: action=greylist, reason=new, client_address=::ffff:192.0.2.99, sender=a@example.com",
        "greylist: action=pass, reason=passed, client_address=192.0.2.10, sender=a@example.com, delay=420",
        "greylist: action=whitelist, reason=whitelisted:client:.google.com, client_address=203.0.113.1",
        "some other line",
        "greylist: purge failed: x",
    ]
    report = summarise(lines)
    assert report.messages == 4 and report.skipped_lines == 2
    assert report.actions == {"greylist": 2, "pass": 1, "whitelist": 1}
    assert report.greylisted_networks.most_common() == [("192.0.2.0/24", 2)]
    assert report.delays == [420]
    assert dict(report.delay_histogram())["5-10 min"] == 1
    assert parse_line("greylist: action=pass, reason=known")["reason"] == "known"


@pytest.mark.parametrize("delay, bucket", [(0, "< 5 min"), (299, "< 5 min"), (300, "5-10 min"),
                                           (3599, "30-60 min"), (86399, "12-24 h"), (86400, "> 1 day")])
def test_each_delay_falls_in_one_bucket(delay, bucket):
    report = summarise([_line("pass", "passed", sender="a@b", delay=delay)])
    assert [label for label, count in report.delay_histogram() if count] == [bucket]


def test_learn_counts_as_greylisted_and_networks_follow_the_prefixes():
    lines = [_line("learn", "new", sender="a@b", client_ip="2001:db8:1:2::1"),
             _line("greylist", "new", sender="a@b", client_ip="2001:db8:1:3::1"),
             _line("greylist", "early-retry", sender="c@d", client_ip="2001:db8:1:3::1"),
             "greylist: action=pass, reason=passed, delay=soon"]
    report = summarise(lines, ipv6_prefix=48)
    assert report.greylisted_networks == {"2001:db8:1::/48": 2}
    assert report.greylisted_senders == {"a@b": 2}
    assert report.delays == []  # a delay that is not a number is left out
    assert summarise(lines, ipv6_prefix=64).greylisted_networks == {"2001:db8:1:2::/64": 1,
                                                                    "2001:db8:1:3::/64": 1}
    assert client_network("not-an-address") == "not-an-address"


def test_render_says_what_it_counted_and_when_there_was_nothing():
    assert render(summarise(["unrelated"])) == "0 decisions (no greylist decision lines found)\n"
    text = render(summarise([_line("greylist", "new", sender="a@b", client_ip="192.0.2.1"),
                             _line("pass", "passed", sender="a@b", client_ip="192.0.2.1", delay=400)]))
    assert "2 decisions" in text and "greylist new" in text and "median 6 min" in text
    assert "  5-10 min        1 ########################################" in text


def test_report_from_files_and_stdin(tmp_path):
    log = tmp_path / "maillog"
    log.write_text(
        "Nov 25 10:00:00 mx courierfilter: greylist: action=greylist, reason=new, "
        "client_address=192.0.2.10, sender=a@example.com, recipients=b@example.net, wait=00:05:00\n"
        "Nov 25 10:07:00 mx courierfilter: greylist: action=pass, reason=passed, "
        "client_address=192.0.2.11, sender=a@example.com, recipients=b@example.net, delay=420\n"
        "Nov 25 10:08:00 mx courierd: unrelated\n")
    result = run("report", str(log))
    assert result.returncode == 0, result.stderr
    assert "2 decisions" in result.stdout
    assert "192.0.2.0/24" in result.stdout and "a@example.com" in result.stdout
    assert "5-10 min        1 #" in result.stdout
    piped = subprocess.run(greylist_command("report", "--json"), input=log.read_text(),
                           capture_output=True, text=True, cwd=REPO, timeout=60)
    assert json.loads(piped.stdout)["actions"] == {"greylist": 1, "pass": 1}
    rotated = tmp_path / "maillog.1.gz"
    rotated.write_bytes(gzip.compress(log.read_bytes()))
    both = run("report", "--json", str(log), str(rotated))
    assert json.loads(both.stdout)["actions"] == {"greylist": 2, "pass": 2}
    leader, follower = pty.openpty()  # a terminal on stdin: refused at once, never waited on
    try:
        waiting = subprocess.run(greylist_command("report"), stdin=follower,
                                 capture_output=True, text=True, cwd=REPO, timeout=30)
    finally:
        os.close(leader)
        os.close(follower)
    assert waiting.returncode == 1 and "or send the log on standard input" in waiting.stderr
    missing = run("report", str(tmp_path / "nope"))
    assert missing.returncode == 1 and "No such file" in missing.stderr
    png = run("report", str(log), "--png", str(tmp_path / "delays.png"))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert png.returncode == 1 and "--png needs matplotlib" in png.stderr
    else:
        assert png.returncode == 0 and (tmp_path / "delays.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
