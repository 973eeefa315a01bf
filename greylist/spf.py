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


def _headers(block: bytes) -> Iterator[Tuple[str, list]]:
    """(lower-cased name, its lines) of each header, until the blank line.

    The lines are kept apart: Courier writes the result and its comment on
    the first line and one ``key=value;`` field per continuation line, and
    the comment (which may quote a domain's own SPF text) must never be
    read as fields.
    """
    name: Optional[str] = None
    lines: list = []
    for raw in block.split(b"\n"):
        line = raw.rstrip(b"\r").decode("latin-1")
        if line[:1] in (" ", "\t") and name is not None:
            lines.append(line.strip())
            continue
        if name is not None:
            yield name, lines
        if not line:
            return
        head, colon, rest = line.partition(":")
        if not colon:
            name = None
            continue
        name, lines = head.strip().lower(), [rest.strip()]
    if name is not None:
        yield name, lines


def _fields(lines: list) -> dict:
    """The ``key=value;`` fields of Courier's continuation lines."""
    fields = {}
    for line in lines:
        key, equals, text = line.rstrip(";").partition("=")
        if equals:
            fields.setdefault(key.strip().lower(), text.strip())
    return fields


def spf_pass_domain(header_block: bytes, sender: str) -> Optional[str]:
    """The sender's domain when Courier's SPF check of MAIL FROM said pass, else None."""
    domain = sender.rpartition("@")[2].lower()
    if not domain or "@" not in sender:
        return None
    for name, lines in _headers(header_block):
        if name == "received":
            return None  # below Courier's own lines: the client's words
        if name != "received-spf":
            continue
        result = lines[0].split(None, 1)[0].lower() if lines[0] else ""
        fields = _fields(lines[1:])
        if fields.get("spf", "").upper() != "MAILFROM":
            continue
        if result == "pass" and fields.get("sender", "").lower() == sender.lower():
            return domain
        return None
    return None
