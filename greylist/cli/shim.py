"""The module `greylist install` writes for courier-pythonfilter's dispatcher, and what it reads.

The dispatcher imports the modules /etc/pythonfilter.conf lists from its
``pythonfilter`` package; the one written here loads this filter with the
settings files it names.  Every command reads the settings that module names
(the files the running filter reads), else courier.config's standard ones.
"""

from __future__ import annotations

import ast
import os
import sys
from typing import Optional

from ..errors import GreylistError


class NoDispatcher(GreylistError):
    """courier-pythonfilter (its dispatcher's package) is not installed for this Python."""


SHIM_NAME = "courier_greylist"
SHIM_TEMPLATE = '''"""Placed by `greylist install`: lets courier-pythonfilter load courier-greylist.

List "{name}" in pythonfilter.conf.  Remove with `greylist install --uninstall`.
"""

CONFIG_PATHS = {config_paths!r}  # the settings files it reads (None: courier.config's own)

try:
    import greylist as _greylist
except Exception as _error:  # a broken installation defers mail; it never lets it through unfiltered
    import sys as _sys

    _problem = f"cannot load courier-greylist: {{_error!r}}"

    def initFilter():
        _sys.stderr.write(f"greylist: cannot start: {{_problem}}; every message gets a 451\\n")

    def doFilter(body_path, control_paths):
        _sys.stderr.write("greylist: action=error, reason=not-started\\n")
        return "451 4.3.0 Greylisting temporarily unavailable, please try again later"
else:
    def initFilter():
        _greylist.initFilter(config_paths=CONFIG_PATHS)

    doFilter = _greylist.doFilter
'''


def installed_config_paths(target: Optional[str] = None, name: str = SHIM_NAME) -> Optional[list]:
    """The settings files the installed module makes the dispatcher read (None: the standard ones,
    or no module installed)."""
    try:
        shim = os.path.join(target or pythonfilter_directory(), name + ".py")
        with open(shim, encoding="utf-8") as handle:
            tree = ast.parse(handle.read())
    except (OSError, SyntaxError, NoDispatcher):
        return None
    for node in tree.body:
        names = [getattr(target, "id", None) for target in getattr(node, "targets", ())]
        if isinstance(node, ast.Assign) and names == ["CONFIG_PATHS"]:
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                return None
            return list(value) if isinstance(value, (list, tuple)) else None
    return None


def pythonfilter_directory() -> str:
    """Where courier-pythonfilter's dispatcher imports its modules from."""
    try:
        import pythonfilter
    except ImportError:
        raise NoDispatcher("courier-pythonfilter is not installed for "
                           f"{sys.executable}") from None
    return os.path.dirname(os.path.abspath(pythonfilter.__file__))
