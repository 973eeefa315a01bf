"""Courier's own SPF verdict on the envelope sender, read from the message header.

Pure: takes the header block as bytes.  With ``BOFHSPFMAILFROM`` set,
Courier's submit writes, above its own ``Received:`` line::

    Received-SPF: pass (example.org: 192.0.2.1 is authorized to use ...)
      SPF=MAILFROM;
      sender=alice@example.org;
      remoteip=::ffff:192.0.2.1;
      ...

Only headers above the first ``Received:`` line are believed: everything
below it came from the client, which could write any ``Received-SPF`` it
likes (Courier renames such headers ``Old-Received-SPF`` when it checks SPF
itself, but not when it does not).
"""

from __future__ import annotations

from typing import Iterator, Optional, Tuple

HEADER_LIMIT = 65536  # Courier's own headers are at the top; no need to read further


def _headers(block: bytes) -> Iterator[Tuple[str, str]]:
    """(lower-cased name, unfolded value) of each header, until the blank line."""
    name: Optional[str] = None
    value: list = []
    for raw in block.split(b"\n"):
        line = raw.rstrip(b"\r").decode("latin-1")
        if line[:1] in (" ", "\t") and name is not None:
            value.append(line.strip())
            continue
        if name is not None:
            yield name, " ".join(value)
        if not line:
            return
        head, colon, rest = line.partition(":")
        if not colon:
            name = None
            continue
        name, value = head.strip().lower(), [rest.strip()]
    if name is not None:
        yield name, " ".join(value)


def _fields(value: str) -> dict:
    """``key=value;`` pairs after the result and comment of a Received-SPF value."""
    fields = {}
    for part in value.split(";"):
        key, equals, text = part.strip().partition("=")
        if equals:
            fields.setdefault(key.strip().lower(), text.strip())
    return fields


def spf_pass_domain(header_block: bytes, sender: str) -> Optional[str]:
    """The sender's domain when Courier's SPF check of MAIL FROM said pass, else None."""
    domain = sender.rpartition("@")[2].lower()
    if not domain or "@" not in sender:
        return None
    for name, value in _headers(header_block):
        if name == "received":
            return None  # below Courier's own lines: the client's words
        if name != "received-spf":
            continue
        result = value.split(None, 1)[0].lower() if value else ""
        comment_end = value.find(")")
        fields = _fields(value[comment_end + 1:] if comment_end >= 0 else value)
        if fields.get("spf", "").upper() != "MAILFROM":
            continue
        if result == "pass" and fields.get("sender", "").lower() == sender.lower():
            return domain
        return None
    return None
