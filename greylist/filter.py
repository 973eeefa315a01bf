"""Glue: control files -> facts -> one store transaction -> the policy's decision -> reply.

Reads, decides, writes, in that order: ``exemptions.py`` says what matched,
``policy.decide_message`` decides (asking for the DNS lists or the store
when its rules need them), the store transaction reads every key once and
writes every change once.  This is the one place where failures of the
other rooms become a safe reply and a log line: ``do_filter`` never raises.

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
import threading
import time
from typing import Callable, Optional, Sequence

from . import header, policy
from .courier_db import me
from .decision_line import Verdict, log_safe
from .envelope import EnvelopeError, message_id, read_envelope, read_header_block, references
from .exemptions import Exemptions
from .keys import Keys, MessageKeys
from .local_domains import LocalDomains
from .maillog import stderr_line
from .metrics import LONG_LOCK_WAIT, Counts
from .replies import INTERNAL_FAILURE_REPLY, UNAVAILABLE_REPLY
from .settings import Settings
from .spf import spf_pass_domain
from .stores import (
    AUTO_WHITELIST_TABLE,
    DOMAINS_TABLE,
    GREYTRAPS_TABLE,
    MESSAGE_ID_TABLE,
    NOT_PASSED_TABLE,
    PASSED_TABLE,
    REPLIES_TABLE,
    SENDERS_TABLE,
    Store,
    StoreError,
    Transaction,
)
from .upkeep import Upkeep
from .version import VERSION

STORE_FAILURE_REPLY = UNAVAILABLE_REPLY
_TRIPLET_TABLES = (NOT_PASSED_TABLE, PASSED_TABLE)


def rules_of(settings: Settings) -> policy.Rules:
    """The policy's rules, as the settings switch them on."""
    return policy.Rules(
        timing=policy.Timing(settings.greylist_time, settings.senders_passed_ttl,
                             settings.senders_not_passed_ttl),
        dnsbl_greylist_time=settings.dnsbl_greylist_time,
        suspicious_only=settings.greylist_clients == "suspicious",
        auto_whitelist_clients=settings.auto_whitelist_clients,
        auto_whitelist_senders=settings.auto_whitelist_senders,
        auto_whitelist_domains=settings.auto_whitelist_domains,
        greytrap_time=settings.greytrap_time if settings.greytrap_recipients else 0.0,
        learn_only=settings.learn_only, reply=settings.reply)


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
        """Raises a GreylistError when a whitelist file, smtpaccess or a pattern file cannot be read."""
        self.settings = settings
        self.store = store
        self.counts = counts
        self.clock = clock
        self.log = log
        self.rules = rules_of(settings)
        # The dispatcher runs each message in its own thread, but the GIL runs
        # one at a time anyway.  With a local store, messages take turns for the
        # whole decision, its log line included: threads interleaving inside a
        # decision make each of its system calls a hand-over of the GIL to
        # another thread (4 threads then made 54-80% of one thread's
        # decisions; taking turns, 83-98%).
        self._turn = threading.Lock() if store.decisions_take_turns else contextlib.nullcontext()
        # Through self.log, which a command may replace after building the filter.
        self.upkeep = Upkeep(settings, store, lambda line: self.log(line), purge, counts)
        self.exemptions = Exemptions(settings, log, counts.dns_query if counts is not None else None)
        self.keys = Keys(settings)
        self._strict_replies = settings.whitelist_replies == "in-reply-to"
        self._reads_headers = settings.spf_triplets or settings.match_retry_by_message_id \
            or self._strict_replies
        # whitelist_replies: which recipients of our users' mail are remote (Courier's locals).
        self.local_domains = LocalDomains(log=log) if settings.whitelist_replies else None
        self.last_decision: Optional[float] = None  # Unix time of the last decision without an error
        self.header_mode = settings.x_greylist_header
        # Read for every message: kept here rather than looked up in the settings each time.
        self._log_decisions = settings.log_decisions
        self._spf_triplets = settings.spf_triplets
        self._match_by_message_id = settings.match_retry_by_message_id
        self.signature = f"courier-greylist-{VERSION} at {settings.x_greylist_host or me()}"

    # --- the dispatcher's call ---------------------------------------------------

    def do_filter(self, body_path: str, control_paths: Sequence[str]) -> str:
        """Decide one message; always returns a reply string, never raises."""
        counts = self.counts
        started = time.perf_counter() if counts is not None else 0.0
        try:
            with self._turn:
                verdict = self.check(control_paths, body_path, True)
                decision = verdict.decision
                if self._log_decisions or decision.action == "error":
                    self.log(verdict.log_line())
        except Exception as error:  # the last net: nothing escapes into the dispatcher
            self.log(f"greylist: action=error, reason=internal, error={log_safe(repr(error))}")
            if counts is not None:
                finished = time.perf_counter()
                counts.decided("error", "internal", finished - started, finished)
            return self._store_failure_reply()
        action = decision.action
        if self.header_mode != "none" and body_path and decision.reply == "" \
                and action in ("pass", "whitelist"):
            self._add_header(body_path, verdict)
        if action != "error":
            self.last_decision = time.time()
        if counts is not None:
            finished = time.perf_counter()
            counts.decided(action, decision.reason, finished - started, finished)
        return decision.reply

    def _add_header(self, body_path: str, verdict: Verdict) -> None:
        """The X-Greylist line in front of the message; a failure is one log line, and the
        message passes as it was."""
        decision = verdict.decision
        line = header.header_line(self.header_mode, decision.reason, decision.delay, self.signature,
                                  self.clock())
        if line is None:
            return
        try:
            header.prepend(body_path, line)
        except (OSError, ValueError) as error:
            self.log(f"greylist: the X-Greylist header was not added ({log_safe(str(error))}); "
                     f"the message passes as it was")

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
            return Verdict(policy.Decision("error", reason="control-file", reply=INTERNAL_FAILURE_REPLY),
                           error=str(error))
        facts = self.exemptions.facts(envelope)
        if self.local_domains is not None and facts.sender and facts.ours:
            facts = self._with_reply_keys(facts, body_path)
        now = self.clock()
        step = policy.decide_message(facts, None, now, self.rules)
        if step is policy.ASK_DNS_LISTS:
            waiting = _TurnLetGo(self._turn) if in_turn and self.store.decisions_take_turns else None
            facts = facts._replace(standing=self.exemptions.standing(facts, waiting))
            now = self.clock()
            step = policy.decide_message(facts, None, now, self.rules)
        if not isinstance(step, policy.ReadStore):
            verdict = Verdict(step, facts)
            if step.writes:
                self._record(verdict)
            return verdict
        verdict = Verdict(step, facts)  # the decision comes from the store's transaction
        # Read here, not before: a message an earlier rule decided costs no read of its data file.
        headers = read_header_block(body_path) if body_path and self._reads_headers else b""
        if self._spf_triplets and headers:
            verdict.spf_domain = spf_pass_domain(headers, facts.sender)
        if self._match_by_message_id:
            verdict.message_id = message_id(headers)
        self.upkeep.maybe_start(now)
        try:
            verdict.decision = self._decide_in_store(facts, step, now, verdict.spf_domain, verdict.message_id,
                                                     references(headers) if self._strict_replies else ())
        except (StoreError, OSError) as error:
            if self.counts is not None:
                self.counts.store_error(error)
            verdict.decision = policy.Decision("error", reason="store-failure",
                                               reply=self._store_failure_reply())
            verdict.error = str(error)
        return verdict

    def _with_reply_keys(self, facts: policy.Facts, body_path: Optional[str]) -> policy.Facts:
        """Our user's mail: the keys recording whom it goes to outside (whitelist_replies)."""
        remote = self.local_domains.remote(facts.recipients)
        if not remote:
            return facts
        sent = None  # the strict form also records the Message-ID our user sent
        if self._strict_replies and body_path:
            sent = message_id(read_header_block(body_path))
        return facts._replace(reply_keys=self.keys.replies_sent(facts.sender, remote, sent))

    def _record(self, verdict: Verdict) -> None:
        """The writes of a message decided without the store (our users' mail, recorded for
        whitelist_replies): a failure is one log line, and the message passes all the same."""
        try:
            with self.store.transaction() as tx:
                tx.write(verdict.decision.writes)
        except (StoreError, OSError) as error:
            if self.counts is not None:
                self.counts.store_error(error)
            self.log(f"greylist: could not record the recipients of {verdict.facts.sender!r} "
                     f"for whitelist_replies: {log_safe(str(error))}")

    def _decide_in_store(self, facts: policy.Facts, request: policy.ReadStore, now: float,
                         spf_domain: Optional[str], message: Optional[str],
                         refers_to: Sequence[str] = ()) -> policy.Decision:
        """Read every key once, decide once, write once: one transaction."""
        keys = self.keys.of_message(facts.sender, request.recipients, facts.address, spf_domain, message,
                                    refers_to)
        self.store.prefetch(_TRIPLET_TABLES, keys.unique)  # before the lock, where the store can (gdbm)
        with self.store.transaction() as tx:
            stored = read_stored(tx, keys)
            if tx.waited > LONG_LOCK_WAIT and self.counts is not None:
                self.counts.lock_waited()
            decision = policy.decide_stored(request, stored, now, self.rules)
            tx.write(decision.writes)
        return decision

    # --- upkeep ------------------------------------------------------------------

    def purge(self, now: float, progress: Optional[Callable[[str, int], None]] = None) -> int:
        """Drop expired entries from every table now; see Upkeep.purge."""
        return self.upkeep.purge(now, progress)


