"""The journal's format: ``<gdbm file>.journal``, the changes not yet folded into the file.

A journal is a sequence of blocks, one per transaction, each written with one
``write``::

    block  = length (u32) | CRC-32 of payload (u32) | payload
    payload = entry*
    entry  = key length (u16) | value length (i32, -1: deleted) | key | value

What a kill or a power loss can leave at the end of a journal is a torn tail:
a last block cut short, and zeros where the file grew but its data never
reached the disk.  Those writes were never acknowledged, and the tail is cut
off.  A damaged block with whole blocks after it is something else (a bad
disk, a stray write): it is skipped, the blocks after it are kept, and the
damage is reported so that the table can log it.
"""

from __future__ import annotations

import struct
import zlib
from typing import List, NamedTuple

from ...errors import GreylistError

SUFFIX = ".journal"
_BLOCK_HEADER = struct.Struct("<II")  # payload length, CRC-32 of the payload
_ENTRY_HEADER = struct.Struct("<Hi")  # key length, value length (-1: deleted)
# No transaction writes a block this large (an import writes 500 entries, about
# 50 KB; a message with 10,000 recipients about 500 KB): a length beyond it is
# damage, not a write that a kill cut short.
_LONGEST_BLOCK = 4 << 20


class JournalDamaged(GreylistError, ValueError):
    """A journal that does not read past a damaged block: nothing after it can be trusted."""


class Damage(NamedTuple):
    """A block in the middle of a journal that did not read: where, and how long."""

    offset: int
    length: int


class Decoded(NamedTuple):
    """What ``decode_blocks`` used: bytes up to the last whole block, and damage skipped."""

    used: int
    damaged: List[Damage]


def encode_block(changes: list) -> bytes:
    """One transaction's (key, value or None) changes as a block."""
    parts = []
    for key, value in changes:
        parts += (_ENTRY_HEADER.pack(len(key), -1 if value is None else len(value)), key, value or b"")
    payload = b"".join(parts)
    return _BLOCK_HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def _entries(payload: bytes) -> list:
    """A block's changes; raises ValueError when the payload is not a run of whole entries."""
    entries = []
    position, length = 0, len(payload)
    while position < length:
        if position + _ENTRY_HEADER.size > length:
            raise ValueError("entry header cut short")
        key_length, value_length = _ENTRY_HEADER.unpack_from(payload, position)
        position += _ENTRY_HEADER.size
        end = position + key_length + max(value_length, 0)
        if value_length < -1 or end > length:
            raise ValueError("entry runs past its block")
        key = payload[position : position + key_length]
        value = None if value_length < 0 else payload[position + key_length : end]
        entries.append((key, value))
        position = end
    return entries


def _read_block(data: bytes, offset: int):
    """(end, entries) of the block at ``offset``, or (end, None) when it does not read.

    ``end`` is where the block claims to end (past the data when cut short).
    """
    length, checksum = _BLOCK_HEADER.unpack_from(data, offset)
    start = offset + _BLOCK_HEADER.size
    end = start + length
    if not length or end > len(data):
        return end, None
    payload = data[start:end]
    if zlib.crc32(payload) != checksum:
        return end, None
    try:
        return end, _entries(payload)
    except ValueError:
        return end, None


def decode_blocks(data: bytes, into: dict) -> Decoded:
    """Apply every whole block of ``data`` to ``into``.

    Stops before a torn tail (a block that does not read, with nothing but
    zeros after where it claims to end); skips a damaged block that has
    whole blocks after it, and reports it.  Raises JournalDamaged when
    damage leaves the rest unreadable: what follows could be acknowledged
    changes, and guessing would drop them.
    """
    offset = 0
    damaged: List[Damage] = []
    while offset + _BLOCK_HEADER.size <= len(data):
        end, entries = _read_block(data, offset)
        if entries is None:
            if not data[offset:].strip(b"\0"):
                break  # zeros: where a power loss left the file longer than its data
            torn = not data[end:].strip(b"\0")  # nothing after it but zeros, if anything
            if torn and not damaged and end - offset <= _LONGEST_BLOCK:
                break  # the torn last write of a writer that died
            if torn or end - offset > _LONGEST_BLOCK:
                first = damaged[0].offset if damaged else offset
                raise JournalDamaged(f"damaged at byte {first}, and unreadable from byte {offset} on")
            damaged.append(Damage(offset, end - offset))
            offset = end
            continue
        for key, value in entries:
            into[key] = value
        offset = end
    return Decoded(offset, damaged)
