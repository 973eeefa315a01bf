"""greylist(8): generated from --help and the README's tables, so it names every command and setting."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from helpers import REPO

from greylist.cli import COMMANDS
from greylist.settings import setting_keys


def _page() -> str:
    result = subprocess.run([sys.executable, os.path.join(REPO, "tools", "manpage.py")], capture_output=True,
                            text=True, timeout=60, env=dict(os.environ, SOURCE_DATE_EPOCH="1796558400"))
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_manual_page_names_every_command_and_setting():
    page = _page()
    assert page.startswith('.TH GREYLIST 8 "2026-12-06"')
    for command in COMMANDS:
        assert f".SS\n{command}\n" in page, command
        assert "usage: greylist " + command.replace("-", "\\-") in page, command
    for _section, key, _name in setting_keys():
        assert f"\\fB{key}" in page, key
    assert "reason=REASON" in page and "greytrap" in page


def test_the_manual_page_renders_without_a_warning():
    if shutil.which("groff") is None:
        pytest.skip("groff is not installed (Debian: apt-get install groff-base)")
    rendered = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-P-c", "-P-b", "-P-u"], input=_page(),
                              capture_output=True,
                              text=True, timeout=60)
    assert rendered.returncode == 0 and rendered.stderr == "", rendered.stderr
    assert "greylist_time" in rendered.stdout
