"""The mail log: one line to stderr, which Courier sends to its log."""

from __future__ import annotations

import sys


def stderr_line(line: str) -> None:
    """Write one line to stderr; a closed or broken stderr never stops a decision."""
    try:
        stderr = sys.stderr
        stderr.write(line + "\n")
        stderr.flush()
    except (OSError, ValueError):
        pass
