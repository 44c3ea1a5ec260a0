"""User-facing error types.

Every problem a user can cause (bad file, bad argument, mismatched checkpoint) is raised as a :class:`ResfuMedError`
whose message names the file or argument and the problem. The command line prints that message as one line and exits
non-zero; a traceback is shown only with ``--debug``.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any, TypeVar

__all__ = ["ResfuMedError", "InputError", "CheckpointError", "find_user_error", "look_up"]

_V = TypeVar("_V")


class ResfuMedError(Exception):
    """Base class of errors that are the user's to fix; the CLI prints ``str(err)`` without a traceback and exits
    with :attr:`exit_code`."""

    #: the process exit status the command line returns for this error (a stop by signal N uses 128 + N).
    exit_code: int = 2


class InputError(ResfuMedError, ValueError):
    """A data file, folder or argument is missing, unreadable or inconsistent (also a ``ValueError``)."""


class CheckpointError(ResfuMedError, ValueError):
    """A checkpoint is corrupt or belongs to another architecture or class count."""


def find_user_error(err: BaseException) -> ResfuMedError | None:
    """The :class:`ResfuMedError` that caused ``err``, if any, following ``__cause__``/``__context__``.

    MONAI wraps any exception raised inside a transform into ``RuntimeError("applying transform ...")``; the user's
    problem (a corrupt slice named by our loader) is the cause of that wrapper.
    """
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, ResfuMedError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def look_up(name: Any, table: Mapping[str, _V], kind: str) -> _V:
    """``table[name]`` for a registry ``table`` of ``kind`` (``"model"``, ``"upsampler"``, ``"dataset"``), as MONAI's
    ``look_up_option`` but in one line.

    Raises:
        InputError (a ``ValueError``): ``"unknown <kind> 'x' (did you mean 'y'?): choose one of a, b, c"``.
    """
    if isinstance(name, str) and name in table:
        return table[name]
    close = difflib.get_close_matches(str(name), list(table), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise InputError(f"unknown {kind} {name!r}{hint}: choose one of {', '.join(table)}")
