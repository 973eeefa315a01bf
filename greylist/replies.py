"""The replies the filter gives Courier: the fixed texts, and the greylisting reply with its wait."""

from __future__ import annotations

import functools
import math

DEFAULT_REPLY = "451 4.7.1 Greylisting in action, please come back in {wait}"
INTERNAL_FAILURE_REPLY = "451 Internal failure locating control files"
# Greylisting is not there for this message (the filter did not start, or the
# store failed with on_store_error = tempfail): a retry later gets the real answer.
UNAVAILABLE_REPLY = "451 4.3.0 Greylisting temporarily unavailable, please try again later"


def format_wait(seconds: float) -> str:
    """``HH:MM:SS`` for a wait, rounded up, hours not wrapping at 24.

    Rounding up means a sender still refused is never told ``00:00:00``
    (unless greylist_time itself is 0) and never retries a second early.
    """
    return _hours_minutes_seconds(max(0, math.ceil(seconds - 1e-6)))


@functools.lru_cache(maxsize=1024)
def _hours_minutes_seconds(total: int) -> str:
    # Every greylisted message's reply and log line: mostly the same few waits.
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}"


def tempfail_reply(wait: float, template: str = DEFAULT_REPLY) -> str:
    """The SMTP reply for a message that must wait ``wait`` seconds."""
    return template.format(wait=format_wait(wait))

