"""A table is one dbm file of the store; this is what every flavour's table does.

All methods run with the store lock held, except where a method says not.
"""

from __future__ import annotations

import dbm
from typing import Callable, Optional, Sequence

from ..base import StoreOpenError
from .files import FILE_MODE
from .hold import Hold


class Table:
    """One dbm file."""

    flavour = ""
    pending = 0  # changes not yet in the dbm file itself (gdbm: in its journal)

    def __init__(self, base: str, readonly: bool) -> None:
        self.base = base
        self.readonly = readonly

    def begin(self) -> None:
        """A transaction starts (the generic flavour opens its file here)."""

    def end(self) -> None:
        """A transaction that wrote ends: make its changes durable in one go."""

    def discard(self) -> None:
        """A transaction failed: forget its changes that ``end`` has not written."""

    def refresh(self, files_may_be_replaced: bool = True) -> None:
        """Another process wrote: drop whatever is cached.

        ``files_may_be_replaced`` False: the lock's fold count says no file
        was replaced since the last look.
        """

    def prefetch(self, keys: Sequence[bytes]) -> None:
        """Without the lock: read what a later get will want, if that is safe here."""

    def get(self, key: bytes) -> Optional[bytes]:
        raise NotImplementedError

    def set(self, key: bytes, value: bytes) -> None:
        raise NotImplementedError

    def delete(self, key: bytes) -> None:
        raise NotImplementedError

    def scanner(self) -> Callable[[], Optional[list]]:
        """A function giving the next few keys on each call, None at the end.

        Called once per lock hold; the store may change between calls.
        """
        raise NotImplementedError

    def compact(self, hold: Hold) -> None:
        """Make the file tidy for other readers (dbm.dumb drops deleted keys)."""

    def close_retired(self) -> None:
        """Without the lock: close what stayed open of files a hold replaced (gdbm)."""

    def close(self) -> None:
        raise NotImplementedError


class GenericTable(Table):
    """Any other flavour (ndbm): opened for each transaction with stdlib dbm, closed after it."""

    def __init__(self, base: str, readonly: bool, flavour: str) -> None:
        super().__init__(base, readonly)
        self.flavour = flavour
        self._db = None
        self.begin()
        self.end()

    def begin(self) -> None:
        try:
            self._db = dbm.open(self.base, "r" if self.readonly else "c", FILE_MODE)
        except Exception as error:
            raise StoreOpenError(f"cannot open {self.flavour} file {self.base}: {error}") from None

    def end(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    discard = end  # stdlib dbm writes as it goes: nothing is held back

    def get(self, key: bytes) -> Optional[bytes]:
        return self._db.get(key)

    def set(self, key: bytes, value: bytes) -> None:
        self._db[key] = value

    def delete(self, key: bytes) -> None:
        try:
            del self._db[key]
        except KeyError:
            pass

    def scanner(self) -> Callable[[], Optional[list]]:
        done = []

        def next_keys() -> Optional[list]:
            if done:
                return None
            done.append(True)
            return list(self._db.keys())

        return next_keys

    def close(self) -> None:
        self.end()
