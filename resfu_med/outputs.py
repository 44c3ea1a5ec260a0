"""Where a command may write: the one output-folder policy of every resfu-med command.

An output folder is accepted when it is new (or empty), or resfu-med made it for the same command (its marker file
:data:`MARKER` says which), or the user passed ``--overwrite``. It may never be an input folder, lie inside one or
contain one, so no command writes next to the user's raw data. A run that fails before writing anything leaves no
folder behind, and a folder that cannot be written is one line naming it.

    with output_folder(args.output, "infer", inputs=[args.input], overwrite=args.overwrite) as out:
        ...  # write files under out
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from resfu_med.errors import InputError

__all__ = ["MARKER", "claim_output", "claim_output_file", "output_folder", "made_for", "missing_folders",
           "discard_unused"]

#: Hidden file resfu-med writes into each output folder it creates: ``{"command": ..., "version": ...}``.
MARKER = ".resfu-med.json"


def made_for(folder: str | os.PathLike) -> str | None:
    """The command whose output ``folder`` is, by its marker, or ``None``."""
    try:
        return json.loads((Path(folder) / MARKER).read_text(encoding="utf-8")).get("command")
    except (OSError, ValueError, AttributeError):
        return None


def _contains(outer: Path, inner: Path) -> bool:
    return outer == inner or outer in inner.parents


def claim_output(path: str | os.PathLike, command: str, *, inputs: Iterable[str | os.PathLike | None] = (),
                 overwrite: bool = False, reuse: bool = False, option: str = "--output",
                 owned: Callable[[Path], bool] | None = None) -> Path:
    """Check that ``command`` may write into the folder ``path``; nothing is created.

    Args:
        path: the output folder the user named.
        command: the subcommand (``prepare``, ``train``, ``evaluate``, ``infer``, ``export-bundle``).
        inputs: folders or files the command reads (``None`` entries are skipped).
        overwrite: ``--overwrite`` was given: a non-empty folder resfu-med did not make is accepted.
        reuse: accept a non-empty folder anyway (``train --resume`` on a run made by an older resfu-med).
        option: the option name cited in errors.
        owned: for commands that write no marker (``infer``, ``export-bundle``: their folders are shared as they
            are), recognises a file the command itself writes; a folder holding only such files is the command's own.

    Returns:
        ``Path(path)``.

    Raises:
        InputError: ``path`` is, lies inside or contains an input; is a file; or is a non-empty folder resfu-med did
            not make for ``command`` and ``overwrite`` is false; or cannot be created (read-only parent).
    """
    out = Path(path)
    here = out.resolve()
    for source in inputs:
        if source is None:
            continue
        src = Path(source).resolve()
        if src.is_dir() or not src.exists():
            if _contains(src, here):
                where = "is" if src == here else "is inside"
                raise InputError(f"{option} {out} {where} the input folder {source}; outputs never go into an "
                                 "input folder: choose another folder")
        elif src == here:
            raise InputError(f"{option} {out} is the input file {source}; choose another output")
        if here in src.parents:
            raise InputError(f"{option} {out} contains the input {source}; outputs never go into an input "
                             "folder: choose another folder")
    if out.exists() and not out.is_dir():
        raise InputError(f"{option} {out} exists and is not a folder")
    if out.is_dir() and not (overwrite or reuse or made_for(out) == command):
        held = sorted(p.name for p in out.iterdir() if p.name != MARKER and not (owned and owned(p)))
        if held:
            more = f" and {len(held) - 1} more" if len(held) > 1 else ""
            raise InputError(f"{option} {out} already holds {held[0]}{more}, not written by resfu-med {command}; "
                             "choose a new folder or pass --overwrite")
    existing = next(p for p in (out.absolute(), *out.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise InputError(f"{option} {out} is not writable ({existing} is a file, not a folder)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{option} {out} is not writable ({existing} is read-only)")
    return out


def claim_output_file(path: str | os.PathLike, *, inputs: Iterable[str | os.PathLike | None] = (),
                      overwrite: bool = False, option: str = "--output") -> Path:
    """Check that a command may write the single file ``path`` (``resfu-med export``); nothing is created.

    Raises:
        InputError: ``path`` is an input, an existing file without ``overwrite``, a folder, or not writable.
    """
    out = Path(path)
    for source in inputs:
        if source is not None and Path(source).resolve() == out.resolve():
            raise InputError(f"{option} {out} is the input file {source}; choose another output")
    if out.is_dir():
        raise InputError(f"{option} {out} is a folder; name the file to write")
    if out.exists() and not overwrite:
        raise InputError(f"{option} {out} exists; pass --overwrite to replace it")
    existing = next(p for p in out.absolute().parents if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{option} {out} is not writable ({existing} is read-only or a file)")
    return out


def missing_folders(out: str | os.PathLike) -> list[Path]:
    """``out`` and its ancestors that do not exist yet, deepest first (what creating ``out`` will add)."""
    missing = []
    for p in (Path(out).absolute(), *Path(out).absolute().parents):
        if p.exists():
            break
        missing.append(p)
    return missing


def discard_unused(out: str | os.PathLike, created: Iterable[Path], marker: bool = True) -> None:
    """After a failed run: remove ``out``'s marker if nothing else is in it (``marker``), then each folder of
    ``created`` (:func:`missing_folders`, deepest first) that is empty."""
    out = Path(out)
    if marker:
        with contextlib.suppress(OSError):
            if [p.name for p in out.iterdir()] == [MARKER]:
                (out / MARKER).unlink()
    for folder in created:
        with contextlib.suppress(OSError):
            folder.rmdir()  # only succeeds when empty


@contextlib.contextmanager
def output_folder(path: str | os.PathLike, command: str, *, inputs: Iterable[str | os.PathLike | None] = (),
                  overwrite: bool = False, reuse: bool = False, option: str = "--output",
                  owned: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Claim (:func:`claim_output`), create and mark the output folder for the duration of a command.

    If the body fails, the folders this call created are removed again when nothing but the marker is in them, so a
    refused or crashed run leaves no empty folders. An ``OSError`` from a read-only or full disk becomes one
    :class:`InputError` line naming the file.

    The marker (:data:`MARKER`) is written unless ``owned`` recognises the command's files by name instead.

    Yields:
        The output folder.
    """
    out = claim_output(path, command, inputs=inputs, overwrite=overwrite, reuse=reuse, option=option, owned=owned)
    created = missing_folders(out)
    marker = out / MARKER
    had_marker = marker.exists() or owned is not None
    try:
        out.mkdir(parents=True, exist_ok=True)
        if not had_marker:
            from resfu_med import __version__
            from resfu_med.atomic import atomic_write_json

            atomic_write_json(marker, {"command": command, "version": __version__})
        yield out
    except BaseException as err:
        discard_unused(out, created, marker=not had_marker)
        if isinstance(err, OSError) and err.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC,
                                                      errno.EDQUOT):
            name = err.filename or out
            raise InputError(f"{option} {out}: cannot write {name} ({err.strerror})") from None
        raise
