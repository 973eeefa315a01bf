"""Keep a gdbm file out of the process's memory: no mapping, a small bucket cache.

gdbm (1.11 and later) maps its whole file into memory, and (1.21 and
later) grows its bucket cache with the file.  A million-triplet store is a
file of about 100 MB; a filter that looks up random keys in it ends with
the whole file resident and about 35 MB of cache on top, to save a
microsecond or two per lookup (measured: 1.5 us mapped and cached, 4.8 us
read with ``pread`` through a 128-bucket cache, both from the page cache).
For a decision that costs about 100 us, the memory is not worth it.

Python's ``dbm.gnu`` has no open flag for either; gdbm's own
``gdbm_setopt`` has (``GDBM_SETMMAP``, ``GDBM_SETCACHESIZE``).  This
module calls it on the handle inside CPython's gdbm object, and only after
proving that the handle is one: CPython's object is ``{PyObject_HEAD;
Py_ssize_t di_size; GDBM_FILE di_dbm}`` (unchanged since Python 3.0), and
a GDBM_FILE starts with a pointer to the name the file was opened under.
Both pointers are followed through ``/proc/self/mem``, which answers an
error for an address that is not mapped where a plain read would crash.
If anything does not match (another interpreter, another layout, another
libgdbm, no /proc), the file stays mapped, as stdlib leaves it, and
:func:`unmap` says why; nothing else changes.
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Optional

GDBM_SETCACHESIZE = 1
GDBM_SETMMAP = 7
GDBM_GETMMAP = 9
GDBM_GETCACHESIZE = 10

# Buckets gdbm keeps in memory (gdbm rounds up to a power of two).  Random
# lookups in a large file miss any cache of affordable size, so a small one
# costs nothing more than a large one (measured: 128 and 1,024 buckets both
# about 4.7 us a lookup at a million entries).
CACHE_BUCKETS = 128

_POINTER = ctypes.sizeof(ctypes.c_void_p)
# What a handle that does not prove itself, or a library that is not there, raises.
_FAILURES = (OSError, ValueError, OverflowError, AttributeError)
_library: Optional[ctypes.PyDLL] = None


def _loaded_libgdbm() -> ctypes.PyDLL:
    """The libgdbm that dbm.gnu is linked with (the one already in this process).

    PyDLL, not CDLL: the calls are quick and must keep the GIL, like
    dbm.gnu's own calls, so that they never hand the interpreter to another
    thread in the middle of a store transaction.
    """
    global _library
    if _library is None:
        path = None
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                name = line.rstrip("\n").split(None, 5)[-1]
                if os.path.basename(name).startswith("libgdbm.so"):
                    path = name
                    break
        if path is None:
            raise OSError("libgdbm is not loaded")
        library = ctypes.PyDLL(path)
        library.gdbm_setopt.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
        library.gdbm_setopt.restype = ctypes.c_int
        _library = library
    return _library


def _read(memory, address: int, size: int) -> bytes:
    memory.seek(address)
    return memory.read(size)


def _handle(db, path: str) -> int:
    """The GDBM_FILE inside a dbm.gnu object, proven to be the one for ``path``."""
    kind = type(db)
    if (sys.implementation.name != "cpython" or kind.__module__ != "_gdbm"
            or kind.__basicsize__ != 4 * _POINTER or kind.__itemsize__):
        raise OSError(f"unknown layout of {kind.__module__}.{kind.__name__}")
    slot = id(db) + kind.__basicsize__ - _POINTER
    with open("/proc/self/mem", "rb", buffering=0) as memory:
        handle = int.from_bytes(_read(memory, slot, _POINTER), sys.byteorder)
        if not handle:
            raise OSError("the gdbm object is closed")
        name_at = int.from_bytes(_read(memory, handle, _POINTER), sys.byteorder)
        expected = os.fsencode(path) + b"\0"
        if not name_at or _read(memory, name_at, len(expected)) != expected:
            raise OSError("the gdbm object does not hold the handle where expected")
    return handle


def _setopt(handle: int, option: int, value) -> int:
    return _loaded_libgdbm().gdbm_setopt(handle, option, ctypes.byref(value), ctypes.sizeof(value))


def unmap(db, path: str) -> Optional[str]:
    """Read ``db`` (opened from ``path``) without mmap, through a small cache.

    Returns None when done, else why it could not be; ``db`` works either way.
    """
    try:
        handle = _handle(db, path)
        if _setopt(handle, GDBM_SETMMAP, ctypes.c_int(0)) != 0:
            raise OSError("gdbm refused to turn off its memory mapping")
        mapped = ctypes.c_int(-1)
        _setopt(handle, GDBM_GETMMAP, mapped)
        if mapped.value != 0:
            raise OSError("gdbm kept its memory mapping")
        _setopt(handle, GDBM_SETCACHESIZE, ctypes.c_size_t(CACHE_BUCKETS))
    except _FAILURES as error:
        return f"gdbm file {path} stays memory-mapped ({error})"
    return None


def is_mapped(db, path: str) -> Optional[bool]:
    """Whether gdbm maps ``db``'s file; None when that cannot be asked.  For tests."""
    try:
        mapped = ctypes.c_int(-1)
        if _setopt(_handle(db, path), GDBM_GETMMAP, mapped) != 0:
            return None
    except _FAILURES:
        return None
    return bool(mapped.value)


def cache_buckets(db, path: str) -> Optional[int]:
    """gdbm's bucket cache size for ``db``; None when that cannot be asked.  For tests."""
    try:
        size = ctypes.c_size_t(0)
        if _setopt(_handle(db, path), GDBM_GETCACHESIZE, size) != 0:
            return None
    except _FAILURES:
        return None
    return size.value
