"""Settings: defaults, reading pythonfilter-modules.conf, validation.

The files are the ones courier.config reads (``_standard_config_paths``),
sections ``[greylist.py]`` and ``[ttldb]``.  Values are written as Python
expressions there; the reference passes them to ``eval()``.  Here they are
parsed, never executed: literals (numbers, strings, booleans, None, lists,
tuples, dicts) and arithmetic on numbers are accepted, anything else is
refused with one line naming the file, section, key and problem.
"""

from __future__ import annotations

import configparser
import difflib
import sys
from dataclasses import dataclass, field, replace
from typing import Callable, Optional, Sequence

from . import setting_values as values
from .errors import GreylistError
from .replies import DEFAULT_REPLY
from .safe_files import read_regular
from .setting_values import parse_value

GREYLIST_SECTION = "greylist.py"
TTLDB_SECTION = "ttldb"

DEFAULT_DB_DIR = "/var/lib/pythonfilter"
# auto_whitelist_domains_except's default: free-mail providers, whose outbound
# servers send for anyone who opens an account (spammers among them).
FREE_MAIL_DOMAINS = (
    "gmail.com", "googlemail.com", "yahoo.com", "yahoo.co.uk", "yahoo.fr", "yahoo.de", "ymail.com",
    "outlook.com", "hotmail.com", "hotmail.co.uk", "hotmail.fr", "live.com", "msn.com",
    "aol.com", "icloud.com", "me.com", "mac.com", "mail.com", "gmx.com", "gmx.net", "gmx.de",
    "web.de", "yandex.ru", "yandex.com", "mail.ru", "proton.me", "protonmail.com", "zoho.com",
    "qq.com", "163.com", "126.com", "sina.com", "naver.com", "rediffmail.com", "libero.it",
    "orange.fr", "free.fr", "laposte.net", "t-online.de", "tutanota.com", "fastmail.com",
)
CONFIG_LIMIT = 1 << 20  # a settings file larger than this is not one


class SettingsError(GreylistError):
    """A configuration file or value is unusable; the message says where and why."""


@dataclass(frozen=True)
class Settings:
    """Everything the filter is told by its configuration, validated."""

    senders_purge_interval: float = 60 * 60 * 2
    senders_passed_ttl: float = 60 * 60 * 24 * 36
    senders_not_passed_ttl: float = 60 * 60 * 24
    greylist_time: float = 300
    on_store_error: str = "accept"  # or "tempfail"
    reply: str = DEFAULT_REPLY
    ipv4_prefix: int = 24
    ipv6_prefix: int = 48
    log_decisions: bool = True
    whitelist_clients: tuple = ()
    whitelist_senders: tuple = ()
    whitelist_recipients: tuple = ()
    whitelist_files: tuple = ()
    auto_whitelist_clients: int = 0
    normalize_senders: bool = False
    spf_triplets: bool = False
    skip_authenticated: bool = False
    skip_relayclients: bool = False
    smtpaccess_file: Optional[str] = None  # default: Courier's sysconfdir/smtpaccess.dat
    learn_only: bool = False
    dnswl_zones: tuple = ()  # clients listed here pass without greylisting
    dnsbl_zones: tuple = ()  # clients listed here wait dnsbl_greylist_time
    dnsbl_greylist_time: float = 1800
    dns_servers: tuple = ()  # ((address, port), ...); empty: the system's resolvers
    dns_timeout: float = 2.0
    greylist_clients: str = "all"  # or "suspicious"
    generic_rdns_files: tuple = ("builtin:generic-rdns",)
    match_retry_by_message_id: bool = False
    whitelist_replies: object = False  # False, True, or "in-reply-to" (the strict form)
    auto_whitelist_senders: bool = False
    auto_whitelist_domains: int = 0  # distinct senders of a domain that make it proven; 0: off
    auto_whitelist_domains_except: tuple = FREE_MAIL_DOMAINS
    greylist_recipients: tuple = ()  # empty: every recipient
    x_greylist_header: str = "none"  # or "delays", "all"
    x_greylist_host: Optional[str] = None  # the header's host name; None: Courier's me, else the system's
    greytrap_recipients: tuple = ()  # addresses nobody uses: a client that writes to one before it passed
    greytrap_time: float = 86400
    metrics_file: Optional[str] = None  # Prometheus text file for node_exporter; None: off
    metrics_interval: float = 15.0
    db_type: str = "dbm"
    db_dir: str = DEFAULT_DB_DIR
    db_host: Optional[str] = None
    db_port: Optional[int] = None
    db_name: Optional[str] = None
    db_user: Optional[str] = None
    db_password: Optional[str] = field(default=None, repr=False)
    db_timeout: float = 5.0
    db_pool_size: int = 4  # PostgreSQL connections of one dispatcher, at most
    sources: tuple = ()

    def with_db_dir(self, path: str) -> Settings:
        return replace(self, db_type="dbm", db_dir=path)


