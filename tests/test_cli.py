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


def test_wrapped_user_errors_print_one_line(capsys, monkeypatch):
    """MONAI wraps a loader's InputError in RuntimeError("applying transform"): the CLI still prints its message."""
    import argparse

    from resfu_med.errors import InputError, find_user_error

    try:
        try:
            raise InputError("slices/case1_slice003.npz: cannot read prepared data")
        except InputError as inner:
            raise RuntimeError("applying transform <LoadPrepared>") from inner
    except RuntimeError as wrapped:
        err = wrapped
    assert isinstance(find_user_error(err), InputError) and find_user_error(RuntimeError("other")) is None

    def run(args):
        raise err

    parser = argparse.ArgumentParser()
    parser.set_defaults(_run=run, command="train")
    monkeypatch.setattr("resfu_med.cli.build_parser", lambda **_: parser)
    assert main([]) == 2
    assert capsys.readouterr().err.strip() == (
        "resfu-med train: error: slices/case1_slice003.npz: cannot read prepared data")

    def crash(args):
        raise RuntimeError("a bug, not the user's")

    parser.set_defaults(_run=crash)
    with pytest.raises(RuntimeError, match="a bug"):
        main([])
