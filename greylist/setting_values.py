"""Values of pythonfilter-modules.conf: parsed without eval, then checked, one kind per function.

The reference passes every value to ``eval()``.  Here a value is parsed
(literals, and arithmetic on numbers) and each setting's checker turns it
into what the filter uses or raises ValueError with what to write instead.
"""

from __future__ import annotations

import ast
import ipaddress
import math
import operator
import re
from typing import Any, Callable

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


# Every number a value holds or computes stays within these: far beyond any
# setting's range, small enough that nothing overflows on the way.
_LARGEST_INT = 2**63
_NESTING = "too deeply nested, or too long: write the number itself"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _bounded(number: Any) -> Any:
    """A number as computed, refused when infinite, NaN or absurdly large."""
    if isinstance(number, float) and not math.isfinite(number):
        raise ValueError("not a finite number (infinity or NaN)")
    if isinstance(number, int) and not isinstance(number, bool) and abs(number) > _LARGEST_INT:
        raise ValueError("number too large")
    return number


def _evaluate(node: ast.AST) -> Any:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool, type(None))):
        return _bounded(node.value)
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
        return _bounded(_UNARY[type(node.op)](operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Add) and isinstance(left, str) and isinstance(right, str):
            return left + right
        if not (_is_number(left) and _is_number(right)):
            raise ValueError("arithmetic is allowed on numbers only")
        if isinstance(node.op, ast.Pow) and (abs(right) > 64 or abs(left) > 10**6):
            raise ValueError("exponent too large")
        try:
            return _bounded(_BINARY[type(node.op)](left, right))
        except ZeroDivisionError:
            raise ValueError("division by zero") from None
        except OverflowError:
            raise ValueError("number too large") from None
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
    except (RecursionError, MemoryError):
        # Python's parser and this evaluator both recurse: a chain of thousands
        # of operators or signs is refused here, not raised out of initFilter.
        raise ValueError(_NESTING) from None


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _what_to_write(text: str, problem: str) -> str:
    """The problem, said so that a postmaster who does not write Python knows what to write."""
    if text.lower() in _YES_NO and text not in ("True", "False"):
        return f"write {_YES_NO[text.lower()]} (with a capital letter), not {text}"
    bare = not any(mark in text for mark in "'\"()[]{} ") and not _numeric(text)
    if bare and (any(mark in text for mark in "/@:") or text.count(".") > 1
                 or text.replace("-", "_").replace(".", "_").isidentifier()):
        return f"put it in quotes: {text!r}"
    return problem


# --- the known keys ----------------------------------------------------------------


TEN_YEARS = 10 * 365 * 86400


def _seconds(value: Any) -> float:
    if not _is_number(value):
        raise ValueError(f"expected a number of seconds, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"expected a finite number of seconds, got {value!r}")
    return float(value)


def _at_most(longest: float) -> str:
    return f"at most {int(longest)}" + (" (ten years)" if longest == TEN_YEARS else "")


def duration(value: Any, longest: float = TEN_YEARS) -> float:
    """Seconds from 0 to ``longest``."""
    seconds = _seconds(value)
    if not 0 <= seconds <= longest:
        raise ValueError(f"expected a duration of 0 seconds or more, {_at_most(longest)}, got {value!r}")
    return seconds


def positive_duration(value: Any, longest: float = TEN_YEARS) -> float:
    """Seconds, more than 0 and at most ``longest``."""
    seconds = _seconds(value)
    if not 0 < seconds <= longest:
        raise ValueError(f"expected a duration of more than 0 seconds, {_at_most(longest)}, got {value!r}")
    return seconds


def wait_bound(longest: float) -> Callable[[Any], float]:
    """A timeout: more than 0 seconds, and at most ``longest`` (mail waits that long at worst)."""
    return lambda value: positive_duration(value, longest)


def prefix(limit: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= limit:
            raise ValueError(f"expected a whole number from 0 to {limit}, got {value!r}")
        return value

    return check


def boolean(value: Any) -> bool:
    if isinstance(value, bool) or value in (0, 1):
        return bool(value)
    raise ValueError(f"expected True or False, got {value!r}")


def boolean_or(word: str) -> Callable[[Any], Any]:
    """True, False, or one word naming a stricter form of True."""
    def check(value: Any) -> Any:
        if value == word:
            return word
        if isinstance(value, bool) or value in (0, 1):
            return bool(value)
        raise ValueError(f"expected True, False or {word!r}, got {value!r}")

    return check


def choice(*allowed: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in allowed:
            raise ValueError(f"expected one of {', '.join(map(repr, allowed))}, got {value!r}")
        return value

    return check


def reply(value: Any) -> str:
    if not isinstance(value, str) or not value[:1] == "4" or "\n" in value or "\r" in value:
        raise ValueError("expected a one-line 4xx SMTP reply")
    try:
        value.format(wait="00:05:00")
    except (KeyError, IndexError, ValueError) as error:
        raise ValueError(f"only {{wait}} may be used in the reply ({error})") from None
    return value


def text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value


def prom_path(value: Any) -> str:
    value = text(value)
    if not value.startswith("/"):
        raise ValueError(f"expected an absolute path, got {value!r}")
    if not value.endswith(".prom"):
        raise ValueError("the name must end in .prom (node_exporter's textfile collector reads "
                         "only those)")
    return value


def _strings(value: Any, expected: str, non_empty: bool = False) -> list:
    """A string or a list of strings, as a list; else ValueError saying what was expected."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and (v or not non_empty)
                                                        for v in value):
        raise ValueError(f"expected {expected}, got {value!r}")
    return list(value)


_ZONE_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")


def _names(value: Any, what: str, example: str, longest: int) -> tuple:
    """Host names (labels of letters, digits, '-' and '_' between dots), lower-cased."""
    names = []
    for text in _strings(value, f"a list of {what}s, e.g. [{example!r}]"):
        name = text.strip().lower().rstrip(".")
        labels = name.split(".")
        if len(name) > longest or len(labels) < 2 or not all(_ZONE_LABEL.match(label) for label in labels):
            raise ValueError(f"{text!r} is not a {what} name (letters, digits, '-' and '_' "
                             f"between dots, e.g. {example!r})")
        names.append(name)
    return tuple(names)


def zones(value: Any) -> tuple:
    """DNS list zones: host-name labels only, so a zone can never change a query's meaning."""
    # 180: the query name adds an IPv6 client's 32 nibbles (64 characters); DNS allows 253.
    return _names(value, "DNS zone", "list.dnswl.org", 180)


def host_name(value: Any) -> str:
    """One host name (what the X-Greylist header says the filter runs at)."""
    if not isinstance(value, str):
        raise ValueError(f"expected a host name, e.g. 'mx1.example.org', got {value!r}")
    return _names([value], "host", "mx1.example.org", 253)[0]


def domains(value: Any) -> tuple:
    """Mail domains, lower-cased (``example.com``; no ``@``)."""
    return _names(value, "mail domain", "gmail.com", 253)


def servers(value: Any) -> tuple:
    """DNS servers: '192.0.2.53', '192.0.2.53:5353', '2001:db8::53' or '[2001:db8::53]:5353'."""
    servers = []
    for text in _strings(value, "a list of DNS server addresses, e.g. ['127.0.0.1']"):
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


def recipient_rules(value: Any) -> tuple:
    """greylist_recipients: recipient entries, with '.domain' taken as '@.domain'."""
    value = _strings(value, "a list of strings")
    return entries("recipient")(["@" + v if v.startswith(".") else v for v in value])


def port(value: Any) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a port number, got {value!r}") from None
    if not 0 < port < 65536 or isinstance(value, (bool, float)):
        raise ValueError(f"expected a port number, got {value!r}")
    return port


def entries(kind: str) -> Callable[[Any], tuple]:
    """A list of whitelist entries of one kind, each checked now."""

    def check(value: Any) -> tuple:
        from .whitelist import Whitelist, WhitelistEntryError

        value = _strings(value, "a list of strings")
        probe = Whitelist()
        for entry in value:
            try:
                probe.add(kind, entry)
            except WhitelistEntryError as error:
                raise ValueError(str(error)) from None
        return tuple(value)

    return check


def paths(value: Any) -> tuple:
    return tuple(_strings(value, "a list of file paths", non_empty=True))


def count(lowest: int, highest: int) -> Callable[[Any], int]:
    """A whole number from ``lowest`` to ``highest``."""

    def check(value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or not lowest <= value <= highest:
            raise ValueError(f"expected a whole number from {lowest} to {highest}, got {value!r}")
        return value

    return check


def db_type(value: Any) -> str:
    value = choice("dbm", "psycopg2", "postgresql", "pg", "mysql")(value)
    if value == "mysql":
        raise ValueError("store type 'mysql' is not supported; use 'dbm' or 'psycopg2' (PostgreSQL)")
    return value
