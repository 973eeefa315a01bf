"""Reading the envelope of a message from Courier's control files.

One pass over each control file.  The records read are Courier's (see
courier's mail queue documentation and courier.control):

* ``s``  the envelope sender (the first one counts);
* ``f``  the Received-From-MTA record, ``dns; HELO (NAME [IP])``;
* ``i``  the name the client authenticated as (SMTP AUTH);
* ``O``  options; ``OTCPREMOTEIP=`` is the client's address;
* ``r``/``R``/``N``  one recipient (address, original recipient, DSN flags),
  completed by the ``N`` record; recipients are numbered per file;
* ``S``/``F``  ``S<n> ...``: recipient ``n`` of this file was delivered or failed.

Values are decoded exactly as courier.control does (strip, then UTF-8, or a
``(malformed utf8):`` quoted form), so that triplet keys equal the
reference's for every input.  Bad records are skipped, never raised on.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field
from typing import Optional, Sequence


class EnvelopeError(Exception):
    """The control files could not be read."""


def decode_value(raw: bytes) -> str:
    """courier.control's decoding of a record value, reproduced exactly."""
    value = raw.strip()
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return "(malformed utf8):" + urllib.parse.quote_plus(value, safe="@")


@dataclass
class Envelope:
    """What the filter needs to know about a message."""

    sender: Optional[str] = None
    recipients: list = field(default_factory=list)
    client_ip: Optional[str] = None
    received_from: Optional[str] = None
    auth_user: Optional[str] = None
    skipped_status_records: int = 0


def _recipients_of_file(lines: Sequence[bytes], envelope: Envelope) -> list:
    """Undelivered recipients of one control file, in file order."""
    recipients: list = []  # [address, delivered]
    address = ""
    finished: list = []
    for line in lines:
        key = line[:1]
        if key == b"r":
            address = decode_value(line[1:])
        elif key == b"N":
            # Like courier.control: a record with an empty address gets no number.
            if address:
                recipients.append([address, False])
            address = ""
        elif key in (b"S", b"F"):
            finished.append(line)
    for line in finished:
        number_text = line[1:].split(b" ", 1)[0]
        try:
            number = int(number_text)
        except ValueError:
            envelope.skipped_status_records += 1
            continue
        if 0 <= number < len(recipients):
            recipients[number][1] = True
        else:
            envelope.skipped_status_records += 1
    return [address for address, delivered in recipients if not delivered]


def read_envelope(control_paths: Sequence[str]) -> Envelope:
    """Read sender, undelivered recipients and client address.

    Raises EnvelopeError when a control file cannot be opened or read;
    anything inside a readable file is tolerated.
    """
    envelope = Envelope()
    for path in control_paths:
        try:
            with open(path, "rb") as control_file:
                lines = control_file.read().split(b"\n")
        except (OSError, ValueError, TypeError) as error:
            raise EnvelopeError(f"cannot read control file {path!r}: {error}") from None
        for line in lines:
            key = line[:1]
            if key == b"s":
                if envelope.sender is None:
                    envelope.sender = decode_value(line[1:])
            elif key == b"O":
                if envelope.client_ip is None:
                    option = decode_value(line[1:])
                    if option.startswith("TCPREMOTEIP="):
                        envelope.client_ip = option[12:]
            elif key == b"f":
                if envelope.received_from is None:
                    envelope.received_from = decode_value(line[1:])
            elif key == b"i":
                if envelope.auth_user is None:
                    envelope.auth_user = decode_value(line[1:])
        envelope.recipients.extend(_recipients_of_file(lines, envelope))
    return envelope
