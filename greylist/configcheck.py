"""``greylist check-config``: would the dispatcher start with this configuration, and decide normally?

It loads the settings as ``initFilter`` does, looks at the store as the
dispatcher will use it (without creating anything), reads every whitelist
file and the smtpaccess database, and tells what it found: the effective
settings with where each came from, then one line per problem.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from typing import Callable, List, Optional, Sequence

from .courier_db import sysconfdir
from .errors import GreylistError
from .exemptions import open_lists, open_reputation
from .metrics import Counts, MetricsUnavailable, directory_problem, registry_for
from .settings import Settings, SettingsError, load_settings, setting_keys
from .stores import (
    PASSED_TABLE,
    POSTGRES_TYPES,
    StoreError,
    open_store,
)
from .stores.dbm.files import flavour_of
from .tables import wanted_tables


@dataclasses.dataclass
class Report:
    """What check-config found."""

    settings: Optional[Settings] = None
    origins: dict = dataclasses.field(default_factory=dict)
    notes: List[str] = dataclasses.field(default_factory=list)  # worth knowing, not a problem
    problems: List[str] = dataclasses.field(default_factory=list)

    def note(self, line: str) -> None:
        """A log line of the filter's, as a note (without its "greylist: ")."""
        self.notes.append(line[len("greylist: "):] if line.startswith("greylist: ") else line)

    def lines(self) -> List[str]:
        out = []
        if self.settings is not None:
            out.append("files read: " + (", ".join(self.settings.sources) or "none (the defaults)"))
            shown_section = None
            for section, key, name in setting_keys():
                if section != shown_section:
                    out.append(f"[{section}]")
                    shown_section = section
                value = getattr(self.settings, name)
                shown = "(set)" if name == "db_password" and value else repr(
                    list(value) if isinstance(value, tuple) else value)  # as it is written
                out.append(f"  {key} = {shown}  ({self.origins.get(name, 'default')})")
        out += [f"note: {note}" for note in self.notes]
        out += [f"problem: {problem}" for problem in self.problems]
        out.append("the dispatcher would start and decide normally" if not self.problems else
                   f"{len(self.problems)} problem{'s' if len(self.problems) > 1 else ''}: "
                   f"the dispatcher would not start, or not decide normally")
        return out


def check(config_paths: Optional[Sequence[str]],
          become_owner: Callable[[Settings], None] = lambda settings: None) -> Report:
    """Everything check-config looks at; ``become_owner`` switches to the store's owner (root)."""
    report = Report()
    for path in config_paths or ():
        if not os.path.isfile(path):
            report.problems.append(f"{path}: no such configuration file")
            return report
    try:
        report.settings = settings = load_settings(config_paths, warn=report.note,
                                                   origins=report.origins)
    except SettingsError as error:
        report.problems.append(str(error))
        return report
    _check_password_files(settings, report)
    become_owner(settings)
    _check_lists(settings, report)
    if settings.metrics_file:
        _check_metrics(settings, report)
    _check_reputation(settings, report)
    if settings.whitelist_replies:
        _check_replies(settings, report)
    if settings.db_type in POSTGRES_TYPES:
        _check_store(settings, report, postgres=True)
    else:
        _check_dbm(settings, report)
    return report


def _check_password_files(settings: Settings, report: Report) -> None:
    """A file that holds the PostgreSQL password must not be readable by every user."""
    if not settings.db_password:
        return
    for path in settings.sources:
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                holds = any(line.split("=", 1)[0].strip() == "password" for line in handle)
            mode = os.stat(path).st_mode
        except OSError:
            continue
        if holds and mode & 0o004:
            report.notes.append(f"{path} holds the PostgreSQL password and every user may read it: "
                                f"chmod 0640 {path}; chgrp courier {path}")


def _check_dbm(settings: Settings, report: Report) -> None:
    directory = settings.db_dir
    if not os.path.isdir(directory):
        report.problems.append(f"store directory {directory} does not exist "
                               f"(create it, owned by Courier's mail user)")
        return
    if not os.access(directory, os.W_OK | os.X_OK):
        report.problems.append(f"store directory {directory} is not writable by uid {os.geteuid()}")
        return
    try:
        flavour = flavour_of(os.path.join(directory, PASSED_TABLE))
    except OSError as error:
        report.problems.append(f"cannot use the store in {directory}: {error}")
        return
    if flavour is None:
        report.notes.append(f"no store in {directory} yet: the dispatcher will create it")
        return
    _check_store(settings, report)


def _check_store(settings: Settings, report: Report, postgres: bool = False) -> None:
    # The tables of ours that the settings ask for are made by the dispatcher at
    # start: the store is looked at with those it has, and the others noted.
    try:
        store = open_store(settings, readonly=True, tables=() if not postgres else None)
    except StoreError as error:
        report.problems.append(str(error))
        return
    try:
        report.notes.append(f"store: {store.description}")
        wanted = wanted_tables(settings)
        if not postgres and [table for table in wanted if table not in store.tables]:
            report.notes.append(f"{', '.join(t for t in wanted if t not in store.tables)} does not exist "
                                f"yet: the dispatcher will create it")
        if postgres:
            missing = store.missing_tables()
            if missing:
                report.notes.append(f"tables {', '.join(missing)} do not exist yet: "
                                    f"the dispatcher will create them")
    except StoreError as error:
        report.problems.append(str(error))
    finally:
        store.close()


def _check_replies(settings: Settings, report: Report) -> None:
    """What whitelist_replies will record: whose mail, and which domains are ours."""
    if not (settings.skip_authenticated or settings.skip_relayclients):
        report.notes.append("whitelist_replies: no mail is recorded: our users' mail is what "
                            "skip_authenticated or skip_relayclients lets pass")
    directory = sysconfdir()
    if not os.path.exists(os.path.join(directory, "locals")):
        report.notes.append(f"whitelist_replies: {directory}/locals does not exist: Courier's me "
                            f"is the one local domain (and hosteddomains)")


def _check_lists(settings: Settings, report: Report) -> None:
    """The whitelist files and smtpaccess, read as the filter reads them at start."""
    try:
        _, smtpaccess = open_lists(settings, report.note)
    except GreylistError as error:
        report.problems.append(str(error))
        return
    if smtpaccess is not None:
        smtpaccess.close()


def _check_metrics(settings: Settings, report: Report) -> None:
    """prometheus_client must be there; an unwritable directory is a warning (the filter retries)."""
    try:
        registry_for(Counts())
    except MetricsUnavailable as error:
        report.problems.append(str(error))
        return
    problem = directory_problem(settings.metrics_file)
    if problem:
        report.notes.append(f"metrics file {settings.metrics_file}: {problem} (the filter will keep trying)")


def _check_reputation(settings: Settings, report: Report) -> None:
    """dnspython and the pattern files; each DNS list asked for its test entry, 127.0.0.2."""
    try:
        reputation = open_reputation(settings, None)
    except GreylistError as error:
        report.problems.append(str(error))
        return
    if reputation is None or reputation.lists is None:
        return
    zones = settings.dnswl_zones + settings.dnsbl_zones
    servers = ", ".join(f"{address}:{port}" for address, port in reputation.lists.servers) or "none"
    for answer in reputation.lists.lookup(ipaddress.ip_address("127.0.0.2"), zones):
        if answer.listed:
            report.notes.append(f"DNS list {answer.zone} answers (its test entry 127.0.0.2 is listed)")
        else:  # not a problem: mail is greylisted as without the list
            report.notes.append(f"DNS list {answer.zone}: its test entry 127.0.0.2 is {answer.result} "
                                f"(asked {servers}); until it answers, it lists nobody")
