"""Glue: control files -> triplets -> one store transaction -> policy -> reply.

This is the one place where failures of the other rooms become a safe reply
and a log line.  ``GreylistFilter.do_filter`` never raises.

Replies for bad input (documented in the README):

=============================================  ===========================================
control file missing or unreadable              ``451 Internal failure locating control files``
no sender record                                ``451 Internal failure locating control files``
null sender (bounces)                           accept (``action=pass, reason=null-sender``)
no ``OTCPREMOTEIP`` (locally submitted mail)    accept (``reason=no-client-ip``)
client address that is not an IP address        accept (``reason=bad-client-ip``)
no undelivered recipient                        accept (``reason=no-recipients``)
store failure while deciding                    accept, or the tempfail reply when
                                                ``on_store_error = 'tempfail'``
=============================================  ===========================================
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import threading
import time
from typing import Callable, Mapping, Optional, Sequence, Tuple

from . import policy
from .decision_line import Verdict, log_safe
from .envelope import EnvelopeError, message_id, read_envelope, read_header_block
from .maillog import stderr_line
from .metrics import LONG_LOCK_WAIT, Counts
from .relay import SmtpAccess, SmtpAccessError
from .relay import default_path as relay_default_path
from .reputation import DnsListsUnavailable, PatternFileError, ReputationCheck
from .senders import normalize_sender
from .settings import Settings, SettingsError
from .spf import spf_pass_domain
from .stores import (
    AUTO_WHITELIST_TABLE,
    MESSAGE_ID_TABLE,
    NOT_PASSED_TABLE,
    PASSED_TABLE,
    Store,
    StoreError,
)
from .triplet import InvalidClientAddress, IPAddress, client_network, parse_client_ip, triplet_key
from .upkeep import Upkeep
from .whitelist import WhitelistEntryError
from .whitelist import build as build_whitelist
from .whitelist_files import WhitelistFileError, WhitelistFiles

INTERNAL_FAILURE_REPLY = "451 Internal failure locating control files"
STORE_FAILURE_REPLY = "451 4.3.0 Greylisting temporarily unavailable, please try again later"

_TABLE_OF = {policy.PASSED: PASSED_TABLE, policy.NOT_PASSED: NOT_PASSED_TABLE,
             policy.MESSAGE_ID: MESSAGE_ID_TABLE}


def _client_name(received_from: Optional[str]) -> Optional[str]:
    """The reverse-DNS name in Courier's ``f`` record: ``dns; HELO (NAME [IP])``."""
    if not received_from or "(" not in received_from:
        return None
    inside = received_from[received_from.rfind("(") + 1 :]
    name = inside.split("[", 1)[0].strip().rstrip(")")
    return name or None


def network_of(address: IPAddress, prefix: int) -> str:
    """A client network in CIDR notation: the auto-whitelist's key."""
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


def open_lists(settings: Settings, log: Callable[[str], None]
               ) -> Tuple[Optional[WhitelistFiles], Optional[SmtpAccess]]:
    """The whitelists and Courier's smtpaccess database the settings name, read now.

    Raises SettingsError when one cannot be read.
    """
    try:
        base = build_whitelist(settings.whitelist_clients, settings.whitelist_senders,
                               settings.whitelist_recipients)
        whitelists = (WhitelistFiles(base, settings.whitelist_files, log)
                      if base or settings.whitelist_files else None)
        smtpaccess = (SmtpAccess(settings.smtpaccess_file or relay_default_path(), log)
                      if settings.skip_relayclients else None)
    except (WhitelistEntryError, WhitelistFileError, SmtpAccessError) as error:
        raise SettingsError(str(error)) from None
    return whitelists, smtpaccess


