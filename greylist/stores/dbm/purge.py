"""What a purge of a dbm.dumb (or other non-gdbm) table keeps between its walk and its deletions."""

from __future__ import annotations

from typing import Iterator


class KeyList:
    """Keys kept compactly: digests as 16 raw bytes, anything else as is.

    A purge of a million-entry store may find half a million expired keys;
    as Python bytes objects they would cost tens of megabytes.
    """

    def __init__(self) -> None:
        self._digests = bytearray()
        self._others: list = []

    def append(self, key: bytes) -> None:
        if len(key) == 32:
            try:
                raw = bytes.fromhex(key.decode("ascii"))
            except (ValueError, UnicodeDecodeError):
                raw = None
            if raw is not None and raw.hex().encode() == key:  # lower-case hex round-trips
                self._digests += raw
                return
        self._others.append(key)

    def chunks(self, size: int) -> Iterator[list]:
        for start in range(0, len(self._digests), 16 * size):
            block = self._digests[start : start + 16 * size]
            yield [block[n : n + 16].hex().encode() for n in range(0, len(block), 16)]
        for start in range(0, len(self._others), size):
            yield self._others[start : start + size]
