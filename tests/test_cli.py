"""The ``resfu-med`` entry point: version, help, user errors as one line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from resfu_med import __version__
from resfu_med.cli import main


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"resfu-med {__version__}"


def test_help_lists_usage(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "usage: resfu-med" in out and "examples:" in out


def test_console_script_installed():
    # `python -m resfu_med` and the console script share one entry point.
    proc = subprocess.run([sys.executable, "-m", "resfu_med", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and __version__ in proc.stdout
