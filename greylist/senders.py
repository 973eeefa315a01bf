"""Envelope senders that change with every message, reduced to what stays the same.

Pure.  Mailing lists and bulk senders put a per-message or per-recipient tag
in the envelope sender (VERP, bounce numbers, BATV, SRS, ``+extension``), so
each of their messages is a new triplet and waits again.  With
``normalize_senders`` on, the sender goes into the triplet reduced:

* SRS (``SRS0=HHH=TT=example.org=alice@forwarder.net``, and the ``SRS1``
  form of a second forwarder): the original sender, ``alice@example.org``;
* BATV (``prvs=TAG=alice@example.org``, ``msprvs1=TAG=...``,
  ``btv1==TAG==...``, and the older ``prvs=alice/TAG``): ``alice@example.org``;
* a ``+extension``: dropped (``list+bounces-17=you=example.com@...``);
* numbers standing alone in the local part (``bounce-123456``) and long
  hexadecimal tags (``b-7f3a9c21e0``): replaced by ``#``.

The domain is kept as it is: the triplet still names who sends.
"""

from __future__ import annotations

import functools
import re

_SRS0 = re.compile(r"^srs0[=+-][^=]*=[^=]*=([^=]+)=(.+)$")
_SRS1 = re.compile(r"^srs1[=+-][^=]*=[^=]*==[^=]*=[^=]*=([^=]+)=(.+)$")
_BATV = re.compile(r"^(?:prvs|msprvs\d*)=[^=]+=(.+)$")
_BATV_BTV1 = re.compile(r"^btv1==[^=]+==(.+)$")
_BATV_OLD = re.compile(r"^prvs=(.+)/[0-9a-f]{6,}$")
_NUMBER = re.compile(r"(?<![a-z0-9])[0-9]+(?![a-z0-9])")
_HEX_TAG = re.compile(r"(?<![a-z0-9])(?=[0-9a-f]*[0-9])[0-9a-f]{8,}(?![a-z0-9])")


@functools.lru_cache(maxsize=4096)
def normalize_sender(sender: str) -> str:
    """The sender with its per-message tags removed (see the module's docstring).

    Takes and returns a lower-cased address; one without ``@`` is returned as is.
    """
    local, at, domain = sender.rpartition("@")
    if not at or not local:
        return sender
    srs = _SRS1.match(local) or _SRS0.match(local)
    if srs:
        return normalize_sender(f"{srs.group(2)}@{srs.group(1)}")
    batv = _BATV.match(local) or _BATV_BTV1.match(local) or _BATV_OLD.match(local)
    if batv:
        local = batv.group(1)
    local = local.split("+", 1)[0] or local
    local = _HEX_TAG.sub("#", local)
    local = _NUMBER.sub("#", local)
    return f"{local}@{domain}"
