"""Files are data, never code: checks on values read from checkpoints, bundles, configs and dataset lists.

MONAI's ``ConfigParser`` evaluates strings that start with ``$`` (Python expressions), resolves ``@`` (references)
and ``%`` (macros), and instantiates any mapping with a ``_target_`` key. A checkpoint or bundle shared by someone
else is therefore checked here, as plain data, before any of its values reaches ``ConfigParser``, ``eval``-like code
or a constructor:

* :func:`check_plain_data`: numbers, booleans, ``None``, strings that MONAI would not evaluate, lists and
  dicts (string keys, none of MONAI's ``_target_``-style keys) of those; the error names the dotted path of the value.
* :func:`check_kwargs`: every key is an argument of the constructor (the model registry's ``accepted_keys``).
* :func:`check_case_name` / :func:`check_inside`: names read from list files cannot leave the folders the user named.

Every check raises ``error`` (default :class:`~resfu_med.errors.InputError`) with one line
``<source>: config value <path> is an expression; refusing``.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

from resfu_med.errors import InputError

__all__ = [
    "EVALUATED_PREFIXES",
    "check_plain_data",
    "check_kwargs",
    "check_case_name",
    "check_inside",
]

#: Leading characters that make MONAI's ConfigParser evaluate or resolve a string: what each one means to it.
EVALUATED_PREFIXES = {"$": "an expression", "@": "a reference", "%": "a macro"}


def _join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def check_plain_data(value: Any, source: str, where: str = "", *, error: type[Exception] = InputError,
                     what: str = "config value") -> Any:
    """Check that ``value`` is plain data MONAI's ``ConfigParser`` would not evaluate, resolve or instantiate.

    Args:
        value: the value (nested lists and dicts are walked).
        source: the file it came from, first word of the error.
        where: dotted path of ``value`` inside the file (``model.kwargs``).
        error: the exception class to raise.
        what: how the error names the value.

    Returns:
        ``value`` unchanged.

    Raises:
        error: a string starting with ``$``/``@``/``%``, a key such as ``_target_``, a non-string key, or an object
            that is not plain data; the message names the dotted path.
    """
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        kind = EVALUATED_PREFIXES.get(value[:1])
        if kind is not None:
            raise error(f"{source}: {what} {where or '<top level>'} is {kind} ({value[:40]!r}); refusing")
        return value
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_plain_data(item, source, _join(where, i), error=error, what=what)
        return value
    if isinstance(value, dict):
        for key, item in value.items():
            path = _join(where, key)
            if not isinstance(key, str):
                raise error(f"{source}: {what} {path} has a non-string key ({type(key).__name__}); refusing")
            if key[:1] in EVALUATED_PREFIXES or (len(key) > 1 and key.startswith("_") and key.endswith("_")):
                raise error(f"{source}: {what} {path} is a MONAI config directive (it could run code); refusing")
            check_plain_data(item, source, path, error=error, what=what)
        return value
    raise error(f"{source}: {what} {where or '<top level>'} is a {type(value).__name__} object, not plain data; "
                "refusing")


def check_kwargs(kwargs: Any, accepted: Collection[str] | None, owner: str, source: str,
                 where: str = "model.kwargs", *, error: type[Exception] = InputError) -> dict[str, Any]:
    """Check ``kwargs`` is a plain-data dict whose keys are all in ``accepted`` (a constructor's arguments, e.g.
    :attr:`resfu_med.networks.ModelSpec.accepted_keys`; ``None``: any key).

    Raises:
        error: not a dict, a key ``owner`` does not accept (the accepted ones are listed), or a value that is not
            plain data (:func:`check_plain_data`).
    """
    if not isinstance(kwargs, dict):
        raise error(f"{source}: config value {where} must be a mapping of arguments, got {type(kwargs).__name__}")
    check_plain_data(kwargs, source, where, error=error)
    if accepted is not None:
        for key in kwargs:
            if key not in accepted:
                raise error(f"{source}: config value {_join(where, key)} is not an argument of {owner} "
                            f"(accepted: {', '.join(sorted(accepted))}); refusing")
    return kwargs


def check_case_name(name: Any, source: str, *, error: type[Exception] = InputError) -> str:
    """Check that a case name read from a file is one plain file-name stem.

    Refused: empty names, ``.``/``..``, path separators (``/``, ``\\``), absolute or drive paths, control characters.

    Raises:
        error: the message names ``source`` and the case.
    """
    if not isinstance(name, str) or not name.strip():
        raise error(f"{source}: case name {name!r} is empty or not text")
    bad = None
    if name in (".", ".."):
        bad = "is a folder reference"
    elif "/" in name or "\\" in name or os.sep in name or (os.altsep and os.altsep in name):
        bad = "contains a path separator"
    elif any(ord(c) < 32 or ord(c) == 127 for c in name):
        bad = "contains control characters"
    elif Path(name).is_absolute() or (len(name) > 1 and name[1] == ":"):
        bad = "is an absolute path"
    if bad:
        raise error(f"{source}: case name {name!r} {bad}; case names must be plain file names")
    return name


def check_inside(path: str | os.PathLike, folder: str | os.PathLike, source: str, what: str = "path",
                 *, error: type[Exception] = InputError) -> Path:
    """Return ``path`` if it resolves (symlinks followed) inside ``folder``, else raise ``error`` naming ``source``."""
    resolved = Path(folder, path).resolve()
    root = Path(folder).resolve()
    if resolved != root and root not in resolved.parents:
        raise error(f"{source}: {what} {os.fspath(path)!r} resolves outside {os.fspath(folder)}; refusing")
    return Path(folder, path)

