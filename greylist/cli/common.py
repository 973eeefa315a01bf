"""What every command of the command line shares: exit codes, settings, the store and its owner."""

from __future__ import annotations

import argparse
import gzip
import io
import os
import sys
from typing import List, Optional, Sequence

from ..errors import GreylistError
from ..filter import GreylistFilter
from ..settings import Settings, SettingsError, load_settings
from ..stores import (
    ALL_TABLES,
    PASSED_TABLE,
    StoreError,
    open_store,
)
from ..stores.dbm import LOCK_NAME  # the dbm store loaded before root gives up its rights
from ..stores.dbm.files import flavour_of
from ..tables import OPTIONAL_TABLES, wanted_tables
from ..triplet import InvalidClientAddress, IPAddress, parse_client_ip
from ..whitelist_files import NOT_THERE_YET
from .shim import installed_config_paths

EX_OK = 0
EX_ERROR = 1
EX_USAGE = 2
EX_TEMPFAIL = 75


class CommandError(GreylistError):
    """A failure to report as one line and exit status 1."""


def default_db_dir() -> str:
    """Where the command line keeps a store when no configuration names one."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "courier-greylist")


def config_paths(args: argparse.Namespace) -> Optional[List[str]]:
    """The settings files a command reads: --config, else the installed module's (those the
    running filter reads); None: courier.config's standard files."""
    return [args.config] if args.config else installed_config_paths()


def settings_for(args: argparse.Namespace, create: bool = True) -> Settings:
    """Settings for a command: --config, else the installed module's files (those the running filter
    reads), else the standard files; --db-dir wins.

    ``create``: make the store directory if missing (commands that only read
    refuse a missing store instead, see ``_existing``).
    """
    try:
        settings = load_settings(config_paths(args))
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
        make_store_directory(settings.db_dir)
    return settings


def make_store_directory(directory: str, owner: Optional[os.stat_result] = None) -> None:
    """The store's directory, made if missing (as root, for ``owner`` when given)."""
    if os.path.isdir(directory):
        return
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        if owner is not None:
            os.chown(directory, owner.st_uid, owner.st_gid)
    except OSError as error:
        raise CommandError(f"cannot create store directory {directory}: {error.strerror}") from None


def act_as_owner_of_both(source: Settings, destination: Settings) -> None:
    """As root, for a copy between stores: become the one owner of both.

    A dbm directory that does not exist yet is made for the source's owner.
    Stores of two different owners are refused: one process cannot act as both.
    """
    if os.geteuid() != 0 or (source.db_type == "dbm" and not os.path.isdir(source.db_dir)):
        return  # (no source: existing_store says so)
    owners = {}
    for which, settings in (("source", source), ("destination", destination)):
        if settings.db_type == "dbm" and os.path.isdir(settings.db_dir):
            owners[which] = store_owner(settings.db_dir)  # None: root's own
    if destination.db_type == "dbm" and "destination" not in owners:
        if "source" not in owners:
            raise CommandError(f"as root, make {destination.db_dir} first, owned by Courier's mail user "
                               f"(install -d -o courier -g courier -m 0700 {destination.db_dir})")
        make_store_directory(destination.db_dir, owners["source"])
        owners["destination"] = owners["source"]
    uids = {which: 0 if owner is None else owner.st_uid for which, owner in owners.items()}
    if len(set(uids.values())) > 1:
        raise CommandError(f"the source store belongs to uid {uids['source']}, the destination to uid "
                           f"{uids['destination']}: one command cannot act as both (chown one of them)")
    owner = next((owner for owner in owners.values() if owner is not None), None)
    if owner is not None:
        become(owner, destination.db_dir if destination.db_type == "dbm" else source.db_dir)


def existing_store(settings: Settings) -> Settings:
    """For the commands that only read: the dbm store must be there already.

    Call it as the store's owner (``act_as_store_owner``): it looks at the files.
    """
    if settings.db_type != "dbm":
        return settings
    try:
        flavour = flavour_of(os.path.join(settings.db_dir, PASSED_TABLE))
    except OSError as error:
        raise CommandError(f"cannot use the store in {settings.db_dir}: {error}") from None
    if flavour is None:
        raise CommandError(f"no store in {settings.db_dir} (nothing was greylisted there yet; "
                           f"does --db-dir or [ttldb] dir name the right directory?)")
    return settings


