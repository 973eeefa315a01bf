"""Opening files that another user, an editor or a mistake may have put something odd in place of.

Every file the filter reads or writes by name goes through here:

* a file that is read (settings, whitelist and pattern files) must be a
  regular file of bounded size: a FIFO would block the reader forever, and
  ``/dev/zero`` would fill its memory.  It is opened with ``O_NONBLOCK``
  (opening a FIFO then returns at once) and looked at with ``fstat`` before
  a byte is read; a dbm file (the store, Courier's smtpaccess.dat) is looked
  at before ``dbm`` opens it by name;
* a file that is written by name (the metrics file) is written to a
  temporary name of its own, made with ``O_EXCL|O_NOFOLLOW`` (a link
  planted at the name is never followed), and renamed into place.

Both raise OSError subclasses, so that the callers' handling of unreadable
files covers them, with a ``strerror`` that says what was found.
"""

from __future__ import annotations

import dbm
import errno
import os
import secrets
import stat
from typing import Optional

from .errors import GreylistError

FILE_MODE = 0o600

_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISDIR, "a directory"), (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link"))


class NotARegularFile(GreylistError, OSError):
    """A name that should be a regular file is something else."""

    def __init__(self, path: str, mode: int) -> None:
        kind = next((name for test, name in _KINDS if test(mode)), "something else")
        super().__init__(errno.EINVAL, f"not a regular file, but {kind}", path)

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


class FileTooLarge(GreylistError, OSError):
    """A file is larger than what it may hold."""

    def __init__(self, path: str, limit: int) -> None:
        super().__init__(errno.EFBIG, f"larger than {_size(limit)}, the most it may be", path)

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


def _size(limit: int) -> str:
    return f"{limit >> 20} MiB" if limit >= 1 << 20 else f"{limit >> 10} KiB"


def check_regular(path: str, mode: int) -> None:
    """Raise NotARegularFile unless ``mode`` (from a stat) is a regular file's."""
    if not stat.S_ISREG(mode):
        raise NotARegularFile(path, mode)


def read_with_stat(path: str, limit: int) -> tuple:
    """(contents, stat before reading) of a regular file of at most ``limit`` bytes.

    Opening never blocks, and nothing is read from anything but a regular
    file.  The stat is taken before the first byte is read: a change made
    while reading shows as a change at the next look.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        check_regular(path, info.st_mode)
        if info.st_size > limit:
            raise FileTooLarge(path, limit)
        chunks, total = [], 0
        while True:  # a file growing meanwhile is read up to the limit, and refused past it
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                return b"".join(chunks), info
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise FileTooLarge(path, limit)
    finally:
        os.close(fd)


def read_regular(path: str, limit: int) -> bytes:
    """The contents of a regular file of at most ``limit`` bytes, without ever blocking on open."""
    return read_with_stat(path, limit)[0]


def open_regular(path: str, flags: int, mode: int = FILE_MODE) -> int:
    """A descriptor on the regular file at ``path`` (never through a link, never blocking)."""
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    try:
        check_regular(path, os.fstat(fd).st_mode)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


# The names stdlib dbm.whichdb may open for a dbm file.
_DBM_NAMES = ("", ".dat", ".dir", ".pag", ".db")


def dbm_flavour(base: str, follow_links: bool) -> Optional[str]:
    """``dbm.whichdb``'s answer for a dbm file, after making sure that it can safely look.

    whichdb opens the file and its companions by name: one of them a FIFO
    would block it forever.  So every name it may open that exists must be a
    regular file (else NotARegularFile), and with ``follow_links`` False not
    a link either.
    """
    look = os.stat if follow_links else os.lstat
    for suffix in _DBM_NAMES:
        try:
            info = look(base + suffix)
        except FileNotFoundError:
            continue
        check_regular(base + suffix, info.st_mode)
    return dbm.whichdb(base)


def create_temporary(base: str, purpose: str) -> tuple:
    """A new file beside ``base`` for one operation: (descriptor, path).

    The name is this operation's alone (``<base>.<purpose>.<pid>.<random>``)
    and is created with O_EXCL|O_NOFOLLOW, so that two operations never
    share a file and a link planted at the name is never followed.
    """
    while True:
        path = f"{base}.{purpose}.{os.getpid()}.{secrets.token_hex(4)}"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         FILE_MODE)
        except FileExistsError:
            continue
        return fd, path


def write_all(fd: int, data: bytes, what: str) -> None:
    """Write all of ``data`` at the descriptor's position; a short write (a full disk) raises."""
    written = os.write(fd, data)
    if written == len(data):
        return
    view = memoryview(data)[max(written, 0):]
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.ENOSPC, f"short write to {what}")
        view = view[written:]


def replace_file(path: str, data: bytes, mode: int) -> None:
    """Put ``data`` at ``path`` whole: written to a temporary of its own, then renamed over.

    The permissions are set on the descriptor (``fchmod``), never by name,
    and the rename replaces whatever is at ``path`` (a link included)
    without following it.
    """
    fd, temporary = create_temporary(path, "new")
    try:
        write_all(fd, data, temporary)
        os.fchmod(fd, mode)
        os.close(fd)
        fd = -1
        os.rename(temporary, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
