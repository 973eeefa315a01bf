"""Glue: control files -> triplets -> one store transaction -> policy -> reply.

This is the one place where failures of the other rooms become a safe reply
and a log line.  ``GreylistFilter.do_filter`` never raises.

Replies for bad input (documented in the README):

=============================================  ===========================================
control file missing or unreadable              ``451 Internal failure locating control files``
no sender record                                ``451 Internal failure locating control files``
null sender (bounces)                           accept
no ``OTCPREMOTEIP`` (locally submitted mail)    accept
client address that is not an IP address        accept
no undelivered recipient                        accept
store failure while deciding                    accept, or the tempfail reply when
                                                ``on_store_error = 'tempfail'``
=============================================  ===========================================
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from . import policy
from .envelope import EnvelopeError, read_envelope
from .settings import Settings
from .stores import NOT_PASSED_TABLE, PASSED_TABLE, Store, StoreError
from .triplet import InvalidClientAddress, client_network, parse_client_ip, triplet_key

INTERNAL_FAILURE_REPLY = "451 Internal failure locating control files"
STORE_FAILURE_REPLY = "451 4.3.0 Greylisting temporarily unavailable, please try again later"

_TABLE_OF = {policy.PASSED: PASSED_TABLE, policy.NOT_PASSED: NOT_PASSED_TABLE}


def stderr_line(line: str) -> None:
    """Write one line to stderr, which Courier sends to the mail log."""
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def log_safe(value: object, limit: int = 200) -> str:
    """A value fit for one log line: no control characters, bounded length."""
    text = str(value)
    if len(text) > limit:
        text = text[:limit] + "..."
    if text.isprintable() and " " not in text:
        return text
    return "".join(ch if ch.isprintable() and ch != " " else f"\\x{ord(ch):02x}" for ch in text)


@dataclass
class Verdict:
    """The outcome for one message: the reply and why."""

    reply: str
    action: str  # pass | greylist | accept | error
    reason: str
    sender: Optional[str] = None
    client_address: Optional[str] = None
    client_name: Optional[str] = None
    recipients: list = field(default_factory=list)
    decision: Optional[policy.Decision] = None
    error: Optional[str] = None

    def log_line(self) -> str:
        parts = [f"action={self.action}", f"reason={self.reason}"]
        if self.client_address is not None:
            parts.append(f"client_address={log_safe(self.client_address)}")
        if self.client_name:
            parts.append(f"client_name={log_safe(self.client_name)}")
        if self.sender is not None:
            parts.append(f"sender={log_safe(self.sender)}")
        if self.recipients:
            shown = ",".join(log_safe(r, 100) for r in self.recipients[:5])
            more = f",+{len(self.recipients) - 5}" if len(self.recipients) > 5 else ""
            parts.append(f"recipients={shown}{more}")
        if self.decision is not None and not self.decision.accept:
            parts.append(f"wait={policy.format_wait(self.decision.wait)}")
        if self.decision is not None:
            delays = [o.pending_for for o in self.decision.outcomes if o.pending_for is not None]
            if delays:
                parts.append(f"delay={int(max(delays))}")
        if self.error:
            parts.append(f"error={log_safe(self.error, 300)}")
        return "greylist: " + ", ".join(parts)


def _client_name(received_from: Optional[str]) -> Optional[str]:
    """The reverse-DNS name in Courier's ``f`` record: ``dns; HELO (NAME [IP])``."""
    if not received_from or "(" not in received_from:
        return None
    inside = received_from[received_from.rfind("(") + 1 :]
    name = inside.split("[", 1)[0].strip().rstrip(")")
    return name or None


