"""The ``greylist`` command: the debug run and the operator's tools.

``greylist check CONTROLFILE...`` decides a message as the filter would and
records it in the store; it prints the reply and exits 0 for accept, 75
(EX_TEMPFAIL) for a 4xx reply, 1 for an error.  ``greylist install`` places
the small module through which courier-pythonfilter's dispatcher loads this
package.  Every error is one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from typing import Optional, Sequence

from .. import __version__
from ..errors import GreylistError
from .common import EX_ERROR, EX_USAGE, default_db_dir, envelope_address
from .dispatcher_commands import command_restart, command_status
from .file_commands import (
    command_export,
    command_import,
    command_install,
    command_migrate,
    command_report,
)
from .shim import SHIM_NAME
from .store_commands import (
    command_allow,
    command_check,
    command_check_config,
    command_delete,
    command_purge,
    command_show,
    command_stats,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="greylist",
        description="Greylisting for the Courier mail server (courier-greylist).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def with_store_options(sub: argparse.ArgumentParser, creates: bool = True) -> None:
        sub.add_argument("--config", metavar="PATH",
                         help="pythonfilter-modules.conf to read (default: the files "
                              "courier.config reads)")
        whether = "created if missing" if creates else "must hold a store"
        sub.add_argument("--db-dir", metavar="DIR",
                         help=f"dbm store directory, {whether} (overrides [ttldb] dir)")

    check = commands.add_parser(
        "check", help="decide a message from its control files, as the filter would",
        description="Decide a message from its Courier control files and record it. "
                    "Prints the reply; exits 0 to accept, 75 for a temporary failure. "
                    "Without --config and --db-dir, and with no configuration file in the "
                    f"standard places, the store is kept in {default_db_dir()}.")
    with_store_options(check)
    check.add_argument("--explain", action="store_true", help="say which rule decided and why")
    check.add_argument("--body", metavar="DATAFILE",
                       help="the message file, for spf_triplets (default: the D file beside "
                            "a C control file)")
    check.add_argument("control_files", nargs="+", metavar="CONTROLFILE")
    check.set_defaults(handler=command_check)

    check_config = commands.add_parser(
        "check-config", help="would the dispatcher start with this configuration, and decide normally?",
        description="Load the settings as the dispatcher does, look at the store (as its owner, "
                    "creating nothing), read every whitelist file, and print the effective settings "
                    "with where each came from. Exits 0 when the dispatcher would start and decide "
                    "normally, 1 with one line per problem otherwise. Run it before every "
                    "filterctl start.")
    check_config.add_argument("--config", metavar="PATH",
                              help="pythonfilter-modules.conf to read (default: the files "
                                   "courier.config reads)")
    check_config.set_defaults(handler=command_check_config)

    restart = commands.add_parser(
        "restart", help="apply the settings: check them, restart the dispatcher, wait until it runs them",
        description="Check the settings as the dispatcher will read them (when it runs this filter); "
                    "if they have a problem, change nothing and exit 1. Else stop the dispatcher, wait "
                    "until it has exited, start it, and wait until it runs (and, with this filter, "
                    "until the filter says it started with these settings). Exits 0 only then. "
                    "As root: it runs filterctl and signals courierfilter.")
    restart.add_argument("--config", metavar="PATH",
                         help="the settings file to check (default: the one the installed module reads)")
    restart.set_defaults(handler=command_restart)

    status_ = commands.add_parser(
        "status", help="is greylisting on? what runs, since when, with which settings",
        description="Say whether courierfilter runs, whether the pythonfilter dispatcher runs this "
                    "filter, since when, with the settings of which file (and whether it changed "
                    "since), and when it last decided a message. Exits 0 only when greylisting is on.")
    status_.add_argument("--config", metavar="PATH",
                         help="the settings file meant to be running (default: the installed module's)")
    status_.set_defaults(handler=command_status)

    export = commands.add_parser(
        "export", help="write every stored triplet as JSON lines (a backup)",
        description="Write every entry as a JSON line: table, digest, timestamp. "
                    "Opens the store read-only.")
    with_store_options(export, creates=False)
    export.add_argument("file", nargs="?", metavar="FILE", help="output file (default: stdout)")
    export.set_defaults(handler=command_export)

    import_ = commands.add_parser(
        "import", help="read JSON lines written by export into the store",
        description="Store every entry of an export; existing entries are overwritten.")
    with_store_options(import_)
    import_.add_argument("file", nargs="?", metavar="FILE", help="input file (default: stdin)")
    import_.set_defaults(handler=command_import)

    migrate = commands.add_parser(
        "migrate", help="copy a store into another (dbm to PostgreSQL and back)",
        description="Copy every entry of the store of --config/--db-dir into the store of "
                    "--to-config/--to-db-dir, with progress on a terminal. Stop the filters "
                    "first, or run it again after switching them over.")
    with_store_options(migrate, creates=False)
    migrate.add_argument("--to-config", metavar="PATH", help="configuration naming the destination")
    migrate.add_argument("--to-db-dir", metavar="DIR", help="destination dbm directory")
    migrate.set_defaults(handler=command_migrate)

    def with_triplet_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--sender", required=True, type=envelope_address,
                         help="envelope sender (<a@b> is taken as a@b)")
        sub.add_argument("--recipient", required=True, action="append", type=envelope_address,
                         help="recipient (repeat for several)")
        sub.add_argument("--ip", required=True, help="client IP address")

    show = commands.add_parser(
        "show", help="the state of a triplet: pending, passed, unknown or whitelisted",
        description="Show what the tables know of the triplets of --sender, each --recipient "
                    "and --ip, and what the filter would do with their next message (every rule, "
                    "the DNS lists asked live). Changes nothing.")
    with_store_options(show, creates=False)
    with_triplet_options(show)
    show.add_argument("--client-name", help="the client's reverse-DNS name, for name whitelists")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(handler=command_show)

    allow = commands.add_parser(
        "allow", help="let a triplet through from now on",
        description="Record the triplets as passed now, so that their next message is accepted.")
    with_store_options(allow)
    with_triplet_options(allow)
    allow.set_defaults(handler=command_allow)

    delete = commands.add_parser(
        "delete", help="forget a triplet", description="Remove the triplets from both greylisting tables.")
    with_store_options(delete)
    with_triplet_options(delete)
    delete.set_defaults(handler=command_delete)

    stats = commands.add_parser(
        "stats", help="entries per table, their ages, auto-whitelisted networks",
        description="Count the entries of every table with an age histogram, and list the "
                    "auto-whitelisted client networks. Reads every entry.")
    with_store_options(stats, creates=False)
    stats.add_argument("--json", action="store_true", help="print JSON")
    stats.add_argument("--prometheus", action="store_true",
                       help="print the figures in Prometheus's text format (needs prometheus_client)")
    stats.add_argument("--top", type=int, default=20, help="networks to list (default 20)")
    stats.set_defaults(handler=command_stats)

    purge = commands.add_parser(
        "purge", help="drop expired entries now",
        description="Run the TTL purge now, a little at a time so that mail keeps flowing; "
                    "progress on a terminal.")
    with_store_options(purge)
    purge.set_defaults(handler=command_purge)

    report_ = commands.add_parser(
        "report", help="summarise the decision log lines",
        description="Read the filter's decision lines from LOGFILEs (or stdin) and print "
                    "messages by action and reason, the most greylisted client networks and "
                    "senders, and a histogram of how long greylisted triplets took to pass.")
    report_.add_argument("--config", metavar="PATH", help="configuration (for the network prefixes)")
    report_.add_argument("logfiles", nargs="*", metavar="LOGFILE")
    report_.add_argument("--json", action="store_true", help="print JSON")
    report_.add_argument("--top", type=int, default=10, help="rows per list (default 10)")
    report_.add_argument("--png", metavar="FILE", help="draw the delay histogram (needs matplotlib)")
    report_.set_defaults(handler=command_report)

    install = commands.add_parser(
        "install", help="let courier-pythonfilter's dispatcher load this filter",
        description=f"Write the module pythonfilter.{SHIM_NAME} that the dispatcher imports "
                    "when pythonfilter.conf lists it.")
    install.add_argument("--config", metavar="PATH", action="append",
                         help="make the filter read this file instead of the standard ones (repeated: "
                              "each in turn, a later file's settings over an earlier's)")
    install.add_argument("--name", default=SHIM_NAME, help=f"module name (default {SHIM_NAME})")
    install.add_argument("--target", metavar="DIR",
                         help="directory to write to (default: the pythonfilter package)")
    install.add_argument("--uninstall", action="store_true", help="remove the module")
    install.add_argument("--dry-run", action="store_true",
                         help="print what would be written or removed, and change nothing")
    install.set_defaults(handler=command_install)
    return parser


# Every command, in the order the manual page lists them (tools/manpage.py).
COMMANDS = ("check-config", "restart", "status", "show", "allow", "delete", "stats", "purge", "export",
            "import", "migrate", "report", "check", "install")


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    known = set(COMMANDS) | {"-h", "--help", "--version"}
    if argv and argv[0] not in known:
        if not (argv[0].startswith("-") or os.sep in argv[0] or os.path.exists(argv[0])):
            near = difflib.get_close_matches(argv[0], sorted(known - {"-h", "--help", "--version"}), n=1)
            print(f"greylist: unknown command {argv[0]!r}"
                  + (f"; did you mean {near[0]!r}?" if near else "")
                  + " (greylist --help lists them)", file=sys.stderr)
            return EX_USAGE
        argv.insert(0, "check")  # `python -m greylist CONTROLFILE...`, as the original
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EX_USAGE
    try:
        return args.handler(args)
    except GreylistError as error:  # a command's own (CommandError), or any room's
        print(f"greylist: {error}", file=sys.stderr)
        return EX_ERROR
    except KeyboardInterrupt:
        return 130