def open_reputation(settings: Settings, counts: Optional[Counts]) -> Optional[ReputationCheck]:
    """The DNS lists and name patterns the settings ask for, or None.

    Raises SettingsError when dnspython is missing or a pattern file is unusable.
    """
    if not (settings.dnswl_zones or settings.dnsbl_zones or settings.greylist_clients == "suspicious"):
        return None
    try:
        return ReputationCheck(settings, on_query=counts.dns_query if counts is not None else None)
    except (DnsListsUnavailable, PatternFileError) as error:
        raise SettingsError(str(error)) from None


class _TurnLetGo:
    """Around a DNS wait: the turn held by do_filter is let go, and taken again after."""

    def __init__(self, turn: threading.Lock) -> None:
        self.turn = turn

    def __enter__(self) -> None:
        self.turn.release()

    def __exit__(self, *exception) -> None:
        self.turn.acquire()


class GreylistFilter:
    """The filter: settings and a store, applied to messages."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        clock: Callable[[], float] = time.time,
        log: Callable[[str], None] = stderr_line,
        purge: str = "background",  # background | inline | never
        counts: Optional[Counts] = None,  # what it did, for the metrics file
    ) -> None:
        """Raises SettingsError when a whitelist file or smtpaccess cannot be read."""
        self.settings = settings
        self.store = store
        self.counts = counts
        self.clock = clock
        self.log = log
        self.timing = policy.Timing(
            greylist_time=settings.greylist_time,
            passed_ttl=settings.senders_passed_ttl,
            not_passed_ttl=settings.senders_not_passed_ttl,
        )
        # The dispatcher runs each message in its own thread, but the GIL runs
        # one at a time anyway.  With a local store, messages take turns for the
        # whole decision, its log line included: threads interleaving inside a
        # decision make each of its system calls a hand-over of the GIL to
        # another thread (4 threads then made 54-80% of one thread's
        # decisions; taking turns, 83-98%).  Measured and not kept: a turn
        # that bounds how often a thread may take it back while others wait
        # (fairer in a tight loop, slower: 77-84%).
        self._turn = threading.Lock() if store.decisions_take_turns else contextlib.nullcontext()
        # Through self.log, which a command may replace after building the filter.
        self.upkeep = Upkeep(settings, store, lambda line: self.log(line), purge, counts)
        self.whitelists, self.smtpaccess = open_lists(settings, log)
        self.greylist_recipients = (build_whitelist((), (), settings.greylist_recipients)
                                    if settings.greylist_recipients else None)
        self.reputation = open_reputation(settings, counts)
        self.last_decision: Optional[float] = None  # Unix time of the last decision without an error

    # --- the dispatcher's call ---------------------------------------------------

    def do_filter(self, body_path: str, control_paths: Sequence[str]) -> str:
        """Decide one message; always returns a reply string, never raises."""
        counts = self.counts
        started = time.perf_counter() if counts is not None else 0.0
        try:
            with self._turn:
                verdict = self.check(control_paths, body_path, in_turn=True)
                if self.settings.log_decisions or verdict.action == "error":
                    self.log(verdict.log_line())
        except Exception as error:  # the last net: nothing escapes into the dispatcher
            self.log(f"greylist: action=error, reason=internal, error={log_safe(repr(error))}")
            if counts is not None:
                finished = time.perf_counter()
                counts.decided("error", "internal", finished - started, finished)
            return self._store_failure_reply()
        if verdict.action != "error":
            self.last_decision = time.time()
        if counts is not None:
            finished = time.perf_counter()
            counts.decided(verdict.action, verdict.reason, finished - started, finished)
        return verdict.reply

    def _store_failure_reply(self) -> str:
        return STORE_FAILURE_REPLY if self.settings.on_store_error == "tempfail" else ""

    # --- the decision ------------------------------------------------------------

    def check(self, control_paths: Sequence[str], body_path: Optional[str] = None,
              in_turn: bool = False) -> Verdict:
        """Decide one message and record it; the Verdict says what and why.

        ``in_turn``: the caller holds the turn (do_filter); it is let go while
        DNS lists are waited for, so that other messages are decided meanwhile.
        """
        try:
            envelope = read_envelope(control_paths)
        except EnvelopeError as error:
            return Verdict(INTERNAL_FAILURE_REPLY, "error", "control-file", error=str(error))
        verdict = Verdict("", "pass", "", sender=envelope.sender,
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
        settings = self.settings
        sender = envelope.sender.lower()
        recipients = envelope.recipients

        if settings.skip_authenticated and envelope.auth_user:
            verdict.action, verdict.reason = "whitelist", "authenticated"
            return verdict
        whitelist = self.whitelists.current() if self.whitelists is not None else None
        if whitelist is not None:
            rule = whitelist.match_client(address, verdict.client_name)
            if rule is not None:
                verdict.action, verdict.reason = "whitelist", f"whitelisted:client:{rule}"
                return verdict
        if self.smtpaccess is not None and self.smtpaccess.is_relay_client(address):
            verdict.action, verdict.reason = "whitelist", "relayclient"
            return verdict
        if whitelist is not None:
            rule = whitelist.match_sender(sender)
            if rule is not None:
                verdict.action, verdict.reason = "whitelist", f"whitelisted:sender:{rule}"
                return verdict
            if whitelist.has_recipient_rules:
                # Whitelisted recipients are left out; the others still decide.
                rules = [whitelist.match_recipient(r) for r in recipients]
                kept = [r for r, rule in zip(recipients, rules) if rule is None]
                if not kept:
                    verdict.action = "whitelist"
                    verdict.reason = f"whitelisted:recipient:{rules[0]}"
                    return verdict
                verdict.whitelisted_recipients = len(recipients) - len(kept)
                recipients = kept
        if self.greylist_recipients is not None:
            # Greylisted only when every recipient asked for it: delaying the
            # message would delay it for the others too (see docs/policy.md).
            if any(self.greylist_recipients.match_recipient(r) is None for r in recipients):
                verdict.reason = "recipient-not-greylisted"
                return verdict
        timing = self.timing
        if self.reputation is not None:
            waiting = _TurnLetGo(self._turn) if in_turn and self.store.decisions_take_turns else None
            verdict.reputation = reputation = self.reputation.assess(address, verdict.client_name, waiting)
            if reputation.dnswl:
                verdict.reason = f"dnswl:{reputation.dnswl}"
                return verdict
            if reputation.dnsbl:
                timing = dataclasses.replace(timing, greylist_time=settings.dnsbl_greylist_time)
            elif settings.greylist_clients == "suspicious" and not reputation.suspicious:
                verdict.reason = "not-suspicious"
                return verdict

        headers = read_header_block(body_path) if body_path and (
            settings.spf_triplets or settings.match_retry_by_message_id) else b""
        if settings.spf_triplets and headers:
            verdict.spf_domain = spf_pass_domain(headers, envelope.sender)
        keys = self.triplet_keys(sender, recipients, address, verdict.spf_domain)
        message_keys = {}
        if settings.match_retry_by_message_id:
            verdict.message_id = message_id(headers)
            if verdict.message_id is not None:
                message_keys = dict(zip(keys, self.triplet_keys(sender, recipients, address,
                                                                message=verdict.message_id)))
        client_key = self.client_key(address)
        now = self.clock()
        self.upkeep.maybe_start(now)
        try:
            decision = self._decide_in_store(keys, client_key, now, timing, message_keys)
        except (StoreError, OSError) as error:
            if self.counts is not None:
                self.counts.store_error(error)
            verdict.reply, verdict.action = self._store_failure_reply(), "error"
            verdict.reason, verdict.error = "store-failure", str(error)
            return verdict
        if decision is None:
            verdict.action, verdict.reason = "whitelist", "auto-whitelisted"
            return verdict
        verdict.decision = decision
        reasons = {outcome.reason for outcome in decision.outcomes}
        if decision.accept:
            verdict.action = "pass"
            verdict.reason = next((r for r in ("retry-by-message-id", "passed") if r in reasons), "known")
        else:
            verdict.action = "learn" if settings.learn_only else "greylist"
            verdict.reason = "early-retry" if "early-retry" in reasons else "new"
            if not settings.learn_only:
                verdict.reply = policy.tempfail_reply(decision.wait, settings.reply)
        return verdict

    def triplet_keys(self, sender: str, recipients: Sequence[str], address: IPAddress,
                     spf_domain: Optional[str] = None, message: Optional[str] = None) -> list:
        """The store keys of a message's triplets, as the settings shape them.

        With ``message`` (a Message-ID), the keys of the Message-ID table instead.
        """
        settings = self.settings
        if message is not None:
            network = "message-id:" + message
        elif spf_domain:
            network = "spf:" + spf_domain
        else:
            network = client_network(address, settings.ipv4_prefix, settings.ipv6_prefix)
        sender = sender.lower()
        if settings.normalize_senders:
            sender = normalize_sender(sender)
        return [triplet_key(sender, recipient.lower(), network) for recipient in recipients]

    def client_key(self, address: IPAddress) -> Optional[str]:
        """The auto-whitelist's key for a client, or None when auto-whitelisting is off."""
        if self.settings.auto_whitelist_clients <= 0:
            return None
        prefix = self.settings.ipv4_prefix if address.version == 4 else self.settings.ipv6_prefix
        return network_of(address, prefix)

    def _decide_in_store(self, keys: Sequence[str], client_key: Optional[str], now: float,
                         timing: policy.Timing, message_keys: Mapping[str, str]
                         ) -> Optional[policy.Decision]:
        """Read, decide, write back, in one transaction; None means auto-whitelisted."""
        decision: Optional[policy.Decision] = None
        unique = list(dict.fromkeys(keys))
        store = self.store
        store.prefetch(NOT_PASSED_TABLE, unique)
        store.prefetch(PASSED_TABLE, unique)
        if client_key is not None:
            store.prefetch(AUTO_WHITELIST_TABLE, (client_key,))
        with store.transaction() as tx:
            tx.lock_and_load(keys, (client_key,) if client_key else (),
                             tuple(message_keys.values()) if message_keys else ())
            if tx.waited > LONG_LOCK_WAIT and self.counts is not None:
                self.counts.lock_waited()
            record = None
            if client_key is not None:
                record = tx.get_counted(AUTO_WHITELIST_TABLE, client_key)
                if policy.auto_whitelisted(record, now, self.timing.passed_ttl,
                                           self.settings.auto_whitelist_clients):
                    update = policy.client_record_after(record, None, now, self.timing.passed_ttl)
                    if update is not None:
                        tx.set_counted(AUTO_WHITELIST_TABLE, client_key, *update)
                    return None
            stored = {
                key: policy.StoredState(
                    not_passed=tx.get(NOT_PASSED_TABLE, key),
                    passed=tx.get(PASSED_TABLE, key),
                )
                for key in unique
            }
            decision = policy.decide(keys, stored, now, timing)
            if message_keys and not decision.accept:
                seen = {key: tx.get(MESSAGE_ID_TABLE, key) for key in message_keys.values()}
                decision = policy.retried_by_message_id(decision, message_keys, seen, now, timing)
            for write in decision.writes:
                table = _TABLE_OF[write.store]
                if write.timestamp is None:
                    tx.delete(table, write.key)
                else:
                    tx.set(table, write.key, write.timestamp)
            if client_key is not None:
                update = policy.client_record_after(record, decision, now, self.timing.passed_ttl)
                if update is not None:
                    tx.set_counted(AUTO_WHITELIST_TABLE, client_key, *update)
        return decision

    # --- upkeep ------------------------------------------------------------------

    def purge(self, now: float, progress: Optional[Callable[[str, int], None]] = None) -> int:
        """Drop expired entries from every table now; see Upkeep.purge."""
        return self.upkeep.purge(now, progress)

    def compact(self) -> None:
        """Fold what piled up in the store now; see Upkeep.compact."""
        self.upkeep.compact()
