"""The optional dependencies, and how to install one into the environment that runs this."""

from __future__ import annotations

import os
import sys


def install_hint(extra: str) -> str:
    """The command that adds ``extra`` (postgres, dns, metrics, report) to this very environment.

    The filter runs from a virtual environment of its own: a plain ``pip``
    would install into another Python.
    """
    pip = os.path.join(os.path.dirname(sys.executable), "pip")
    command = pip if os.access(pip, os.X_OK) else f"{sys.executable} -m pip"
    return f"{command} install 'courier-greylist[{extra}]'"
