"""Raw releases prepared once into ``$RESFU_MED_HOME/prepared/<name>-<hash of the folder path>`` and reused.

Used by the data registry and by the adapters' dataset classes (``ACDCDataset(raw_folder)``), so both find the same
prepared copy.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from resfu_med.errors import InputError
from resfu_med.home import resfu_home

from .layout import is_prepared_root

__all__ = ["prepared_cache_dir", "locked", "prepare_once"]


def prepared_cache_dir(name: str, raw_root: str | os.PathLike) -> Path:
    """Cache folder for the prepared copy of the raw folder ``raw_root``."""
    digest = hashlib.sha1(str(Path(raw_root).resolve()).encode()).hexdigest()[:10]
    return resfu_home() / "prepared" / f"{name}-{digest}"


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created): several processes (parallel tests, DataLoader workers, two
    trainings) may ask for the same prepared copy at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def prepare_once(name: str, root: str | os.PathLike | None, prepare: Callable[..., Path], progress: bool,
                 read_as_is: Callable[[Path], bool] | None = None) -> Path:
    """``root`` itself when it is prepared (or ``read_as_is(root)`` says the adapter reads it directly); else its
    prepared copy in the cache, made by ``prepare(root, out, progress=progress)`` on first use.

    Raises:
        InputError: no ``root``, or it is not a folder.
    """
    if root is None:
        raise InputError(f"dataset '{name}' needs a data root (--data-root)")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise InputError(f"{root}: dataset folder not found")
    if is_prepared_root(root) or (read_as_is is not None and read_as_is(root)):
        return root
    out = prepared_cache_dir(name, root)
    with locked(out.parent / f".{out.name}.lock"):
        if (out / "dataset.json").is_file():  # prepared before (maybe with non-default options by `prepare`): reuse
            return out
        return prepare(root, out, progress=progress)
