"""Atomic file writes: write to a temporary file in the destination folder, then ``os.replace``.

Two guarantees, and what each costs:

- **Atomic** (every write): a process killed at any moment (SIGKILL, out-of-memory kill, Ctrl-C) leaves either the
  old file or the complete new one under the final name, never a torn file that looks complete. ``os.replace`` alone
  gives this; it costs nothing extra.
- **Durable** (``durable=True``, the default): the new file's data is also on disk (``fsync``) before it gets its
  final name, so a power loss or kernel crash cannot leave a final name pointing at missing data. Each ``fsync`` waits
  for the disk (milliseconds), so it is used for the files a user cannot cheaply recreate: checkpoints, configs,
  histories, predictions, bundles, ``dataset.json`` and lists.

Bulk writers of many small derived files (``prepare``'s slices and volumes) write them with ``durable=False`` and make
them durable in groups with :func:`flush_to_disk` (one call for all files written so far) **before** writing the
marker that says they are complete (``meta/<case>.json``). After a power loss a case is therefore either marked
finished with all its data on disk, or unmarked and redone; never marked with missing data.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_torch_save",
           "flush_to_disk"]


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "", durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced (when ``durable``) and renamed onto ``path``.

    Args:
        path: final destination. Its parent folder is created if missing.
        suffix: suffix for the temporary file (some writers pick the format from it, e.g. ``.nii.gz``).
        durable: ``fsync`` the data before the rename (survives a power loss). ``False`` keeps the write atomic
            against a killed process only; the caller must then call :func:`flush_to_disk` before it records the
            file as complete anywhere (see the module docstring).

    Yields:
        The temporary path to write to. On an exception it is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if durable:
            with open(tmp_path, "rb") as fh:
                os.fsync(fh.fileno())
        # mkstemp creates 0600; give the final file the permissions a plain open() would (shared bundles, outputs).
        os.chmod(tmp_path, 0o666 & ~_current_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes, durable: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (``durable``: see :func:`atomic_path`)."""
    with atomic_path(path, durable=durable) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str, durable: bool = True) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (``durable``: see :func:`atomic_path`)."""
    atomic_write_bytes(path, text.encode("utf-8"), durable=durable)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 2, durable: bool = True) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (``durable``: see :func:`atomic_path`)."""
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n", durable=durable)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` atomically (checkpoints survive a kill during saving)."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _syncfs() -> Any:
    """Linux's ``syncfs(2)`` from the C library (Python's ``os`` has no wrapper), or ``None`` elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None


def flush_to_disk(folder: str | os.PathLike) -> None:
    """Make every file written so far on ``folder``'s file system durable, in one call.

    ``syncfs(2)`` on Linux (one journal commit and disk flush for any number of files, instead of one ``fsync`` each);
    ``os.sync()`` elsewhere. Used by bulk writers that write with ``durable=False`` (see the module docstring).

    Args:
        folder: an existing folder on the file system to flush.

    Raises:
        OSError: the flush failed (the data may not be on disk).
    """
    syncfs = _syncfs()
    if syncfs is None:
        os.sync()
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        if syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs failed: {os.strerror(err)}", str(folder))
    finally:
        os.close(fd)
