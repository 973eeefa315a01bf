"""The decision line: one ``key=value`` line per message in the mail log, and what it is built from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from . import policy
from .reputation import Reputation


def log_safe(value: object, limit: int = 200) -> str:
    """A value fit for one ``key=value`` log line, bounded in length.

    A value of printable characters without spaces or quotes is written as
    it is; any other is put in double quotes, with control characters,
    double quotes and backslashes written as ``\\xNN``.  So a line always
    splits into its pairs, and a person reads ``error="cannot read control
    file"`` as it is.
    """
    text = value if type(value) is str else str(value)
    if len(text) > limit:
        text = text[:limit] + "..."
    if " " not in text and '"' not in text and "\\" not in text and text.isprintable():
        return text
    return '"' + "".join(ch if ch.isprintable() and ch not in '"\\' else f"\\x{ord(ch):02x}"
                         for ch in text) + '"'


@dataclass
class Verdict:
    """The outcome for one message: the reply and why."""

    reply: str
    action: str  # pass | greylist | whitelist | learn | error
    reason: str
    sender: Optional[str] = None
    client_address: Optional[str] = None
    client_name: Optional[str] = None
    recipients: list = field(default_factory=list)
    decision: Optional[policy.Decision] = None
    error: Optional[str] = None
    spf_domain: Optional[str] = None  # the triplets were keyed by this SPF-passed domain
    whitelisted_recipients: int = 0  # recipients left out of greylisting by a whitelist
    reputation: Optional[Reputation] = None  # DNS lists and name, when the settings ask
    message_id: Optional[str] = None  # with match_retry_by_message_id

    def log_line(self) -> str:
        # Written for every message: one string built up, no intermediate list.
        safe = log_safe
        line = f"greylist: action={self.action}, reason={safe(self.reason)}"
        if self.action == "learn":
            line += ", would=greylist"
        if self.client_address is not None:
            line += f", client_address={safe(self.client_address)}"
        if self.client_name:
            line += f", client_name={safe(self.client_name)}"
        if self.sender is not None:
            line += f", sender={safe(self.sender)}"
        recipients = self.recipients
        if recipients:
            line += ", recipients=" + ",".join([safe(r, 100) for r in recipients[:5]])
            if len(recipients) > 5:
                line += f",+{len(recipients) - 5}"
        if self.spf_domain:
            line += f", spf_domain={safe(self.spf_domain)}"
        if self.whitelisted_recipients:
            line += f", whitelisted_recipients={self.whitelisted_recipients}"
        reputation = self.reputation
        if reputation is not None:
            if reputation.dnsbl:
                line += f", dnsbl={reputation.dnsbl}"
            if reputation.dns_failed:
                line += ", dns=timeout"
            if self.action in ("greylist", "learn") and reputation.suspicious not in (None, "dnsbl"):
                line += f", suspicious={reputation.suspicious}"
        decision = self.decision
        if decision is not None:
            if not decision.accept:
                line += f", wait={policy.format_wait(decision.wait)}"
            delays = [o.pending_for for o in decision.outcomes if o.pending_for is not None]
            if delays:
                line += f", delay={int(max(delays))}"
        if self.error:
            line += f", error={safe(self.error, 300)}"
        return line
