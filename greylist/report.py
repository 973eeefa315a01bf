"""Summaries of the decision log: what the filter did, to whom, and how long senders took.

Reads the ``greylist: action=..., reason=..., ...`` lines the filter writes
to Courier's mail log (anything before ``greylist:`` on a line, such as a
syslog prefix, is ignored; other lines are skipped).  Pure apart from the
optional drawing with matplotlib.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, List, Optional

from .errors import GreylistError
from .extras import install_hint
from .triplet import InvalidClientAddress, network_of, parse_client_ip

MARKER = "greylist: action="

# Buckets of the pass-delay histogram: (upper bound in seconds, label).
DELAY_BUCKETS = (
    (300, "< 5 min"),
    (600, "5-10 min"),
    (1800, "10-30 min"),
    (3600, "30-60 min"),
    (2 * 3600, "1-2 h"),
    (4 * 3600, "2-4 h"),
    (12 * 3600, "4-12 h"),
    (86400, "12-24 h"),
    (float("inf"), "> 1 day"),
)


# A pair: a value in double quotes (with \xNN escapes), or one without spaces.
_PAIR = re.compile(r'(?:^|, )([a-z_]+)=("[^"]*"|[^ ]*?)(?=, [a-z_]+=|$)')
_ESCAPE = re.compile(r"\\(?:x([0-9a-f]{2})|u([0-9a-f]{4})|U([0-9a-f]{8}))")


def _unescaped(match: re.Match) -> str:
    return chr(int(next(code for code in match.groups() if code is not None), 16))


def parse_line(line: str) -> Optional[dict]:
    """The key=value fields of one decision line, or None for any other line."""
    start = line.find(MARKER)
    if start < 0:
        return None
    fields = {}
    for key, value in _PAIR.findall(line[start + len("greylist: "):].rstrip("\r\n")):
        if value.startswith('"') and value.endswith('"') and len(value) > 1:
            value = _ESCAPE.sub(_unescaped, value[1:-1])
        fields[key] = value
    return fields if "action" in fields else None


def client_network(text: str, ipv4_prefix: int = 24, ipv6_prefix: int = 48) -> str:
    """The network of a logged client address, in CIDR notation (the text itself if not an IP)."""
    try:
        return network_of(parse_client_ip(text), ipv4_prefix, ipv6_prefix)
    except InvalidClientAddress:
        return text


@dataclass
class Report:
    """The counts a report prints."""

    messages: int = 0
    skipped_lines: int = 0
    actions: Counter = field(default_factory=Counter)
    reasons: Counter = field(default_factory=Counter)  # "action reason" -> count
    greylisted_networks: Counter = field(default_factory=Counter)
    greylisted_senders: Counter = field(default_factory=Counter)
    delays: List[int] = field(default_factory=list)

    def delay_histogram(self) -> list:
        counts = [0] * len(DELAY_BUCKETS)
        for delay in self.delays:
            for index, (bound, _) in enumerate(DELAY_BUCKETS):
                if delay < bound:
                    counts[index] += 1
                    break
        return [(label, count) for (_, label), count in zip(DELAY_BUCKETS, counts)]

    def as_dict(self, top: int = 10) -> dict:
        return {
            "messages": self.messages,
            "actions": dict(self.actions.most_common()),
            "reasons": dict(self.reasons.most_common()),
            "top_greylisted_networks": self.greylisted_networks.most_common(top),
            "top_greylisted_senders": self.greylisted_senders.most_common(top),
            "pass_delays": dict(self.delay_histogram()),
        }


def summarise(lines: Iterable[str], ipv4_prefix: int = 24, ipv6_prefix: int = 48) -> Report:
    """Count the decision lines among ``lines``."""
    report = Report()
    for line in lines:
        fields = parse_line(line)
        if fields is None:
            report.skipped_lines += 1
            continue
        report.messages += 1
        action, reason = fields["action"], fields.get("reason", "")
        report.actions[action] += 1
        report.reasons[f"{action} {reason}"] += 1
        if action in ("greylist", "learn") and reason == "new":
            if "client_address" in fields:
                report.greylisted_networks[client_network(fields["client_address"], ipv4_prefix,
                                                          ipv6_prefix)] += 1
            if "sender" in fields:
                report.greylisted_senders[fields["sender"]] += 1
        if action == "pass" and reason == "passed" and "delay" in fields:
            try:
                report.delays.append(int(fields["delay"]))
            except ValueError:
                pass
    return report


def _bar(count: int, largest: int, width: int = 40) -> str:
    if not count:
        return ""
    return "#" * max(1, round(width * count / largest))


def render(report: Report, top: int = 10) -> str:
    """The report as text for a terminal."""
    out = [f"{report.messages:,} decisions"]
    if not report.messages:
        return out[0] + " (no greylist decision lines found)\n"
    out.append("")
    out.append("by action:")
    for action, count in report.actions.most_common():
        out.append(f"  {action:<10} {count:>9,}  {100 * count / report.messages:5.1f}%")
    out.append("")
    out.append("by action and reason:")
    for reason, count in report.reasons.most_common():
        out.append(f"  {reason:<32} {count:>9,}")
    for title, counter in (("top greylisted client networks (new triplets):", report.greylisted_networks),
                           ("top greylisted senders (new triplets):", report.greylisted_senders)):
        if counter:
            out.append("")
            out.append(title)
            for name, count in counter.most_common(top):
                out.append(f"  {count:>9,}  {name}")
    out.append("")
    if report.delays:
        ordered = sorted(report.delays)
        median = ordered[len(ordered) // 2]
        out.append(f"pass delays: how long after the first attempt greylisted triplets passed "
                   f"({len(ordered):,} triplets, median {median // 60} min):")
        histogram = report.delay_histogram()
        largest = max(count for _, count in histogram)
        for label, count in histogram:
            out.append(f"  {label:>10} {count:>8,} {_bar(count, largest)}")
    else:
        out.append("pass delays: no greylisted triplet passed in these lines")
    return "\n".join(out) + "\n"


class PlotUnavailable(GreylistError):
    """matplotlib is not installed."""


def draw_png(report: Report, path: str) -> None:
    """Draw the pass-delay histogram to a PNG file with matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotUnavailable(f"--png needs matplotlib ({install_hint('report')})") from None
    histogram = report.delay_histogram()
    figure, axes = plt.subplots(figsize=(8, 4))
    axes.bar([label for label, _ in histogram], [count for _, count in histogram], color="#607d8b")
    axes.set_title(f"Greylisted triplets by time to pass ({len(report.delays):,} triplets)")
    axes.set_xlabel("time from first attempt to pass")
    axes.set_ylabel("triplets")
    axes.tick_params(axis="x", labelrotation=30)
    figure.tight_layout()
    figure.savefig(path, format="png")
    plt.close(figure)