def read_stored(tx: Transaction, keys: MessageKeys) -> policy.Stored:
    """What the store holds under a message's keys, every key read once (in a transaction)."""
    client, sender, domain, trap = keys.client, keys.sender, keys.domain, keys.trap
    more: dict = {}
    if client or keys.messages or sender or keys.replies:  # (the reference's settings: none)
        for table, listed in ((AUTO_WHITELIST_TABLE, (client,) if client else ()),
                              (GREYTRAPS_TABLE, (trap,) if trap else ()),
                              (MESSAGE_ID_TABLE, tuple(keys.messages.values())),
                              (SENDERS_TABLE, (sender,) if sender else ()),
                              (DOMAINS_TABLE, (domain,) if domain else ()),
                              (REPLIES_TABLE, tuple(key for each in keys.replies for key in each))):
            if listed:
                more[table] = listed
    tx.lock_and_load(keys.triplets, more)
    return policy.Stored(
        keys.triplets, tx.triplet_states(keys.unique),
        client, tx.get_counted(AUTO_WHITELIST_TABLE, client) if client else None,
        keys.messages,
        {key: tx.get(MESSAGE_ID_TABLE, key) for key in keys.messages.values()} if keys.messages else {},
        sender, tx.get(SENDERS_TABLE, sender) if sender else None,
        domain, tx.get_counted(DOMAINS_TABLE, domain) if domain else None,
        tuple(_newest(tx.get(REPLIES_TABLE, key) for key in each) for each in keys.replies)
        if keys.replies else (),
        trap, tx.get(GREYTRAPS_TABLE, trap) if trap else None)


def _newest(times) -> Optional[float]:
    return max((when for when in times if when is not None), default=None)
