"""The README and the example configuration say what the code does.

These tests read the code for the words a postmaster sees (setting keys,
``reason=`` values) and check that the documents name each of them, so a new
setting or reason cannot ship undocumented.
"""

import ast
import os
import re

from greylist.settings import setting_keys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(*path: str) -> str:
    with open(os.path.join(ROOT, *path), encoding="utf-8") as handle:
        return handle.read()


def _section(text: str, heading: str) -> str:
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else len(text)]


def _literal_words(node: ast.AST) -> list:
    """The reason words an expression can give: 'x', f'x:{rule}' -> 'x:RULE', a if c else b."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr) and isinstance(node.values[0], ast.Constant):
        return [node.values[0].value + "RULE"]
    if isinstance(node, ast.IfExp):
        return _literal_words(node.body) + _literal_words(node.orelse)
    # anything else (next(... , "known")): every word it holds
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def reasons_in_code() -> set:
    """Every reason= value the filter can log, read from its source: ``reason=`` in log text, the
    ``reason=`` keyword of a call, a Decision's second argument, and what a variable named
    ``reason`` is given."""
    found = set()
    for name in os.listdir(os.path.join(ROOT, "greylist")):
        if not name.endswith(".py"):
            continue
        source = _read("greylist", name)
        found.update(re.findall(r"reason=([a-z][a-z-]+)", source))
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.keyword) and node.arg == "reason":
                found.update(_literal_words(node.value))
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "reason" for t in node.targets):
                found.update(_literal_words(node.value))
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Decision" \
                    and len(node.args) > 1:
                found.update(_literal_words(node.args[1]))  # Decision(action, reason, ...)
    return found


def test_every_reason_of_the_decision_line_is_in_the_readme_table():
    reasons = reasons_in_code()
    assert {"new", "known", "control-file", "no-sender-record", "not-started",
            "whitelisted:client:RULE", "store-failure", "internal"} <= reasons  # the reader works
    table = _section(_read("README.md"), "The decision line")
    def named(reason: str) -> bool:  # "dnswl:RULE" is written `dnswl:ZONE`, say
        if reason.endswith("RULE"):
            return re.search(rf"`{re.escape(reason[:-4])}[A-Z]+`", table) is not None
        return f"`{reason}`" in table

    missing = sorted(r for r in reasons if not named(r))
    assert not missing, f"reasons the README's decision line table does not name: {missing}"


def test_every_setting_is_in_the_readme_table_and_the_example_file():
    readme = _section(_read("README.md"), "Configuration")
    example = _read("greylist.conf.example")
    for section, key, _name in setting_keys():
        assert f"`{key}`" in readme, f"[{section}] {key} is not in the README's configuration tables"
        assert re.search(rf"^#?{key} = ", example, re.M), f"[{section}] {key} is not in greylist.conf.example"


def test_the_readme_links_to_documents_that_exist():
    links = re.findall(r"\]\(((?:docs|bench)/[^)#]+)\)", _read("README.md"))
    assert links
    for link in links:
        assert os.path.isfile(os.path.join(ROOT, link)), f"the README links to a missing {link}"