class GreylistFilter:
    """The filter: settings and a store, applied to messages."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        clock: Callable[[], float] = time.time,
        log: Callable[[str], None] = stderr_line,
        purge: str = "background",  # background | inline | never
    ) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.log = log
        self.purge_mode = purge
        self.timing = policy.Timing(
            greylist_time=settings.greylist_time,
            passed_ttl=settings.senders_passed_ttl,
            not_passed_ttl=settings.senders_not_passed_ttl,
        )
        self._purging = threading.Lock()
        # The dispatcher runs each message in its own thread, but the GIL runs
        # one at a time anyway: with a local store, messages taking turns for
        # the whole decision avoids a convoy on the store lock.
        self._turn = threading.Lock() if store.decisions_take_turns else contextlib.nullcontext()
        self._last_purge_check = float("-inf")

    # --- the dispatcher's call ---------------------------------------------------

    def do_filter(self, body_path: str, control_paths: Sequence[str]) -> str:
        """Decide one message; always returns a reply string, never raises."""
        try:
            with self._turn:
                verdict = self.check(control_paths)
        except Exception as error:  # the last net: nothing escapes into the dispatcher
            self.log(f"greylist: action=error, reason=internal, error={log_safe(repr(error))}")
            return self._store_failure_reply()
        if self.settings.log_decisions or verdict.action == "error":
            self.log(verdict.log_line())
        return verdict.reply

    def _store_failure_reply(self) -> str:
        return STORE_FAILURE_REPLY if self.settings.on_store_error == "tempfail" else ""

    # --- the decision ------------------------------------------------------------

    def check(self, control_paths: Sequence[str]) -> Verdict:
        """Decide one message and record it; the Verdict says what and why."""
        try:
            envelope = read_envelope(control_paths)
        except EnvelopeError as error:
            return Verdict(INTERNAL_FAILURE_REPLY, "error", "control-file", error=str(error))
        verdict = Verdict("", "accept", "", sender=envelope.sender,
                          client_address=envelope.client_ip,
                          client_name=_client_name(envelope.received_from),
                          recipients=envelope.recipients)
        if envelope.sender is None:
            verdict.reply, verdict.action, verdict.reason = (
                INTERNAL_FAILURE_REPLY, "error", "no-sender-record")
            return verdict
        if envelope.sender == "":
            verdict.reason = "null-sender"
            return verdict
        if envelope.client_ip is None:
            verdict.reason = "no-client-ip"
            return verdict
        try:
            address = parse_client_ip(envelope.client_ip)
        except InvalidClientAddress:
            verdict.reason = "bad-client-ip"
            verdict.error = f"not an IP address: {envelope.client_ip}"
            return verdict
        if not envelope.recipients:
            verdict.reason = "no-recipients"
            return verdict

        network = client_network(address, self.settings.ipv4_prefix, self.settings.ipv6_prefix)
        sender = envelope.sender.lower()
        keys = [triplet_key(sender, recipient.lower(), network)
                for recipient in envelope.recipients]
        now = self.clock()
        self._maybe_purge(now)
        try:
            decision = self._decide_in_store(keys, now)
        except (StoreError, OSError) as error:
            verdict.reply, verdict.action = self._store_failure_reply(), "error"
            verdict.reason, verdict.error = "store-failure", str(error)
            return verdict
        verdict.decision = decision
        reasons = {outcome.reason for outcome in decision.outcomes}
        if decision.accept:
            verdict.action = "pass"
            verdict.reason = "passed" if "passed" in reasons else "known"
        else:
            verdict.action = "greylist"
            verdict.reason = "early-retry" if "early-retry" in reasons else "new"
            verdict.reply = policy.tempfail_reply(decision.wait, self.settings.reply)
        return verdict

    def _decide_in_store(self, keys: Sequence[str], now: float) -> policy.Decision:
        with self.store.transaction() as tx:
            tx.lock_and_load(keys)
            stored = {
                key: policy.StoredState(
                    not_passed=tx.get(NOT_PASSED_TABLE, key),
                    passed=tx.get(PASSED_TABLE, key),
                )
                for key in dict.fromkeys(keys)
            }
            decision = policy.decide(keys, stored, now, self.timing)
            for write in decision.writes:
                table = _TABLE_OF[write.store]
                if write.timestamp is None:
                    tx.delete(table, write.key)
                else:
                    tx.set(table, write.key, write.timestamp)
        repaired = getattr(self.store, "salvaged", None)
        if repaired:
            self.log("greylist: rebuilt after a writer died while writing (entries past the damage "
                     f"are forgotten): {', '.join(repaired)}")
            repaired.clear()
        return decision

    # --- purging -----------------------------------------------------------------

    def _maybe_purge(self, now: float) -> None:
        # Asking the store takes its lock: ask at most once per interval
        # (and again if the clock was stepped back).
        if self.purge_mode == "never" or self._purging.locked():
            return
        if self._last_purge_check <= now < self._last_purge_check + self.settings.senders_purge_interval:
            return
        self._last_purge_check = now
        try:
            if not self.store.claim_purge(now, self.settings.senders_purge_interval):
                return
        except (StoreError, OSError) as error:
            self.log(f"greylist: purge not started: {log_safe(error)}")
            return
        if self.purge_mode == "inline":
            self.purge(now)
        else:
            threading.Thread(target=self.purge, args=(now,), name="greylist-purge",
                             daemon=True).start()

    def purge(self, now: float) -> int:
        """Drop expired entries from both stores; logs and swallows failures."""
        if not self._purging.acquire(blocking=False):
            return 0
        removed = 0
        try:
            removed += self.store.purge(NOT_PASSED_TABLE, now - self.settings.senders_not_passed_ttl)
            removed += self.store.purge(PASSED_TABLE, now - self.settings.senders_passed_ttl)
        except Exception as error:
            self.log(f"greylist: purge failed: {log_safe(repr(error))}")
        finally:
            self._purging.release()
        return removed
