"""Write greylist(8), the manual page, from the sources that cannot drift from it.

    python tools/manpage.py > greylist.8

The commands and their options come from the command line's own parser
(what ``greylist COMMAND --help`` prints); the settings from the README's
two settings tables (which tests/test_docs.py holds to the settings the
filter reads); the decision line's reasons from the README's table of them.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
# The help of `greylist check` names the user's state directory: the reader's, not the builder's.
os.environ["XDG_STATE_HOME"] = "~/.local/state"
os.environ["COLUMNS"] = "78"  # the width --help wraps at: the same page wherever it is built

from greylist.cli import COMMANDS, build_parser  # noqa: E402
from greylist.version import VERSION  # noqa: E402


def roff(text: str) -> str:
    """Markdown-ish text as roff: code spans bold, escapes for backslashes and leading dots."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    text = re.sub(r"`([^`]*)`", r"\\fB\1\\fR", text)
    text = re.sub(r"\*\*([^*]*)\*\*", r"\\fB\1\\fR", text)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = "".join(c if ord(c) < 128 else f"\\[u{ord(c):04X}]" for c in text)  # groff's Unicode escapes
    return "\\&" + text if text.startswith((".", "'")) else text


def readme_table(readme: str, first_header: str) -> list:
    """The rows of the README table whose header row starts with ``first_header``."""
    start = readme.index(f"| {first_header} |")
    rows = []
    for line in readme[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in re.split(r"\s\|(?=\s)", " " + line.strip()[1:-1] + " ")])
    return rows


def command_help(name: str) -> str:
    """What ``greylist NAME --help`` prints."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        build_parser().parse_args([name, "--help"])
    return out.getvalue()


def commands_section() -> list:
    out = [".SH COMMANDS", "Each is safe while the dispatcher runs; as root each works as the store's owner. "
           "What \\fBgreylist\\fR \\fICOMMAND\\fR \\fB\\-\\-help\\fR prints:"]
    for name in COMMANDS:
        out += [".SS", name, ".nf"]
        out += [roff(line) for line in command_help(name).rstrip().splitlines()]
        out += [".fi"]
    return out


def settings_section(readme: str) -> list:
    out = [".SH SETTINGS",
           "In \\fB/etc/pythonfilter\\-modules.conf\\fR (courier\\-pythonfilter's file), or in the files "
           "\\fBgreylist install \\-\\-config\\fR named (the Debian package's: "
           "\\fB/etc/courier\\-greylist/greylist.conf\\fR), values written as "
           "Python literals. With every setting at its default the filter decides exactly as "
           "courier\\-pythonfilter 3.0.6's greylist module."]
    for section in ("`[greylist.py]`", "`[ttldb]`"):
        out += [".SS", roff(section.strip("`"))]
        for name, default, meaning in readme_table(readme, section):
            out += [".TP", roff(name), roff(f"{meaning} (default: {default})")]
    return out


def reasons_section(readme: str) -> list:
    out = [".SH THE DECISION LINE",
           "With \\fBlog_decisions\\fR on, each message gets one line in the mail log: "
           "\\fBgreylist: action=ACTION, reason=REASON, client_address=..., sender=..., recipients=...\\fR"]
    for action, reason, when, reply in readme_table(readme, "`action`"):
        out += [".TP", f"{roff(action)} {roff(reason)}", roff(f"{when}; reply: {reply}")]
    return out


def main() -> int:
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as handle:
        readme = handle.read()
    date = time.strftime("%Y-%m-%d", time.gmtime(int(os.environ.get("SOURCE_DATE_EPOCH", time.time()))))
    page = [f'.TH GREYLIST 8 "{date}" "courier-greylist {VERSION}" "System Manager\'s Manual"',
            ".SH NAME", "greylist \\- greylisting filter for the Courier mail server, and its commands",
            ".SH SYNOPSIS", "\\fBgreylist\\fR \\fICOMMAND\\fR [\\fIOPTIONS\\fR]",
            ".SH DESCRIPTION",
            roff("Courier hands each incoming message to global filters; courier-pythonfilter's dispatcher "
                 "(`pythonfilter`) runs this one as the module `courier_greylist`. The first attempt of each "
                 "(envelope sender, recipient, client network) triplet gets a temporary 451 reply; a real "
                 "mail server retries and is let through, and the triplet is remembered for weeks. The "
                 "`greylist` command checks the settings, restarts the dispatcher, and reads and changes "
                 "the store while the dispatcher runs."),
            *commands_section(), *settings_section(readme), *reasons_section(readme),
            ".SH FILES",
            ".TP", "\\fB/etc/pythonfilter\\-modules.conf\\fR", "the settings",
            ".TP", "\\fB/etc/courier\\-greylist/greylist.conf\\fR",
            "the Debian package's settings (read after courier\\-pythonfilter's file where that exists)",
            ".TP", "\\fB/etc/pythonfilter.conf\\fR",
            "the modules the dispatcher loads (\\fBcourier_greylist\\fR)",
            ".TP", "\\fB/var/lib/pythonfilter\\fR", "the store (dbm files), owned by Courier's mail user",
            ".SH EXIT STATUS", "0 when the command did what it says, 75 (EX_TEMPFAIL) when \\fBcheck\\fR "
            "got a 4xx reply, 2 for a usage error, 1 for any other error.",
            ".SH SEE ALSO", "\\fBcourier\\fR(8), \\fBcourierfilter\\fR(8), \\fBfilterctl\\fR(8)"]
    sys.stdout.write("\n".join(page) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