# config key -> (Settings field, validator).  Both spellings of the reference.
_GREYLIST_KEYS: dict = {
    "senders_purge_interval": ("senders_purge_interval", values.positive_duration),
    "sendersPurgeInterval": ("senders_purge_interval", values.positive_duration),
    "senders_passed_ttl": ("senders_passed_ttl", values.duration),
    "sendersPassedTTL": ("senders_passed_ttl", values.duration),
    "senders_not_passed_ttl": ("senders_not_passed_ttl", values.duration),
    "sendersNotPassedTTL": ("senders_not_passed_ttl", values.duration),
    "greylist_time": ("greylist_time", values.duration),
    "greylistTime": ("greylist_time", values.duration),
    "on_store_error": ("on_store_error", values.choice("accept", "tempfail")),
    "reply": ("reply", values.reply),
    "ipv4_prefix": ("ipv4_prefix", values.prefix(32)),
    "ipv6_prefix": ("ipv6_prefix", values.prefix(128)),
    "log_decisions": ("log_decisions", values.boolean),
    "whitelist_clients": ("whitelist_clients", values.entries("client")),
    "whitelist_senders": ("whitelist_senders", values.entries("sender")),
    "whitelist_recipients": ("whitelist_recipients", values.entries("recipient")),
    "whitelist_files": ("whitelist_files", values.paths),
    "auto_whitelist_clients": ("auto_whitelist_clients", values.count(0, 1_000_000)),
    "normalize_senders": ("normalize_senders", values.boolean),
    "spf_triplets": ("spf_triplets", values.boolean),
    "skip_authenticated": ("skip_authenticated", values.boolean),
    "skip_relayclients": ("skip_relayclients", values.boolean),
    "smtpaccess_file": ("smtpaccess_file", values.text),
    "learn_only": ("learn_only", values.boolean),
    "dnswl_zones": ("dnswl_zones", values.zones),
    "dnsbl_zones": ("dnsbl_zones", values.zones),
    "dnsbl_greylist_time": ("dnsbl_greylist_time", values.duration),
    "dns_servers": ("dns_servers", values.servers),
    "dns_timeout": ("dns_timeout", values.wait_bound(60)),
    "greylist_clients": ("greylist_clients", values.choice("all", "suspicious")),
    "generic_rdns_files": ("generic_rdns_files", values.paths),
    "match_retry_by_message_id": ("match_retry_by_message_id", values.boolean),
    "whitelist_replies": ("whitelist_replies", values.boolean_or("in-reply-to")),
    "auto_whitelist_senders": ("auto_whitelist_senders", values.boolean),
    "auto_whitelist_domains": ("auto_whitelist_domains", values.count(0, 1_000_000)),
    "auto_whitelist_domains_except": ("auto_whitelist_domains_except", values.domains),
    "greylist_recipients": ("greylist_recipients", values.recipient_rules),
    "x_greylist_header": ("x_greylist_header", values.choice("none", "delays", "all")),
    "x_greylist_host": ("x_greylist_host", values.host_name),
    "greytrap_recipients": ("greytrap_recipients", values.recipient_rules),
    "greytrap_time": ("greytrap_time", values.positive_duration),
    "metrics_file": ("metrics_file", values.prom_path),
    "metrics_interval": ("metrics_interval", values.wait_bound(86400)),
    # The original module's debug switch; accepted and ignored.
    "doDebug": (None, values.boolean),
}
_TTLDB_KEYS: dict = {
    "type": ("db_type", values.db_type),
    "dir": ("db_dir", values.text),
    "host": ("db_host", values.text),
    "port": ("db_port", values.port),
    "db": ("db_name", values.text),
    "user": ("db_user", values.text),
    "password": ("db_password", lambda v: v if isinstance(v, str) else values.text(v)),
    "timeout": ("db_timeout", values.wait_bound(300)),
    "pool_size": ("db_pool_size", values.count(1, 100)),
}
_SECTIONS = {GREYLIST_SECTION: _GREYLIST_KEYS, TTLDB_SECTION: _TTLDB_KEYS}


