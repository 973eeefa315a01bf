"""The tables' names: a dbm file each, or an SQL table each, of the store.

The first two are the reference's (courier-pythonfilter's), so that its
stores and ours are the same files and tables.
"""

PASSED_TABLE = "greylist_Passed"
NOT_PASSED_TABLE = "greylist_NotPassed"
TABLES = (PASSED_TABLE, NOT_PASSED_TABLE)
# Ours, opened only when auto-whitelisting is on (or the table already exists):
# client network (CIDR text) -> last seen and how many triplets of it passed.
AUTO_WHITELIST_TABLE = "greylist_AutoWhitelist"
# Ours, opened only with match_retry_by_message_id (or when it exists): a
# digest of sender, recipient and Message-ID -> when the message was first greylisted.
MESSAGE_ID_TABLE = "greylist_MessageID"
ALL_TABLES = TABLES + (AUTO_WHITELIST_TABLE, MESSAGE_ID_TABLE)
