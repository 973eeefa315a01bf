"""One family of errors.

Every room raises its own failures as a ``GreylistError`` (a settings file,
a store, a control file, a whitelist file, a DNS list, a command), so that
the dispatcher's door and the command line catch one name.  Those that are
also faults of the system keep the built-in kind the standard library would
raise (``OSError`` for a file that is not a regular file), so that code
handling those handles these too.
"""


class GreylistError(Exception):
    """Something the filter or a command cannot do; the message says what, and what to do where it can."""
