"""The ``resfu-med`` command line.

Each subcommand lives in its own module of this package and exposes three names:
``COMMAND`` (its name), ``add_arguments(parser)`` and ``run(args) -> int``; a module docstring first paragraph is its
one-line help and the rest its description (with examples). Modules are discovered, so adding a command is adding a
file. Only argument parsing lives here; the work is done by :mod:`resfu_med.engine` and :mod:`resfu_med.data`.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import importlib
import pkgutil
import re
import sys
import textwrap
import traceback
from collections.abc import Sequence

from resfu_med import __version__
from resfu_med.errors import find_user_error

__all__ = ["main", "build_parser", "HelpFormatter", "ArgumentParser"]

# At exit, after the exit handlers registered later (multiprocessing's, torch's), move every object to the collector's
# permanent generation: the interpreter's final collections then skip the ~400,000 objects of torch and MONAI, which
# cost every command about 1 s of CPU at exit (docs/scale.md). Objects are still freed by reference counting.
atexit.register(gc.freeze)

EPILOG = """examples:
  resfu-med train --dataset demo --output runs/demo
  resfu-med evaluate --checkpoint runs/demo/best.pt --dataset demo
  resfu-med infer -i scans/ -o segs/ --checkpoint runs/demo/best.pt
  resfu-med <command> --help      options, defaults and examples of one command
"""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows an option's default where it has one and keeps the examples in descriptions as written.

    No ``(default: None)`` on required options, ``(default: False)`` on flags, or a second default where the help text
    already states one.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            action.required
            or default is None
            or default is argparse.SUPPRESS
            or isinstance(default, bool)
            or action.nargs == 0
            or "default" in text
            or not action.option_strings
        ):
            return text
        return f"{text} (default: %(default)s)"

    def _split_lines(self, text: str, width: int) -> list[str]:
        if "\n" not in text:
            return super()._split_lines(text, width)
        # a help text of several lines (one line per accepted name) keeps its lines and their alignment; a long line
        # wraps under its own description
        lines: list[str] = []
        for line in text.splitlines():
            name = re.match(r"\s*\S+\s{2,}", line)  # "  name   " before the description
            hang = len(name.group(0)) if name else len(line) - len(line.lstrip())
            lines += textwrap.wrap(line, width, subsequent_indent=" " * hang) or [""]
        return lines


class ArgumentParser(argparse.ArgumentParser):
    """An argparse parser whose usage errors are one line, like every other error of the tool."""

    def error(self, message: str):  # noqa: D401  (argparse's hook; never returns)
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse_known_args(self, args=None, namespace=None):  # noqa: D102  (adds the check of aliased required options)
        from resfu_med.cli._options import check_required_aliases

        namespace, extras = super().parse_known_args(args, namespace)
        check_required_aliases(self, namespace)
        return namespace, extras


def _command_modules() -> list:
    mods = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(mod, "COMMAND") and hasattr(mod, "run"):
            mods.append(mod)
    return mods


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Build the top-level parser with one subparser per discovered command module.

    Args:
        only: register the options of this command only (the others keep their name and summary). Some commands'
            options are generated from registries that import torch, MONAI and the networks; :func:`main` passes the
            command being run, so e.g. ``prepare`` does not pay for ``train``'s imports at start-up.
    """
    parser = ArgumentParser(
        prog="resfu-med",
        description="ReSFU medical image segmentation: prepare data, train, evaluate, infer, export.",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"resfu-med {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for mod in _command_modules():
        doc = (mod.__doc__ or "").strip()
        summary = doc.partition("\n\n")[0]
        p = sub.add_parser(
            mod.COMMAND,
            help=summary.replace("\n", " "),
            description=doc,
            formatter_class=HelpFormatter,
        )
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")
        if only is None or only == mod.COMMAND:
            mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``resfu-med``; returns the process exit status.

    User errors (:class:`~resfu_med.errors.ResfuMedError`) print one line ``resfu-med: error: ...`` and return 2
    (130 / 143 for a training run stopped by SIGINT / SIGTERM after saving).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    # The top-level options take no value, so the first other word is the command (argparse checks the rest).
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(only=command or "")
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 0
    try:
        return int(args._run(args) or 0)
    except Exception as exc:  # a user error, possibly wrapped by MONAI's transform machinery; anything else re-raises
        err = find_user_error(exc)
        if err is None:
            raise
        if getattr(args, "debug", False):
            traceback.print_exc()
        print(f"resfu-med {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"resfu-med {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
