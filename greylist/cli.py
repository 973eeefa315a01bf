"""The ``greylist`` command: the debug run and the operator's tools.

``greylist check CONTROLFILE...`` decides a message as the filter would and
records it in the store; it prints the reply and exits 0 for accept, 75
(EX_TEMPFAIL) for a 4xx reply, 1 for an error.  ``greylist install`` places
the small module through which courier-pythonfilter's dispatcher loads this
package.  Every error is one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import dataclasses
import dbm
import difflib
import gzip
import io
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Optional, Sequence

from . import __version__, admin, configcheck, report, transfer
from .filter import GreylistFilter
from .settings import Settings, SettingsError, load_settings
from .stores import ALL_TABLES, AUTO_WHITELIST_TABLE, PASSED_TABLE, StoreError, open_store
from .stores.dbm import LOCK_NAME  # the dbm store loaded before root gives up its rights
from .triplet import InvalidClientAddress, IPAddress, parse_client_ip

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


def _load(args: argparse.Namespace, create: bool = True) -> Settings:
    """Settings for a command: --config, else the standard files; --db-dir wins.

    ``create``: make the store directory if missing (commands that only read
    refuse a missing store instead, see ``_existing``).
    """
    try:
        settings = load_settings([args.config] if args.config else None)
    except SettingsError as error:
        raise CommandError(str(error)) from None
    if args.config and not os.path.exists(args.config):
        raise CommandError(f"{args.config}: no such configuration file")
    if args.db_dir:
        settings = settings.with_db_dir(os.path.abspath(args.db_dir))
    elif settings.db_type == "dbm" and not settings.sources:
        settings = settings.with_db_dir(default_db_dir())
    else:
        return settings
    if create:
        try:
            os.makedirs(settings.db_dir, mode=0o700, exist_ok=True)
        except OSError as error:
            raise CommandError(f"cannot create store directory {settings.db_dir}: "
                               f"{error.strerror}") from None
    return settings


def _existing(settings: Settings) -> Settings:
    """For the commands that only read: the dbm store must be there already."""
    if settings.db_type == "dbm" and dbm.whichdb(os.path.join(settings.db_dir, PASSED_TABLE)) is None:
        raise CommandError(f"no store in {settings.db_dir} (nothing was greylisted there yet; "
                           f"does --db-dir or [ttldb] dir name the right directory?)")
    return settings


def _act_as_store_owner(settings: Settings) -> None:
    """Run as root, become the store's owner before touching its files.

    A store or lock file left owned by root would lock Courier's mail user
    out and stop greylisting; so root works on the store as its owner.
    """
    if os.geteuid() != 0 or settings.db_type != "dbm":
        return
    try:
        owner = _store_owner(settings.db_dir)
    except OSError:
        return  # the store will report the missing directory
    if owner is None:
        return  # root's own store
    try:
        os.setgroups([])
        os.setgid(owner.st_gid)
        os.setuid(owner.st_uid)
    except OSError as error:
        raise CommandError(f"cannot act as the owner (uid {owner.st_uid}) of "
                           f"{settings.db_dir}: {error.strerror}") from None


def _store_owner(directory: str) -> Optional[os.stat_result]:
    """Whose store this is: the directory's owner, or, in a directory root owns, the owner
    of the store's files; None for root's own store."""
    info = os.stat(directory)
    if info.st_uid != 0:
        return info
    for name in sorted(os.listdir(directory)):
        if name == LOCK_NAME or name.startswith(ALL_TABLES):
            found = os.stat(os.path.join(directory, name), follow_symlinks=False)
            if found.st_uid != 0:
                return found
    if info.st_mode & 0o020 and info.st_gid != 0:
        raise CommandError(f"{directory} belongs to root and is writable by group {info.st_gid}, "
                           f"and holds no store file of another user yet: run this as Courier's mail "
                           f"user (files made as root would lock it out), or chown the directory to it")
    return None


def command_check(args: argparse.Namespace) -> int:
    settings = _load(args)
    _act_as_store_owner(settings)
    try:
        store = open_store(settings)
    except StoreError as error:
        raise CommandError(str(error)) from None
    try:
        # No purge here: a one-shot run should not stall on a large store.
        greylist = _filter(settings, store)
        verdict = greylist.check(args.control_files, args.body or _data_file(args.control_files[0]))
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


def command_check_config(args: argparse.Namespace) -> int:
    found = configcheck.check([args.config] if args.config else None, _act_as_store_owner)
    for line in found.lines():
        print(line, file=sys.stderr if line.startswith("problem: ") else sys.stdout)
    return EX_ERROR if found.problems else EX_OK


def _data_file(control_path: str) -> Optional[str]:
    """Courier keeps a message's data file ``D<id>`` beside its control file ``C<id>``."""
    directory, name = os.path.split(control_path)
    if name.startswith("C"):
        candidate = os.path.join(directory, "D" + name[1:])
        if os.path.exists(candidate):
            return candidate
    return None


