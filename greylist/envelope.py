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

import os
import re
import urllib.parse
from typing import List, NamedTuple, Optional, Sequence, Tuple

from .errors import GreylistError


class EnvelopeError(GreylistError):
    """The control files could not be read."""


def decode_value(raw: bytes) -> str:
    """courier.control's decoding of a record value, reproduced exactly."""
    value = raw.strip()
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return "(malformed utf8):" + urllib.parse.quote_plus(value, safe="@")


class Envelope(NamedTuple):
    """What the filter needs to know about a message."""

    sender: Optional[str] = None
    recipients: List[str] = []  # undelivered, in order
    client_ip: Optional[str] = None
    received_from: Optional[str] = None
    auth_user: Optional[str] = None
    source: Optional[str] = None  # the mail source (``u``): esmtp, local (sendmail), dsn, ...


def _finished(status_lines: list) -> set:
    """The recipient numbers that ``S``/``F`` records (``S<n> ...``) say are done; others are skipped."""
    numbers = set()
    for line in status_lines:
        number = line[1:].split(" ", 1)[0]
        try:
            if number.isascii():  # as int() reads bytes: no other script's digits
                numbers.add(int(number))
        except ValueError:
            continue
    return numbers


_ASCII_SPACE = " \t\n\r\x0b\x0c"  # what bytes.strip() strips, as courier.control strips a value


def _text_lines(data: bytes) -> List[str]:
    """A control file's lines, each value decoded as courier.control decodes it.

    A file that is all UTF-8 (as Courier writes them) is decoded in one go;
    otherwise each line's value on its own, a malformed one in its quoted form.
    """
    try:
        return data.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        return [raw[:1].decode("latin-1") + decode_value(raw[1:]) for raw in data.split(b"\n")]


def _read_file(path: str) -> bytes:
    """The whole file, with as few system calls as it takes (one, for a control file)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, 65536)
        if len(data) < 65536:  # a short read of a regular file is its end
            return data
        chunks = [data]
        while True:
            chunk = os.read(fd, 65536)
            chunks.append(chunk)
            if len(chunk) < 65536:
                return b"".join(chunks)
    finally:
        os.close(fd)


def read_header_block(body_path: str, limit: int = 65536) -> bytes:
    """The start of the message file, up to its first blank line (or ``limit`` bytes).

    Returns b"" when the file cannot be read: a missing header only means
    no SPF verdict, never a failed message.
    """
    try:
        fd = os.open(body_path, os.O_RDONLY | os.O_CLOEXEC)
    except (OSError, ValueError, TypeError):
        return b""
    try:
        data = os.read(fd, limit)
    except OSError:
        return b""
    finally:
        os.close(fd)
    end = data.find(b"\n\n")
    if end < 0:
        end = data.find(b"\r\n\r\n")
    return data if end < 0 else data[: end + 1]


_RECORDS_READ = frozenset("rNSFsOfiu")


def read_envelope(control_paths: Sequence[str]) -> Envelope:
    """Read sender, undelivered recipients and client address.

    Raises EnvelopeError when a control file cannot be opened or read;
    anything inside a readable file is tolerated.
    """
    sender = client_ip = received_from = auth_user = source = None  # the first of each counts
    undelivered: list = []
    for path in control_paths:
        try:
            data = _read_file(path)
        except (OSError, ValueError, TypeError) as error:
            raise EnvelopeError(f"cannot read control file {path!r}: {error}") from None
        recipients: list = []  # numbered per file
        status_lines: list = []
        address = ""
        for line in _text_lines(data):
            key = line[:1]
            if key not in _RECORDS_READ:  # most records: the message id, DSN options, ...
                continue
            if key == "r":
                address = line[1:].strip(_ASCII_SPACE)
            elif key == "N":
                # Like courier.control: a record with an empty address gets no number.
                if address:
                    recipients.append(address)
                address = ""
            elif key == "S" or key == "F":
                status_lines.append(line)
            elif key == "s":
                if sender is None:
                    sender = line[1:].strip(_ASCII_SPACE)
            elif key == "O":
                option = line[1:].strip(_ASCII_SPACE)
                if client_ip is None and option.startswith("TCPREMOTEIP="):
                    client_ip = option[12:]
            elif key == "f":
                if received_from is None:
                    received_from = line[1:].strip(_ASCII_SPACE)
            elif key == "i":
                if auth_user is None:
                    auth_user = line[1:].strip(_ASCII_SPACE)
            elif key == "u":
                if source is None:
                    source = line[1:].strip(_ASCII_SPACE)
        if status_lines:
            done = _finished(status_lines)
            recipients = [address for number, address in enumerate(recipients) if number not in done]
        undelivered += recipients
    return Envelope(sender, undelivered, client_ip, received_from, auth_user, source)


def message_id(header_block: bytes) -> Optional[str]:
    """The message's ``Message-ID`` (without angle brackets), or None when it has none.

    Parsed by the standard library's header parser; an id is at most 250
    characters of printable ASCII, or it is not taken (a retry of the same
    message carries the same header, byte for byte).
    """
    if not header_block:
        return None
    import email.parser  # here: only match_retry_by_message_id needs it
    import email.policy

    headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(header_block)
    value = headers.get("Message-ID")
    if not isinstance(value, str):
        return None
    text = " ".join(value.split()).strip("<> ")
    if not text or len(text) > 250 or not text.isascii() or not text.isprintable():
        return None
    return text


_MESSAGE_IDS = re.compile(r"<([^<>\s]{1,250})>")


def references(header_block: bytes) -> Tuple[str, ...]:
    """The Message-IDs a message answers (``References``, then ``In-Reply-To``), each once, in
    the form ``message_id`` gives (without angle brackets); () when it names none."""
    if not header_block:
        return ()
    import email.parser  # here: only whitelist_replies = 'in-reply-to' needs it
    import email.policy

    headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(header_block)
    found: dict = {}
    for name in ("References", "In-Reply-To"):
        value = headers.get(name)
        if isinstance(value, str):
            for text in _MESSAGE_IDS.findall(value):
                if text.isascii() and text.isprintable():
                    found.pop(text, None)  # the last mention counts (the newest)
                    found[text] = None
    return tuple(found)
