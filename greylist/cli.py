"""The ``greylist`` command: the debug run and the operator's tools.

``greylist check CONTROLFILE...`` decides a message as the filter would and
records it in the store; it prints the reply and exits 0 for accept, 75
(EX_TEMPFAIL) for a 4xx reply, 1 for an error.  ``greylist install`` places
the small module through which courier-pythonfilter's dispatcher loads this
package.  Every error is one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from . import __version__, transfer
from .filter import GreylistFilter
from .settings import Settings, SettingsError, load_settings
from .stores import StoreError, open_store
from .stores import dbm as _dbm_store  # noqa: F401  (loaded before root gives up its rights)

EX_OK = 0
EX_ERROR = 1
EX_USAGE = 2
EX_TEMPFAIL = 75

SHIM_NAME = "courier_greylist"
SHIM_TEMPLATE = '''"""Placed by `greylist install`: lets courier-pythonfilter load courier-greylist.

List "{name}" in pythonfilter.conf.  Remove with `greylist install --uninstall`.
"""

import greylist as _greylist


def initFilter():
    _greylist.initFilter(config_paths={config_paths!r})


doFilter = _greylist.doFilter
'''


class CommandError(Exception):
    """A failure to report as one line and exit status 1."""


def default_db_dir() -> str:
    """Where the command line keeps a store when no configuration names one."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "courier-greylist")


def _load(args: argparse.Namespace) -> Settings:
    """Settings for a command: --config, else the standard files; --db-dir wins."""
    try:
        settings = load_settings([args.config] if args.config else None)
    except SettingsError as error:
        raise CommandError(str(error)) from None
    if args.config and not os.path.exists(args.config):
        raise CommandError(f"{args.config}: no such configuration file")
    if args.db_dir:
        directory = os.path.abspath(args.db_dir)
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        except OSError as error:
            raise CommandError(f"cannot create store directory {directory}: {error.strerror}") from None
        return settings.with_db_dir(directory)
    if settings.db_type == "dbm" and not settings.sources:
        directory = default_db_dir()
        os.makedirs(directory, mode=0o700, exist_ok=True)
        return settings.with_db_dir(directory)
    return settings


def _act_as_store_owner(settings: Settings) -> None:
    """Run as root, become the store directory's owner before touching its files.

    A store or lock file left owned by root would lock Courier's mail user
    out and stop greylisting; so root works on the store as its owner.
    """
    if os.geteuid() != 0 or settings.db_type != "dbm":
        return
    try:
        owner = os.stat(settings.db_dir)
    except OSError:
        return  # the store will report the missing directory
    if owner.st_uid == 0:
        return
    try:
        os.setgroups([])
        os.setgid(owner.st_gid)
        os.setuid(owner.st_uid)
    except OSError as error:
        raise CommandError(f"cannot act as the owner (uid {owner.st_uid}) of "
                           f"{settings.db_dir}: {error.strerror}") from None


def command_check(args: argparse.Namespace) -> int:
    settings = _load(args)
    _act_as_store_owner(settings)
    try:
        store = open_store(settings)
    except StoreError as error:
        raise CommandError(str(error)) from None
    try:
        # No purge here: a one-shot run should not stall on a large store.
        greylist = GreylistFilter(settings, store, log=lambda line: None, purge="never")
        verdict = greylist.check(args.control_files)
    finally:
        store.close()
    print(verdict.reply)
    print(f"greylist: {verdict.action} ({verdict.reason}); store: {store.description}",
          file=sys.stderr)
    if args.explain:
        print(verdict.log_line(), file=sys.stderr)
        if verdict.decision is not None:
            for outcome in verdict.decision.outcomes:
                print(f"  triplet {outcome.key}: {outcome.reason}", file=sys.stderr)
    if verdict.reply.startswith("4"):
        return EX_TEMPFAIL
    if verdict.action == "error" or verdict.reply[:1] == "5":
        return EX_ERROR
    return EX_OK


def command_install(args: argparse.Namespace) -> int:
    name = args.name
    if not name.isidentifier() or name == "greylist":
        raise CommandError(f"{name!r} cannot be the module name (and 'greylist' would "
                           f"replace courier-pythonfilter's own module)")
    target = args.target
    if target is None:
        try:
            import pythonfilter
        except ImportError:
            raise CommandError("courier-pythonfilter is not installed for "
                               f"{sys.executable}") from None
        target = os.path.dirname(os.path.abspath(pythonfilter.__file__))
    path = os.path.join(target, name + ".py")
    if args.uninstall:
        try:
            os.unlink(path)
        except FileNotFoundError:
            raise CommandError(f"{path}: not installed") from None
        print(f"removed {path}; take '{name}' out of pythonfilter.conf")
        return EX_OK
    config_paths = None
    if args.config:
        config_paths = [os.path.abspath(args.config)]
        try:
            load_settings(config_paths)
        except SettingsError as error:
            raise CommandError(str(error)) from None
    temporary = path + ".tmp"
    try:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(SHIM_TEMPLATE.format(name=name, config_paths=config_paths))
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except OSError as error:
        raise CommandError(f"cannot write {path}: {error.strerror}") from None
    print(f"installed {path}")
    print(f"next: list '{name}' in pythonfilter.conf in place of 'greylist', "
          f"then run: filterctl stop pythonfilter; filterctl start pythonfilter")
    return EX_OK