def _filter(settings: Settings, store) -> GreylistFilter:
    """The filter as the dispatcher builds it, quiet and never purging on its own."""
    # A one-shot command leaves its few changes in the gdbm journal for the
    # filter's next purge to fold, instead of rewriting a large file on exit.
    store.fold_on_close = False
    try:
        return GreylistFilter(settings, store, log=_warn, purge="never")
    except SettingsError as error:
        store.close()
        raise CommandError(str(error)) from None


def _warn(line: str) -> None:
    print(line, file=sys.stderr)


def _open_filter(args: argparse.Namespace, with_auto_whitelist: bool = False,
                 read_only: bool = False) -> GreylistFilter:
    settings = _existing(_load(args, create=False)) if read_only else _load(args)
    _act_as_store_owner(settings)
    return _filter(settings, _open(settings, with_auto_whitelist=with_auto_whitelist))


def _address(text: str) -> IPAddress:
    try:
        return parse_client_ip(text)
    except InvalidClientAddress as error:
        raise CommandError(str(error)) from None


def _on_store(args: argparse.Namespace, action, read_only: bool = False):
    """Run ``action(filter)`` on the configured store, then close it; errors become one line.

    ``read_only``: the command only reads, and a missing store is an error, not a new one.
    """
    greylist = _open_filter(args, read_only=read_only)
    try:
        return action(greylist)
    except StoreError as error:
        raise CommandError(str(error)) from None
    finally:
        greylist.store.close()


def command_show(args: argparse.Namespace) -> int:
    now = time.time()
    lookup = _on_store(args, lambda greylist: admin.show(
        greylist, args.sender, args.recipient, _address(args.ip), now, client_name=args.client_name),
        read_only=True)
    if args.json:
        print(json.dumps(dataclasses.asdict(lookup), indent=2))
        return EX_OK
    print(f"client network {lookup.network}, sender {args.sender}")
    if lookup.whitelist_rule:
        print(f"whitelist: {lookup.whitelist_rule} (never greylisted)")
    if lookup.client is not None:
        client = lookup.client
        if client.last_seen is None:
            print(f"auto-whitelist: no record of {client.network}")
        else:
            status = "auto-whitelisted" if client.whitelisted else f"not yet ({client.needed} needed)"
            print(f"auto-whitelist: {client.network}: {client.passes} triplets passed, last seen "
                  f"{admin.when(client.last_seen)}; {status}")
    for triplet in lookup.triplets:
        print(f"  {triplet.recipient}: {triplet.describe(now)}  [{triplet.key}]")
    return EX_OK


def command_allow(args: argparse.Namespace) -> int:
    keys = _on_store(args, lambda greylist: admin.allow(greylist, args.sender, args.recipient,
                                                        _address(args.ip), time.time()))
    for recipient, key in zip(args.recipient, keys):
        print(f"allowed: {args.sender} -> {recipient} from {args.ip}  [{key}]")
    return EX_OK


def command_delete(args: argparse.Namespace) -> int:
    found = _on_store(args, lambda greylist: admin.delete(greylist, args.sender, args.recipient,
                                                          _address(args.ip)))
    print(f"deleted {found} entr{'y' if found == 1 else 'ies'} "
          f"for {len(args.recipient)} triplet{'s' if len(args.recipient) != 1 else ''}")
    return EX_OK


