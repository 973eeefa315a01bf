"""Does a client's reverse-DNS name look generic (dynamic, residential)?

Mail servers have names of their own (mx1.example.org); access lines have
names their provider generated, usually from the address itself
(192-0-2-10.dsl.example.net) or with words like dynamic, dsl, pool.  A name
is "generic" when it contains the client's own address, or matches a
pattern of ``generic_rdns_files`` (``builtin:generic-rdns`` is shipped).
"""

from __future__ import annotations

import re
from typing import List, Optional, Sequence, Tuple

from ..errors import GreylistError
from ..safe_files import read_regular
from ..whitelist_files import resolve

PATTERN_FILE_LIMIT = 1 << 20  # regular expressions, one a line: a megabyte is plenty


class PatternFileError(GreylistError):
    """A pattern file cannot be read, or holds a pattern that is not a regular expression."""


def load_patterns(paths: Sequence[str]) -> List[Tuple[str, re.Pattern]]:
    """(text, compiled) of every pattern of the files, in order."""
    patterns = []
    for path in paths:
        file = resolve(path)
        try:
            lines = read_regular(file, PATTERN_FILE_LIMIT).decode("utf-8").splitlines()
        except OSError as error:
            raise PatternFileError(f"generic_rdns_files: cannot read {path}: "
                                   f"{error.strerror or error}") from None
        except UnicodeDecodeError as error:
            raise PatternFileError(f"generic_rdns_files: cannot read {path}: {error}") from None
        for number, line in enumerate(lines, 1):
            text = line.strip()  # no comments after a pattern: "#" may be part of one
            if not text or text.startswith("#"):
                continue
            try:
                patterns.append((text, re.compile(text)))
            except re.error as error:
                raise PatternFileError(f"{path}:{number}: not a regular expression: {error}") from None
    return patterns


def address_in_name(name: str, address) -> bool:
    """True when the name spells the client's IPv4 address: its four numbers in a row
    (either order), or the address in hexadecimal."""
    if address.version != 4:
        return False
    octets = [str(int(part)) for part in str(address).split(".")]
    numbers = [str(int(n)) for n in re.findall(r"\d+", name)]
    for run in (octets, octets[::-1]):
        for start in range(len(numbers) - 3):
            if numbers[start:start + 4] == run:
                return True
    return f"{int(address):08x}" in name


def generic_reason(name: str, address, patterns: Sequence[Tuple[str, re.Pattern]]) -> Optional[str]:
    """Why a name looks generic ("address-in-name", or the pattern), or None."""
    lowered = name.lower().rstrip(".")
    if address_in_name(lowered, address):
        return "address-in-name"
    for text, pattern in patterns:
        if pattern.search(lowered):
            return text
    return None
