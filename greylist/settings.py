"""Settings: defaults, reading pythonfilter-modules.conf, validation.

The files are the ones courier.config reads (``_standard_config_paths``),
sections ``[greylist.py]`` and ``[ttldb]``.  Values are written as Python
expressions there; the reference passes them to ``eval()``.  Here they are
parsed, never executed: literals (numbers, strings, booleans, None, lists,
tuples, dicts) and arithmetic on numbers are accepted, anything else is
refused with one line naming the file, section, key and problem.
"""

from __future__ import annotations

import ast
import configparser
import difflib
import ipaddress
import operator
import re
import sys
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional, Sequence

GREYLIST_SECTION = "greylist.py"
TTLDB_SECTION = "ttldb"

DEFAULT_DB_DIR = "/var/lib/pythonfilter"


class SettingsError(Exception):
    """A configuration file or value is unusable; the message says where and why."""


@dataclass(frozen=True)
class Settings:
    """Everything the filter is told by its configuration, validated."""

    senders_purge_interval: float = 60 * 60 * 2
    senders_passed_ttl: float = 60 * 60 * 24 * 36
    senders_not_passed_ttl: float = 60 * 60 * 24
    greylist_time: float = 300
    on_store_error: str = "accept"  # or "tempfail"
    reply: str = "451 4.7.1 Greylisting in action, please come back in {wait}"
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
    greylist_recipients: tuple = ()  # empty: every recipient
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
    sources: tuple = ()

    def with_db_dir(self, path: str) -> Settings:
        return replace(self, db_type="dbm", db_dir=path)


# --- parsing values without eval -------------------------------------------------

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_NAMES = {"True": True, "False": False, "None": None}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _evaluate(node: ast.AST) -> Any:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool, type(None))):
        return node.value
    if isinstance(node, ast.Name) and node.id in _NAMES:
        return _NAMES[node.id]
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        items = [_evaluate(item) for item in node.elts]
        return tuple(items) if isinstance(node, ast.Tuple) else items
    if isinstance(node, ast.Dict):
        if any(key is None for key in node.keys):
            raise ValueError("dict unpacking is not allowed")
        return {_evaluate(k): _evaluate(v) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        operand = _evaluate(node.operand)
        if not _is_number(operand):
            raise ValueError("sign applied to something that is not a number")
        return _UNARY[type(node.op)](operand)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Add) and isinstance(left, str) and isinstance(right, str):
            return left + right
        if not (_is_number(left) and _is_number(right)):
            raise ValueError("arithmetic is allowed on numbers only")
        if isinstance(node.op, ast.Pow) and (abs(right) > 64 or abs(left) > 10**6):
            raise ValueError("exponent too large")
        try:
            return _BINARY[type(node.op)](left, right)
        except ZeroDivisionError:
            raise ValueError("division by zero") from None
    raise ValueError(f"not a literal or arithmetic ({type(node).__name__})")


_YES_NO = {"yes": True, "true": True, "on": True, "no": False, "false": False, "off": False}


def parse_value(text: str) -> Any:
    """Parse one configuration value as the reference would, without eval()."""
    if len(text) > 65536:
        raise ValueError("value longer than 64 KiB")
    text = text.strip()
    try:
        return _evaluate(ast.parse(text, mode="eval"))
    except SyntaxError as error:
        raise ValueError(_what_to_write(text, f"not a Python literal ({error.msg})")) from None
    except ValueError as error:
        raise ValueError(_what_to_write(text, str(error))) from None


def _what_to_write(text: str, problem: str) -> str:
    """The problem, said so that a postmaster who does not write Python knows what to write."""
    if text.lower() in _YES_NO and text not in ("True", "False"):
        return f"write {_YES_NO[text.lower()]} (with a capital letter), not {text}"
    bare = not any(mark in text for mark in "'\"()[]{} ")
    if bare and (any(mark in text for mark in "/@:") or text.count(".") > 1
                 or text.replace("-", "_").replace(".", "_").isidentifier()):
        return f"put it in quotes: {text!r}"
    return problem