def command_stats(args: argparse.Namespace) -> int:
    result = _on_store(args, lambda greylist: admin.stats(greylist, time.time(), top=args.top),
                       read_only=True)
    if args.json:
        print(json.dumps(result, indent=2))
        return EX_OK
    print(f"store: {result['store']}")
    for table, entry in result["tables"].items():
        print(f"{table}: {entry['entries']:,} entries ({entry['expired']:,} expired, "
              f"waiting for the purge)")
        largest = max(entry["ages"].values()) or 1
        for label, count in entry["ages"].items():
            print(f"  {label:>14} {count:>10,} {'#' * round(30 * count / largest) if count else ''}")
        if "networks" in entry:
            print(f"  auto-whitelisted networks: {entry['whitelisted_networks']:,}")
            for network in entry["networks"]:
                mark = "  whitelisted" if network["whitelisted"] else ""
                print(f"    {network['network']:<24} {network['passes']:>6} passed, last seen "
                      f"{admin.when(network['last_seen'])}{mark}")
    return EX_OK


def command_purge(args: argparse.Namespace) -> int:
    greylist = _open_filter(args)
    lines: list = []
    greylist.log = lines.append
    show = _progress_printer("purge: examined")
    try:
        started = time.monotonic()
        removed = greylist.purge(time.time(), None if show is None else
                                 (lambda table, count: show(table, count)))
        if show is not None:
            show("", -1)
    finally:
        greylist.store.close()
    if lines:
        raise CommandError(lines[-1][len("greylist: "):] if lines[-1].startswith("greylist: ") else lines[-1])
    print(f"purged {removed:,} expired entries from {greylist.store.description} "
          f"in {time.monotonic() - started:.1f} s")
    return EX_OK


def command_report(args: argparse.Namespace) -> int:
    settings = _load_settings_only(args)

    if not args.logfiles and sys.stdin.isatty():
        raise CommandError("give the mail log's files (rotated .gz ones too), "
                           "or send the log on standard input")

    def lines():
        if not args.logfiles:
            yield from sys.stdin
            return
        for path in args.logfiles:
            try:
                with _text_lines(path, errors="replace") as handle:
                    yield from handle
            except (OSError, EOFError) as error:
                raise CommandError(f"{path}: {getattr(error, 'strerror', None) or error}") from None

    summary = report.summarise(lines(), settings.ipv4_prefix, settings.ipv6_prefix)
    if args.json:
        print(json.dumps(summary.as_dict(args.top), indent=2))
    else:
        print(report.render(summary, args.top), end="")
    if args.png:
        try:
            report.draw_png(summary, args.png)
        except report.PlotUnavailable as error:
            raise CommandError(str(error)) from None
        except OSError as error:
            raise CommandError(f"cannot write {args.png}: {error.strerror}") from None
        print(f"histogram drawn to {args.png}", file=sys.stderr)
    return EX_OK


def _text_lines(source, errors: str = "strict"):
    """Lines of text from a path or a binary file, gzip-compressed (a rotated log, an export) or not."""
    raw = open(source, "rb") if isinstance(source, str) else source
    compressed = raw.read(2) == b"\x1f\x8b"
    raw.seek(0)
    if compressed and isinstance(source, str):
        raw.close()
        return gzip.open(source, "rt", encoding="utf-8", errors=errors)
    return io.TextIOWrapper(gzip.GzipFile(fileobj=raw) if compressed else raw,
                            encoding="utf-8", errors=errors)


def _load_settings_only(args: argparse.Namespace) -> Settings:
    try:
        return load_settings([args.config] if args.config else None)
    except SettingsError as error:
        raise CommandError(str(error)) from None


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
        if not os.path.isfile(args.config):
            raise CommandError(f"{args.config}: no such configuration file; nothing installed")
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
    spinner = "|/-\\"
    state = {"turn": 0}

    def show(table: str, count: int) -> None:
        if count < 0:
            print(file=sys.stderr, flush=True)
            return
        state["turn"] += 1
        mark = spinner[state["turn"] % 4] if table else " "
        print(f"\r{mark} {label}: {count:,} entries{' (' + table + ')' if table else ''}   ",
              end="" if table else "\n", file=sys.stderr, flush=True)

    return show


def _open(settings: Settings, readonly: bool = False, with_auto_whitelist: bool = False):
    if with_auto_whitelist and settings.auto_whitelist_clients <= 0:
        settings = dataclasses.replace(settings, auto_whitelist_clients=1)  # opens its table
    try:
        return open_store(settings, readonly=readonly)
    except StoreError as error:
        raise CommandError(str(error)) from None


