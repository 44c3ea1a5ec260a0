"""Shared option spellings of every ``resfu-med`` subcommand: one name per concept.

Every subcommand that has a concept spells it the same way (``tests/test_cli_options.py`` walks all parsers and fails
on a concept spelled two ways):

============================  =====================================================================
``--output`` / ``-o``         every output folder or file
``--data-root``               the dataset folder (raw for ``prepare``, prepared or raw for the others)
``--no-progress``             hide progress bars
``--roi-size``                sliding-window (or export test input) spatial size
``--sw-batch-size``           slices (2D) or windows (3D) per network call at inference
``--batch-size``              training batch size (``train`` only)
``--device``                  ``auto``, ``cpu``, ``cuda`` or ``cuda:N``
``--overwrite``               replace existing outputs
============================  =====================================================================

Spellings of earlier releases (``--out``, ``--raw-root``, ``--disable-progress-bar``, ``--roi``, ``--batch-size`` of
``infer``/``evaluate``, ``--save-nifti``) still parse for one release as hidden aliases that print a deprecation note.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["name_lines", "dataset_help", "deprecated_alias", "add_output", "add_no_progress", "add_device", "add_sw_batch_size", "positive",
           "fraction", "check_required_aliases"]


def positive(text: str) -> int:
    """argparse type: an integer >= 1."""
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return v


def fraction(text: str) -> float:
    """argparse type: a float in [0, 1)."""
    v = float(text)
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return v


class _Deprecated(argparse.Action):
    """Stores like the new option and prints one deprecation line naming the new spelling."""

    def __init__(self, option_strings, dest, new: str = "", flag: bool = False, **kwargs: Any):
        self.new, self.flag = new, flag
        if flag:
            kwargs["nargs"] = 0
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog}: note: {option_string} is deprecated and will be removed; use {self.new}",
              file=sys.stderr)
        setattr(namespace, self.dest, True if self.flag else values)


def deprecated_alias(parser: argparse.ArgumentParser, old: str, new: str, dest: str, *, flag: bool = False,
                     **kwargs: Any) -> None:
    """Add ``old`` as a hidden spelling of the option ``new`` (same ``dest``), shown in no help text."""
    parser.add_argument(old, dest=dest, action=_Deprecated, new=new, flag=flag, default=argparse.SUPPRESS,
                        help=argparse.SUPPRESS, **kwargs)


def _mark_required(parser: argparse.ArgumentParser, dest: str, spelling: str) -> None:
    # an option with a hidden alias cannot be argparse-required (the alias would not satisfy it): checked after parsing
    parser.set_defaults(**{dest: None})
    required = getattr(parser, "_resfu_required", [])
    required.append((dest, spelling))
    parser._resfu_required = required  # type: ignore[attr-defined]


def check_required_aliases(parser: argparse.ArgumentParser, namespace: argparse.Namespace) -> None:
    """Fail like argparse when an option marked required through :func:`add_output` was given under no spelling."""
    missing = [s for dest, s in getattr(parser, "_resfu_required", []) if getattr(namespace, dest, None) is None]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)}")


def add_output(parser: argparse.ArgumentParser | Any, help: str, *, required: bool = False, default: Any = None,
               type: Any = None, old: str | None = "--out", owner: argparse.ArgumentParser | None = None) -> None:
    """``-o/--output`` (folder or file), with ``old`` as a hidden alias."""
    kw = {"type": type} if type is not None else {}
    parser.add_argument("-o", "--output", dest="output", default=default, metavar="PATH",
                        help=help + (" (required)" if required else ""), **kw)
    if old:
        deprecated_alias(parser, old, "--output", "output", **kw)
    if required:
        _mark_required(owner or parser, "output", "-o/--output")


def add_no_progress(parser: argparse.ArgumentParser | Any) -> None:
    """``--no-progress`` with the hidden alias ``--disable-progress-bar``."""
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    deprecated_alias(parser, "--disable-progress-bar", "--no-progress", "no_progress", flag=True)


def add_device(parser: argparse.ArgumentParser | Any, default: Any = "auto") -> None:
    """``--device``."""
    parser.add_argument("--device", default=default, metavar="DEV",
                        help="auto (cuda if available), cpu, cuda or cuda:N")


def add_sw_batch_size(parser: argparse.ArgumentParser | Any, old_batch_size: bool = True) -> None:
    """``--sw-batch-size`` (per network call); ``--batch-size`` was its name in ``infer``/``evaluate``."""
    parser.add_argument("--sw-batch-size", type=positive, default=8, metavar="N",
                        help="slices (2D) or windows (3D) per network call")
    if old_batch_size:
        parser.add_argument("--batch-size", dest="sw_batch_size", type=positive, action=_Deprecated,
                            new="--sw-batch-size", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def name_lines(entries: dict[str, str]) -> str:
    """One help line per accepted name (``  name  description``), for names generated from a registry (so the help
    cannot go stale); :class:`resfu_med.cli.HelpFormatter` keeps the lines."""
    width = max(len(n) for n in entries)
    return "\n".join(f"  {n:<{width}}  {d}" for n, d in entries.items())


def dataset_help(text: str) -> str:
    """``text``, then every registered dataset with its one-line description."""
    from resfu_med.data.registry import DATASETS

    return f"{text}:\n" + name_lines({n: e.description for n, e in DATASETS.items()})