# --- the known keys ----------------------------------------------------------------


def _duration(value: Any) -> float:
    if not _is_number(value):
        raise ValueError(f"expected a number of seconds, got {value!r}")
    if value < 0:
        raise ValueError(f"expected a duration of 0 seconds or more, got {value!r}")
    return float(value)


def _positive_duration(value: Any) -> float:
    value = _duration(value)
    if value <= 0:
        raise ValueError("expected a duration of more than 0 seconds")
    return value


def _prefix(limit: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= limit:
            raise ValueError(f"expected a whole number from 0 to {limit}, got {value!r}")
        return value

    return check


def _boolean(value: Any) -> bool:
    if isinstance(value, bool) or value in (0, 1):
        return bool(value)
    raise ValueError(f"expected True or False, got {value!r}")


def _choice(*allowed: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in allowed:
            raise ValueError(f"expected one of {', '.join(map(repr, allowed))}, got {value!r}")
        return value

    return check


def _reply(value: Any) -> str:
    if not isinstance(value, str) or not value[:1] == "4" or "\n" in value or "\r" in value:
        raise ValueError("expected a one-line 4xx SMTP reply")
    try:
        value.format(wait="00:05:00")
    except (KeyError, IndexError, ValueError) as error:
        raise ValueError(f"only {{wait}} may be used in the reply ({error})") from None
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value


def _prom_path(value: Any) -> str:
    value = _text(value)
    if not value.startswith("/"):
        raise ValueError(f"expected an absolute path, got {value!r}")
    if not value.endswith(".prom"):
        raise ValueError("the name must end in .prom (node_exporter's textfile collector reads "
                         "only those)")
    return value


_ZONE_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")


def _zones(value: Any) -> tuple:
    """DNS list zones: host-name labels only, so a zone can never change a query's meaning."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected a list of DNS zones, e.g. ['zen.spamhaus.org'], got {value!r}")
    zones = []
    for zone in value:
        name = zone.strip().lower().rstrip(".")
        labels = name.split(".")
        if len(name) > 200 or len(labels) < 2 or not all(_ZONE_LABEL.match(label) for label in labels):
            raise ValueError(f"{zone!r} is not a DNS zone name (letters, digits, '-' and '_' "
                             f"between dots, e.g. 'list.dnswl.org')")
        zones.append(name)
    return tuple(zones)


def _servers(value: Any) -> tuple:
    """DNS servers: '192.0.2.53', '192.0.2.53:5353', '2001:db8::53' or '[2001:db8::53]:5353'."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected a list of DNS server addresses, e.g. ['127.0.0.1'], got {value!r}")
    servers = []
    for text in value:
        host, port = text.strip(), 53
        if host.startswith("[") and "]" in host:
            host, _, rest = host[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else rest or 53
        elif host.count(":") == 1:
            host, _, port = host.partition(":")
        try:
            address = str(ipaddress.ip_address(host))
            port = int(port)
        except ValueError:
            raise ValueError(f"{text!r} is not a DNS server address (an IP address, "
                             f"optionally with :port)") from None
        if not 0 < port < 65536:
            raise ValueError(f"{text!r}: port {port} is out of range")
        servers.append((address, port))
    return tuple(servers)


def _recipient_rules(value: Any) -> tuple:
    """greylist_recipients: recipient entries, with '.domain' taken as '@.domain'."""
    if isinstance(value, str):
        value = [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        value = ["@" + v if v.startswith(".") else v for v in value]
    return _entries("recipient")(value)


def _port(value: Any) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a port number, got {value!r}") from None
    if not 0 < port < 65536 or isinstance(value, (bool, float)):
        raise ValueError(f"expected a port number, got {value!r}")
    return port


def _entries(kind: str) -> Callable[[Any], tuple]:
    """A list of whitelist entries of one kind, each checked now."""

    def check(value: Any) -> tuple:
        from .whitelist import Whitelist, WhitelistEntryError

        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"expected a list of strings, got {value!r}")
        probe = Whitelist()
        for entry in value:
            try:
                probe.add(kind, entry)
            except WhitelistEntryError as error:
                raise ValueError(str(error)) from None
        return tuple(value)

    return check


def _paths(value: Any) -> tuple:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"expected a list of file paths, got {value!r}")
    return tuple(value)


def _count(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"expected a whole number, 0 or more, got {value!r}")
    return value


def _db_type(value: Any) -> str:
    value = _choice("dbm", "psycopg2", "postgresql", "pg", "mysql")(value)
    if value == "mysql":
        raise ValueError("store type 'mysql' is not supported; use 'dbm' or 'psycopg2' (PostgreSQL)")
    return value


# config key -> (Settings field, validator).  Both spellings of the reference.
_GREYLIST_KEYS: dict = {
    "senders_purge_interval": ("senders_purge_interval", _positive_duration),
    "sendersPurgeInterval": ("senders_purge_interval", _positive_duration),
    "senders_passed_ttl": ("senders_passed_ttl", _duration),
    "sendersPassedTTL": ("senders_passed_ttl", _duration),
    "senders_not_passed_ttl": ("senders_not_passed_ttl", _duration),
    "sendersNotPassedTTL": ("senders_not_passed_ttl", _duration),
    "greylist_time": ("greylist_time", _duration),
    "greylistTime": ("greylist_time", _duration),
    "on_store_error": ("on_store_error", _choice("accept", "tempfail")),
    "reply": ("reply", _reply),
    "ipv4_prefix": ("ipv4_prefix", _prefix(32)),
    "ipv6_prefix": ("ipv6_prefix", _prefix(128)),
    "log_decisions": ("log_decisions", _boolean),
    "whitelist_clients": ("whitelist_clients", _entries("client")),
    "whitelist_senders": ("whitelist_senders", _entries("sender")),
    "whitelist_recipients": ("whitelist_recipients", _entries("recipient")),
    "whitelist_files": ("whitelist_files", _paths),
    "auto_whitelist_clients": ("auto_whitelist_clients", _count),
    "normalize_senders": ("normalize_senders", _boolean),
    "spf_triplets": ("spf_triplets", _boolean),
    "skip_authenticated": ("skip_authenticated", _boolean),
    "skip_relayclients": ("skip_relayclients", _boolean),
    "smtpaccess_file": ("smtpaccess_file", _text),
    "learn_only": ("learn_only", _boolean),
    "dnswl_zones": ("dnswl_zones", _zones),
    "dnsbl_zones": ("dnsbl_zones", _zones),
    "dnsbl_greylist_time": ("dnsbl_greylist_time", _duration),
    "dns_servers": ("dns_servers", _servers),
    "dns_timeout": ("dns_timeout", _positive_duration),
    "greylist_clients": ("greylist_clients", _choice("all", "suspicious")),
    "generic_rdns_files": ("generic_rdns_files", _paths),
    "match_retry_by_message_id": ("match_retry_by_message_id", _boolean),
    "greylist_recipients": ("greylist_recipients", _recipient_rules),
    "metrics_file": ("metrics_file", _prom_path),
    "metrics_interval": ("metrics_interval", _positive_duration),
    # The original module's debug switch; accepted and ignored.
    "doDebug": (None, _boolean),
}
_TTLDB_KEYS: dict = {
    "type": ("db_type", _db_type),
    "dir": ("db_dir", _text),
    "host": ("db_host", _text),
    "port": ("db_port", _port),
    "db": ("db_name", _text),
    "user": ("db_user", _text),
    "password": ("db_password", lambda v: v if isinstance(v, str) else _text(v)),
    "timeout": ("db_timeout", _positive_duration),
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
        with open(path, encoding="utf-8") as handle:
            parser.read_file(handle, source=path)
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
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
                if name is not None:
                    values[name] = value
                    if origins is not None:
                        origins[name] = f"{path} [{section}] {key}"
    return Settings(sources=tuple(sources), **values)
