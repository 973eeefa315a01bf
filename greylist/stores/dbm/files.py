"""File helpers every room of the dbm store uses: whole writes, durable renames, temporary names,
and which dbm flavour a file is, without following a link or blocking on a FIFO."""

from __future__ import annotations

import errno
import os
from typing import Optional

from ...safe_files import FILE_MODE, create_temporary, dbm_flavour, open_regular, write_all

__all__ = ["FILE_MODE", "create_temporary", "open_regular", "flavour_of", "write_all", "pwrite_all",
           "fsync_path", "temporary_owner", "remove_stale_temporaries"]


def flavour_of(base: str) -> Optional[str]:
    """The dbm flavour of a store file (``dbm.whichdb``'s answer), never through a link."""
    return dbm_flavour(base, follow_links=False)


def pwrite_all(fd: int, data: bytes, offset: int, what: str) -> None:
    """Write all of ``data`` at ``offset``; a short write raises."""
    if os.pwrite(fd, data, offset) != len(data):
        raise OSError(errno.ENOSPC, f"short write to {what}")


def fsync_path(path: str) -> None:
    """Make a file, or a directory's entries, durable."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temporary_owner(base: str, name: str, purpose: str):
    """The pid in a temporary name made by ``create_temporary`` for ``base``, else None."""
    prefix = os.path.basename(base) + f".{purpose}."
    if not name.startswith(prefix):
        return None
    pid = name[len(prefix):].split(".", 1)[0]
    return int(pid) if pid.isdigit() else None


def remove_stale_temporaries(base: str, purpose: str) -> None:
    """Remove temporaries of ``base`` whose process is gone (killed mid-operation)."""
    directory = os.path.dirname(base) or "."
    for name in os.listdir(directory):
        pid = temporary_owner(base, name, purpose)
        if pid is None or pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            try:
                os.unlink(os.path.join(directory, name))
            except FileNotFoundError:
                pass
        except PermissionError:
            pass  # alive, under another user