def _progress_printer(label: str):
    """Progress on a terminal, rewritten in place; nothing when stderr is not one."""
    if not sys.stderr.isatty():
        return None

    def show(table: str, count: int) -> None:
        print(f"\r{label}: {count:,} entries{' (' + table + ')' if table else ''}   ",
              end="" if table else "\n", file=sys.stderr, flush=True)

    return show


def _open(settings: Settings, readonly: bool = False):
    try:
        return open_store(settings, readonly=readonly)
    except StoreError as error:
        raise CommandError(str(error)) from None


def command_export(args: argparse.Namespace) -> int:
    settings = _load(args)
    _act_as_store_owner(settings)
    store = _open(settings, readonly=True)
    try:
        if args.file in (None, "-"):
            count = transfer.export_to(store, sys.stdout)
        else:
            with open(args.file, "w", encoding="utf-8") as out:
                count = transfer.export_to(store, out, _progress_printer("exported"))
    except (OSError, StoreError) as error:
        raise CommandError(f"export failed: {error}") from None
    finally:
        store.close()
    print(f"greylist: exported {count:,} entries from {store.description}", file=sys.stderr)
    return EX_OK


def command_import(args: argparse.Namespace) -> int:
    settings = _load(args)
    _act_as_store_owner(settings)
    store = _open(settings)
    try:
        if args.file in (None, "-"):
            count = transfer.write_entries(store, transfer.parse_lines(sys.stdin))
        else:
            with open(args.file, encoding="utf-8") as lines:
                count = transfer.write_entries(store, transfer.parse_lines(lines),
                                               _progress_printer("imported"))
    except (OSError, StoreError, transfer.TransferError) as error:
        raise CommandError(f"import failed: {error}") from None
    finally:
        store.close()
    print(f"greylist: imported {count:,} entries into {store.description}", file=sys.stderr)
    return EX_OK


def command_migrate(args: argparse.Namespace) -> int:
    if not (args.to_config or args.to_db_dir):
        raise CommandError("say where to copy to: --to-config PATH or --to-db-dir DIR")
    source_settings = _load(args)
    destination_settings = _load(argparse.Namespace(config=args.to_config, db_dir=args.to_db_dir))
    if source_settings == destination_settings:
        raise CommandError("source and destination are the same store")
    _act_as_store_owner(destination_settings if destination_settings.db_type == "dbm"
                        else source_settings)
    source = _open(source_settings, readonly=True)
    try:
        destination = _open(destination_settings)
        try:
            count = transfer.copy_store(source, destination, _progress_printer("copied"))
        except StoreError as error:
            raise CommandError(f"migration failed: {error}") from None
        finally:
            destination.close()
    finally:
        source.close()
    print(f"greylist: copied {count:,} entries from {source.description} "
          f"to {destination.description}", file=sys.stderr)
    return EX_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="greylist",
        description="Greylisting for the Courier mail server (courier-greylist).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def with_store_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--config", metavar="PATH",
                         help="pythonfilter-modules.conf to read (default: the files "
                              "courier.config reads)")
        sub.add_argument("--db-dir", metavar="DIR",
                         help="dbm store directory, created if missing (overrides [ttldb] dir)")

    check = commands.add_parser(
        "check", help="decide a message from its control files, as the filter would",
        description="Decide a message from its Courier control files and record it. "
                    "Prints the reply; exits 0 to accept, 75 for a temporary failure. "
                    "Without --config and --db-dir, and with no configuration file in the "
                    f"standard places, the store is kept in {default_db_dir()}.")
    with_store_options(check)
    check.add_argument("--explain", action="store_true", help="say which rule decided and why")
    check.add_argument("control_files", nargs="+", metavar="CONTROLFILE")
    check.set_defaults(handler=command_check)

    export = commands.add_parser(
        "export", help="write every stored triplet as JSON lines (a backup)",
        description="Write every entry as a JSON line: store, digest, timestamp. "
                    "Opens the store read-only.")
    with_store_options(export)
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
    with_store_options(migrate)
    migrate.add_argument("--to-config", metavar="PATH", help="configuration naming the destination")
    migrate.add_argument("--to-db-dir", metavar="DIR", help="destination dbm directory")
    migrate.set_defaults(handler=command_migrate)

    install = commands.add_parser(
        "install", help="let courier-pythonfilter's dispatcher load this filter",
        description=f"Write the module pythonfilter.{SHIM_NAME} that the dispatcher imports "
                    "when pythonfilter.conf lists it.")
    install.add_argument("--config", metavar="PATH",
                         help="make the filter read this file instead of the standard ones")
    install.add_argument("--name", default=SHIM_NAME, help=f"module name (default {SHIM_NAME})")
    install.add_argument("--target", metavar="DIR",
                         help="directory to write to (default: the pythonfilter package)")
    install.add_argument("--uninstall", action="store_true", help="remove the module")
    install.set_defaults(handler=command_install)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    known = {"check", "install", "export", "import", "migrate", "-h", "--help", "--version"}
    if argv and argv[0] not in known:
        argv.insert(0, "check")  # `python -m greylist CONTROLFILE...`, as the original
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EX_USAGE
    try:
        return args.handler(args)
    except CommandError as error:
        print(f"greylist: {error}", file=sys.stderr)
        return EX_ERROR
    except KeyboardInterrupt:
        return 130
