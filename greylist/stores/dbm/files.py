"""File helpers every room of the dbm store uses: whole writes, durable renames, temporary names."""

from __future__ import annotations

import errno
import os
import secrets

FILE_MODE = 0o600


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