def act_as_store_owner(settings: Settings) -> None:
    """Run as root, become the store's owner before touching its files.

    A store or lock file left owned by root would lock Courier's mail user
    out and stop greylisting; so root works on the store as its owner.
    """
    if os.geteuid() != 0 or settings.db_type != "dbm":
        return
    try:
        owner = store_owner(settings.db_dir)
    except OSError:
        return  # the store will report the missing directory
    if owner is not None:  # else root's own store
        become(owner, settings.db_dir)


def become(owner: os.stat_result, directory: str) -> None:
    """Give up root for good, as the owner of ``owner`` (a stat of the store's directory or file)."""
    try:
        os.setgroups([])
        os.setgid(owner.st_gid)
        os.setuid(owner.st_uid)
    except OSError as error:
        raise CommandError(f"cannot act as the owner (uid {owner.st_uid}) of "
                           f"{directory}: {error.strerror}") from None


def store_owner(directory: str) -> Optional[os.stat_result]:
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


def quiet_filter(settings: Settings, store) -> GreylistFilter:
    """The filter as the dispatcher builds it, quiet and never purging on its own."""
    # A one-shot command leaves its few changes in the gdbm journal for the
    # filter's next purge to fold, instead of rewriting a large file on exit.
    store.fold_on_close = False
    try:
        return GreylistFilter(settings, store, log=warn_of_problems, purge="never")
    except GreylistError:
        store.close()
        raise


def warn(line: str) -> None:
    print(line, file=sys.stderr)


def warn_of_problems(line: str) -> None:
    """The filter's log lines, for a command: not the notes check-config gives (a whitelist file
    that does not exist yet is not news at every command)."""
    if not line.endswith(NOT_THERE_YET):
        warn(line)


def open_filter(args: argparse.Namespace, read_only: bool = False) -> GreylistFilter:
    settings = settings_for(args, create=not read_only)
    act_as_store_owner(settings)
    if read_only:
        existing_store(settings)
    return quiet_filter(settings, open_configured_store(settings))


def client_address(text: str) -> IPAddress:
    try:
        return parse_client_ip(text)
    except InvalidClientAddress as error:
        raise CommandError(str(error)) from None


def on_store(args: argparse.Namespace, action, read_only: bool = False):
    """Run ``action(filter)`` on the configured store, then close it; errors become one line.

    ``read_only``: the command only reads, and a missing store is an error, not a new one.
    """
    greylist = open_filter(args, read_only=read_only)
    try:
        return action(greylist)
    except StoreError as error:
        raise CommandError(str(error)) from None
    finally:
        greylist.store.close()


def open_configured_store(settings: Settings, readonly: bool = False, with_tables: Sequence[str] = ()):
    """The settings' store, with the tables of ours ``with_tables`` names opened (made) too."""
    asked = tuple(table for table in with_tables if table in OPTIONAL_TABLES)
    tables = tuple(dict.fromkeys(wanted_tables(settings) + asked))
    try:
        return open_store(settings, readonly=readonly, tables=tables)
    except StoreError as error:
        raise CommandError(str(error)) from None


def progress_printer(label: str):
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


def text_lines(source, errors: str = "strict"):
    """Lines of text from a path or a binary file, gzip-compressed (a rotated log, an export) or not."""
    raw = open(source, "rb") if isinstance(source, str) else source
    compressed = raw.read(2) == b"\x1f\x8b"
    raw.seek(0)
    if compressed and isinstance(source, str):
        raw.close()
        return gzip.open(source, "rt", encoding="utf-8", errors=errors)
    return io.TextIOWrapper(gzip.GzipFile(fileobj=raw) if compressed else raw,
                            encoding="utf-8", errors=errors)


def settings_only(args: argparse.Namespace) -> Settings:
    try:
        return load_settings(config_paths(args))
    except SettingsError as error:
        raise CommandError(str(error)) from None


def envelope_address(text: str) -> str:
    """An address as a postmaster pastes it from a log or a header: ``<a@b>`` is ``a@b``."""
    text = text.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    return text