def command_export(args: argparse.Namespace) -> int:
    settings = _existing(_load(args, create=False))
    to_stdout = args.file in (None, "-")
    try:  # opened as the user who named it, before root becomes the store's owner
        out = sys.stdout if to_stdout else open(args.file, "w", encoding="utf-8")
    except OSError as error:
        raise CommandError(f"cannot write {args.file} as uid {os.geteuid()}: {error.strerror}") from None
    try:
        _act_as_store_owner(settings)
        store = _open(settings, readonly=True)
        try:
            count = transfer.export_to(store, out, None if to_stdout else _progress_printer("exported"))
        except (OSError, StoreError) as error:
            raise CommandError(f"export failed: {error}") from None
        finally:
            store.close()
    finally:
        if not to_stdout:
            out.close()
    print(f"greylist: exported {count:,} entries from {store.description}", file=sys.stderr)
    return EX_OK


def command_import(args: argparse.Namespace) -> int:
    settings = _load(args)
    _act_as_store_owner(settings)
    # Read twice, streaming (an export of a million entries is ~100 MB): once to
    # see whether it has auto-whitelist entries, whose table must then be opened.
    # Standard input is spooled to a temporary file for that.
    try:
        if args.file in (None, "-"):
            if sys.stdin.isatty():
                raise CommandError("give the export's file, or send it on standard input")
            spooled = tempfile.TemporaryFile()
            shutil.copyfileobj(sys.stdin.buffer, spooled)
            spooled.seek(0)
            lines = _text_lines(spooled)
        else:
            lines = _text_lines(args.file)
    except OSError as error:
        raise CommandError(f"import failed: {error}") from None
    with lines:
        try:
            lines.seek(0)
            needs_table = any(AUTO_WHITELIST_TABLE in line for line in lines)
            lines.seek(0)
        except (OSError, EOFError, UnicodeDecodeError) as error:
            raise CommandError(f"import failed: {error}") from None
        store = _open(settings, with_auto_whitelist=needs_table)
        try:
            count = transfer.write_entries(store, transfer.parse_lines(lines),
                                           _progress_printer("imported"))
        except transfer.TransferError as error:
            raise CommandError(f"import stopped after {error.written:,} entries: {error}") from None
        except (OSError, EOFError, UnicodeDecodeError, StoreError) as error:
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
        destination = _open(destination_settings,
                            with_auto_whitelist=AUTO_WHITELIST_TABLE in source.tables)
        try:
            count = transfer.copy_store(source, destination, _progress_printer("copied"))
        except (StoreError, transfer.TransferError) as error:
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

    def with_triplet_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--sender", required=True, type=_envelope_address,
                         help="envelope sender (<a@b> is taken as a@b)")
        sub.add_argument("--recipient", required=True, action="append", type=_envelope_address,
                         help="recipient (repeat for several)")
        sub.add_argument("--ip", required=True, help="client IP address")

    show = commands.add_parser(
        "show", help="the state of a triplet: pending, passed, unknown or whitelisted",
        description="Show what the stores know of the triplets of --sender, each --recipient "
                    "and --ip, and which whitelist rule, if any, covers them. Changes nothing.")
    with_store_options(show)
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
        "delete", help="forget a triplet", description="Remove the triplets from both stores.")
    with_store_options(delete)
    with_triplet_options(delete)
    delete.set_defaults(handler=command_delete)

    stats = commands.add_parser(
        "stats", help="entries per store, their ages, auto-whitelisted networks",
        description="Count the entries of every store with an age histogram, and list the "
                    "auto-whitelisted client networks. Reads every entry.")
    with_store_options(stats)
    stats.add_argument("--json", action="store_true", help="print JSON")
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
    install.add_argument("--config", metavar="PATH",
                         help="make the filter read this file instead of the standard ones")
    install.add_argument("--name", default=SHIM_NAME, help=f"module name (default {SHIM_NAME})")
    install.add_argument("--target", metavar="DIR",
                         help="directory to write to (default: the pythonfilter package)")
    install.add_argument("--uninstall", action="store_true", help="remove the module")
    install.set_defaults(handler=command_install)
    return parser


def _envelope_address(text: str) -> str:
    """An address as a postmaster pastes it from a log or a header: ``<a@b>`` is ``a@b``."""
    text = text.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    return text


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    known = {"check", "check-config", "install", "export", "import", "migrate", "show", "allow",
             "delete", "stats", "purge", "report", "-h", "--help", "--version"}
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
    except CommandError as error:
        print(f"greylist: {error}", file=sys.stderr)
        return EX_ERROR
    except KeyboardInterrupt:
        return 130
