"""The decision line: one ``key=value`` line per message in the mail log, and what it is built from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from . import policy
from .replies import format_wait
from .reputation import Reputation


def log_safe(value: object, limit: int = 200) -> str:
    """A value fit for one ``key=value`` log line, bounded in length.

    A value of printable characters without spaces or quotes is written as
    it is; any other is put in double quotes, with control characters,
    double quotes and backslashes escaped as in Python (``\\xNN``,
    ``\\uNNNN``, ``\\UNNNNNNNN``).  So a line always
    splits into its pairs, and a person reads ``error="cannot read control
    file"`` as it is.
    """
    text = value if type(value) is str else str(value)
    if len(text) > limit:
        text = text[:limit] + "..."
    if _is_plain(text):
        return text
    return '"' + "".join(ch if ch.isprintable() and ch not in '"\\' else _escaped(ch) for ch in text) + '"'


def _is_plain(text: str) -> bool:
    """Written as it is: printable, no space, no quote, no backslash (so is a join of plain texts)."""
    return " " not in text and '"' not in text and "\\" not in text and text.isprintable()


def _escaped(ch: str) -> str:
    """``\\xNN``, ``\\uNNNN`` or ``\\UNNNNNNNN``, as in Python: the reader knows where each ends."""
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


@dataclass
class Verdict:
    """A message's decision, with what the decision line says of the message."""

    decision: policy.Decision
    facts: Optional[policy.Facts] = None  # None: the control files could not be read
    spf_domain: Optional[str] = None  # the triplets were keyed by this SPF-passed domain
    message_id: Optional[str] = None  # with match_retry_by_message_id
    error: Optional[str] = None

    @property
    def reply(self) -> str:
        return self.decision.reply

    @property
    def action(self) -> str:
        return self.decision.action

    @property
    def reason(self) -> str:
        return self.decision.reason

    @property
    def reputation(self) -> Optional[Reputation]:
        return self.facts.standing if self.facts is not None else None

    def log_line(self) -> str:
        # Written for every message: one string built up, no intermediate list.
        safe = log_safe
        decision = self.decision
        facts = self.facts
        action, reason = decision.action, decision.reason
        would = ", would=greylist" if action == "learn" else ""
        if facts is None:
            line = f"greylist: action={action}, reason={safe(reason)}{would}"
        else:
            client_ip, client_name, sender, recipients = facts.client_ip, facts.client_name, facts.sender, \
                facts.recipients
            if client_ip is not None and client_name and sender is not None and len(recipients) == 1 \
                    and len(reason) + len(client_ip) + len(client_name) + len(sender) <= 200 \
                    and len(recipients[0]) <= 100 \
                    and _is_plain(reason + client_ip + client_name + sender + recipients[0]):
                # The usual message: every value plain and short, checked at once and written as it is.
                line = (f"greylist: action={action}, reason={reason}{would}, client_address={client_ip}, "
                        f"client_name={client_name}, sender={sender}, recipients={recipients[0]}")
            else:
                line = f"greylist: action={action}, reason={safe(reason)}{would}"
                if client_ip is not None:
                    line += f", client_address={safe(client_ip)}"
                if client_name:
                    line += f", client_name={safe(client_name)}"
                if sender is not None:
                    line += f", sender={safe(sender)}"
                if recipients:
                    line += ", recipients=" + ",".join([safe(r, 100) for r in recipients[:5]])
                    if len(recipients) > 5:
                        line += f",+{len(recipients) - 5}"
        if self.spf_domain:
            line += f", spf_domain={safe(self.spf_domain)}"
        if decision.whitelisted_recipients:
            line += f", whitelisted_recipients={decision.whitelisted_recipients}"
        reputation = facts.standing if facts is not None else None
        if reputation is not None:
            if reputation.dnsbl:
                line += f", dnsbl={reputation.dnsbl}"
            if reputation.dns_failed:
                line += ", dns=timeout"
            if decision.action in ("greylist", "learn") and reputation.suspicious not in (None, "dnsbl"):
                line += f", suspicious={reputation.suspicious}"
        if decision.wait is not None:
            line += f", wait={format_wait(decision.wait)}"
        if decision.delay is not None:
            line += f", delay={int(decision.delay)}"
        if self.error:
            line += f", error={safe(self.error, 300)}"
        return line
