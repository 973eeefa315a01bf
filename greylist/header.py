"""The X-Greylist header: one line put in front of the message file, every other byte unchanged.

A Courier global filter can change a message only by rewriting its data
file.  courier-pythonfilter's XFilter re-serialises the whole message
through the ``email`` package, which may re-fold headers and re-encode
bodies, and so break DKIM signatures.  Here the file is not parsed: the
line is written in front of its bytes, in place (Courier reads the file it
handed over), so a signature over the message still verifies.

Safe to fail: the room for the line is allocated first (a full disk fails
there, before any byte moved), the message is held in memory while it is
moved, and any failure writes it back as it was.  A message larger than
``LARGEST`` is left without the header.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from typing import Optional

LARGEST = 64 << 20  # bytes of a message that gets the header (Courier's default limit is 10 MB)

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

# Why a message passed without delay, in words, for x_greylist_header = 'all'.
_WHY = {
    "known": "known sender",
    "auto-whitelisted": "auto-whitelisted client",
    "auto-whitelisted:sender": "proven sender",
    "auto-whitelisted:domain": "proven domain",
    "reply": "reply to our user",
    "authenticated": "authenticated",
    "local": "local submission",
    "relayclient": "relay client",
    "not-suspicious": "not suspicious",
    "recipient-not-greylisted": "recipient not greylisted",
    "null-sender": "bounce",
    "no-client-ip": "local submission",
}


def rfc5322_date(when: float) -> str:
    """``Sun, 06 Dec 2026 12:00:00 +0000`` (in English, whatever the locale)."""
    t = time.gmtime(when)
    return (f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000")


def why(reason: str) -> str:
    """A reason of the decision line in words."""
    if reason.startswith("whitelisted:"):
        return "whitelisted " + reason.split(":")[1]
    if reason.startswith("dnswl:"):
        return "listed on " + reason.split(":", 1)[1]
    return _WHY.get(reason, reason)


def header_line(mode: str, reason: str, delay: Optional[float], signature: str,
                when: float) -> Optional[bytes]:
    """The line for a message that passed, or None when ``mode`` says it gets none.

    ``mode``: 'delays' (only messages that waited) or 'all'; ``signature``:
    ``courier-greylist-VERSION at HOST``.
    """
    if delay is not None:
        said = f"delayed {int(delay)} seconds"
    elif mode == "all":
        said = f"not delayed ({why(reason)})"
    else:
        return None
    text = f"X-Greylist: {said} by {signature}; {rfc5322_date(when)}\n"
    return text.encode("ascii", "replace")


def prepend(path: str, line: bytes) -> None:
    """Put ``line`` in front of the file at ``path``; raises OSError, leaving the file as it was."""
    fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        size = info.st_size
        if size > LARGEST:
            raise OSError(errno.EFBIG, f"larger than {LARGEST >> 20} MiB: left without the header", path)
        message = _read_all(fd, size)
        _make_room(fd, size, len(line))
        try:
            _write_all(fd, line + message, 0)
        except OSError:
            _write_all(fd, message, 0)  # put it back as it was
            os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)


def _read_all(fd: int, size: int) -> bytes:
    chunks, offset = [], 0
    while offset < size:
        chunk = os.pread(fd, size - offset, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _make_room(fd: int, size: int, extra: int) -> None:
    """The file grown by ``extra`` bytes on disk, or OSError with the file as it was."""
    try:
        os.posix_fallocate(fd, size, extra)
        return
    except OSError as error:
        if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            os.ftruncate(fd, size)
            raise
    try:  # a filesystem without fallocate: the room written as zeros
        _write_all(fd, b"\0" * extra, size)
    except OSError:
        os.ftruncate(fd, size)
        raise


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        if written <= 0:
            raise OSError(errno.ENOSPC, "short write")
        view, offset = view[written:], offset + written
