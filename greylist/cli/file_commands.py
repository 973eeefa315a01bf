"""The commands that move data in and out: report, install, export, import, migrate."""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import shutil
import sys
import tempfile

from .. import report, transfer
from ..errors import GreylistError
from ..settings import SettingsError, load_settings
from ..stores import OPTIONAL_TABLES, StoreError
from .common import (
    EX_OK,
    CommandError,
    act_as_owner_of_both,
    act_as_store_owner,
    existing_store,
    make_store_directory,
    open_configured_store,
    progress_printer,
    settings_for,
    settings_only,
    text_lines,
)
from .shim import SHIM_TEMPLATE, pythonfilter_directory


def command_report(args: argparse.Namespace) -> int:
    settings = settings_only(args)

    if not args.logfiles and sys.stdin.isatty():
        raise CommandError("give the mail log's files (rotated .gz ones too), "
                           "or send the log on standard input")

    def lines():
        if not args.logfiles:
            yield from sys.stdin
            return
        for path in args.logfiles:
            try:
                with text_lines(path, errors="replace") as handle:
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


def command_install(args: argparse.Namespace) -> int:
    name = args.name
    if not name.isidentifier() or name == "greylist":
        raise CommandError(f"{name!r} cannot be the module name (and 'greylist' would "
                           f"replace courier-pythonfilter's own module)")
    target = args.target or pythonfilter_directory()
    path = os.path.join(target, name + ".py")
    if args.uninstall:
        if args.dry_run:
            print(f"would remove {path}" if os.path.exists(path) else f"{path}: not installed")
            return EX_OK
        try:
            os.unlink(path)
        except FileNotFoundError:
            raise CommandError(f"{path}: not installed") from None
        # And what Python compiled of it when the dispatcher imported it: a package manager
        # removing the dispatcher's directory must find it empty.
        for compiled in glob.glob(os.path.join(target, "__pycache__", f"{glob.escape(name)}.*.pyc")):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(compiled)
        print(f"removed {path}; take '{name}' out of pythonfilter.conf")
        return EX_OK
    config_paths = None
    if args.config:
        for config in args.config:
            if not os.path.isfile(config):
                raise CommandError(f"{config}: no such configuration file; nothing installed")
        config_paths = [os.path.abspath(config) for config in args.config]
        try:
            load_settings(config_paths)
        except SettingsError as error:
            raise CommandError(str(error)) from None
    shim = SHIM_TEMPLATE.format(name=name, config_paths=config_paths)
    if args.dry_run:
        print(f"would {'replace' if os.path.exists(path) else 'write'} {path}:")
        print(shim, end="")
        return EX_OK
    temporary = path + ".tmp"
    try:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(shim)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except OSError as error:
        raise CommandError(f"cannot write {path}: {error.strerror}") from None
    print(f"installed {path}")
    print(f"next: list '{name}' in pythonfilter.conf in place of 'greylist', then run: greylist restart")
    return EX_OK


def command_export(args: argparse.Namespace) -> int:
    settings = settings_for(args, create=False)
    to_stdout = args.file in (None, "-")
    try:  # opened as the user who named it, before root becomes the store's owner
        out = sys.stdout if to_stdout else open(args.file, "w", encoding="utf-8")
    except OSError as error:
        raise CommandError(f"cannot write {args.file} as uid {os.geteuid()}: {error.strerror}") from None
    try:
        act_as_store_owner(settings)
        existing_store(settings)
        store = open_configured_store(settings, readonly=True)
        try:
            count = transfer.export_to(store, out, None if to_stdout else progress_printer("exported"))
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
    settings = settings_for(args)
    # Read twice, streaming (an export of a million entries is ~100 MB): once to
    # see whether it has auto-whitelist entries, whose table must then be opened.
    # Standard input is spooled to a temporary file for that.  Either is opened
    # as the user who named it, before root becomes the store's owner.
    try:
        if args.file in (None, "-"):
            if sys.stdin.isatty():
                raise CommandError("give the export's file, or send it on standard input")
            spooled = tempfile.TemporaryFile()
            shutil.copyfileobj(sys.stdin.buffer, spooled)
            spooled.seek(0)
            lines = text_lines(spooled)
        else:
            lines = text_lines(open(args.file, "rb"))
    except OSError as error:
        raise CommandError(f"import failed: {error}") from None
    act_as_store_owner(settings)
    with lines:
        try:
            lines.seek(0)
            needs_tables = {table for line in lines for table in OPTIONAL_TABLES if table in line}
            lines.seek(0)
        except (OSError, EOFError, UnicodeDecodeError) as error:
            raise CommandError(f"import failed: {error}") from None
        store = open_configured_store(settings, with_tables=needs_tables)
        try:
            count = transfer.write_entries(store, transfer.parse_lines(lines),
                                           progress_printer("imported"))
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
    source_settings = settings_for(args, create=False)
    destination_settings = settings_for(argparse.Namespace(config=args.to_config, db_dir=args.to_db_dir),
                                        create=False)
    if source_settings == destination_settings:
        raise CommandError("source and destination are the same store")
    act_as_owner_of_both(source_settings, destination_settings)
    existing_store(source_settings)
    if destination_settings.db_type == "dbm":
        make_store_directory(destination_settings.db_dir)
    source = open_configured_store(source_settings, readonly=True)
    try:
        destination = open_configured_store(destination_settings,
                            with_tables=source.tables)
        try:
            count = transfer.copy_store(source, destination, progress_printer("copied"))
        except GreylistError as error:  # the store's, or a TransferError
            raise CommandError(f"migration failed: {error}") from None
        finally:
            destination.close()
    finally:
        source.close()
    print(f"greylist: copied {count:,} entries from {source.description} "
          f"to {destination.description}", file=sys.stderr)
    return EX_OK
