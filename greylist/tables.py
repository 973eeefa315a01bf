"""The tables' names: a dbm file each, or an SQL table each, of the store.

The first two are the reference's (courier-pythonfilter's), so that its
stores and ours are the same files and tables.  Ours are opened only when a
setting uses them, or when they exist already (so that the commands see them).
"""

from __future__ import annotations

from typing import Tuple

PASSED_TABLE = "greylist_Passed"
NOT_PASSED_TABLE = "greylist_NotPassed"
TABLES = (PASSED_TABLE, NOT_PASSED_TABLE)
# auto_whitelist_clients: client network (CIDR text) -> last seen and how many
# triplets of it passed.
AUTO_WHITELIST_TABLE = "greylist_AutoWhitelist"
# match_retry_by_message_id: a digest of sender, recipient and Message-ID ->
# when the message was first greylisted.
MESSAGE_ID_TABLE = "greylist_MessageID"
# auto_whitelist_senders and auto_whitelist_domains: a digest of sender and
# client network -> when a message of that sender last passed greylisting there.
SENDERS_TABLE = "greylist_Senders"
# auto_whitelist_domains: a digest of sender domain and client network ->
# last seen and how many distinct senders of the domain passed from there.
DOMAINS_TABLE = "greylist_Domains"
# whitelist_replies: a digest of a remote address and our user (and, for the
# strict form, a Message-ID our user sent) -> when our user last wrote to it.
REPLIES_TABLE = "greylist_Replies"

# greytrap_recipients: client network (CIDR text) -> when it was trapped.
GREYTRAPS_TABLE = "greylist_Greytraps"

OPTIONAL_TABLES = (AUTO_WHITELIST_TABLE, MESSAGE_ID_TABLE, SENDERS_TABLE, DOMAINS_TABLE, REPLIES_TABLE,
                   GREYTRAPS_TABLE)
ALL_TABLES = TABLES + OPTIONAL_TABLES
# Tables whose values are "time count" (the others hold a time).
COUNTED_TABLES = (AUTO_WHITELIST_TABLE, DOMAINS_TABLE)
# Tables purged with senders_not_passed_ttl (greylist_Greytraps: greytrap_time; the others:
# senders_passed_ttl).
SHORT_LIVED_TABLES = (NOT_PASSED_TABLE, MESSAGE_ID_TABLE)


def wanted_tables(settings) -> Tuple[str, ...]:
    """Our tables that the settings use (a ``settings.Settings``)."""
    greytraps = bool(settings.greytrap_recipients)
    wanted = {
        # With greytraps, the client networks that passed are counted: they are never trapped.
        AUTO_WHITELIST_TABLE: settings.auto_whitelist_clients > 0 or greytraps,
        MESSAGE_ID_TABLE: settings.match_retry_by_message_id,
        SENDERS_TABLE: settings.auto_whitelist_senders or settings.auto_whitelist_domains > 0,
        DOMAINS_TABLE: settings.auto_whitelist_domains > 0,
        REPLIES_TABLE: bool(settings.whitelist_replies),
        GREYTRAPS_TABLE: greytraps,
    }
    return tuple(table for table in OPTIONAL_TABLES if wanted[table])


def ttl_of(table: str, settings) -> float:
    """How long an entry of ``table`` lives after it was last written (a ``settings.Settings``)."""
    if table in SHORT_LIVED_TABLES:
        return settings.senders_not_passed_ttl
    if table == GREYTRAPS_TABLE:
        return settings.greytrap_time
    return settings.senders_passed_ttl
