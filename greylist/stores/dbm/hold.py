"""What a table, a fold and a transaction need from the store: the lock, held.

The store (store.py) is the one implementation.  The rooms below it are
typed against this Protocol so that they never import the store (nor call
anything of it but these), and the store's dependencies run one way.
"""

from __future__ import annotations

import threading
from typing import ContextManager, Protocol


class Hold(Protocol):
    """The store lock and what goes with it: the other processes' writes, the counts, closing."""

    directory: str
    closing: threading.Event  # set while the store closes: long work stops at its next step

    def enter(self) -> float:
        """Take the lock with every table current; returns the seconds waited for it."""

    def leave(self, failed: bool = False) -> None:
        """Make a hold's writes durable (or drop them when ``failed``); let go of the lock."""

    def locked(self) -> ContextManager[None]:
        """``enter`` and ``leave`` around a block (purges, compactions, folds)."""

    def note_write(self) -> None:
        """Before a hold's first write: other processes will re-read."""

    def count_fold(self) -> None:
        """Under the lock, after a file was replaced: other processes reopen theirs."""