def setting_keys() -> list:
    """Every setting as (section, key, Settings field), under the key we document."""
    keys, seen = [], set()
    for section, known in _SECTIONS.items():
        for key, (name, _check) in known.items():
            if name is not None and name not in seen:  # the first spelling is the documented one
                seen.add(name)
                keys.append((section, key, name))
    return keys


def standard_config_paths() -> list:
    """The files courier.config reads, honouring a changed _standard_config_paths."""
    try:
        import courier.config
    except ImportError:  # courier-pythonfilter missing: same defaults as it has
        return ["/etc/pythonfilter-modules.conf", "/usr/local/etc/pythonfilter-modules.conf"]
    return list(courier.config._standard_config_paths)


def _read_file(path: str) -> Optional[configparser.RawConfigParser]:
    parser = configparser.RawConfigParser(strict=True, interpolation=None)
    parser.optionxform = str  # keys are case-sensitive, as in courier.config
    try:
        text = read_regular(path, CONFIG_LIMIT).decode("utf-8")
        parser.read_string(text, source=path)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise SettingsError(f"{path}: cannot read configuration: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise SettingsError(f"{path}: cannot read configuration: {error}") from None
    except configparser.Error as error:
        message = " ".join(str(error).split())
        raise SettingsError(f"{path}: not a valid configuration file: {message}") from None
    return parser


def load_settings(
    config_paths: Optional[Sequence[str]] = None,
    warn: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
    origins: Optional[dict] = None,
) -> Settings:
    """Read the configuration files (later files override earlier ones).

    ``origins``, if given, is filled with where each setting that a file set
    came from: ``{name: "path [section] key"}``.
    """
    paths = standard_config_paths() if config_paths is None else list(config_paths)
    values: dict = {}
    sources = []
    for path in paths:
        parser = _read_file(path)
        if parser is None:
            continue
        sources.append(path)
        for section in parser.sections():
            if section not in _SECTIONS:
                near = difflib.get_close_matches(section.lower(), list(_SECTIONS), n=1, cutoff=0.7)
                if near:
                    warn(f"greylist: {path}: [{section}] looks like [{near[0]}], which this filter "
                         f"reads; its settings are ignored")
        for section, known in _SECTIONS.items():
            if not parser.has_section(section):
                continue
            for key, text in parser.items(section):
                if key not in known:
                    warn(f"greylist: {path}: [{section}] {key}: unknown setting, ignored "
                         f"(a typo?)")
                    continue
                name, check = known[key]
                try:
                    value = check(parse_value(text))
                except ValueError as error:
                    raise SettingsError(f"{path}: [{section}] {key}: {error}") from None
                if name is None:
                    continue
                spellings = [k for k in parser.options(section) if known.get(k, (None,))[0] == name]
                if len(spellings) > 1:  # greylist_time and greylistTime: the documented one wins
                    documented = next(k for k, (n, _) in known.items() if n == name)
                    if key != documented:
                        continue
                    warn(f"greylist: {path}: [{section}] sets both {' and '.join(spellings)}; "
                         f"{documented} is used")
                values[name] = value
                if origins is not None:
                    origins[name] = f"{path} [{section}] {key}"
    return Settings(sources=tuple(sources), **values)
