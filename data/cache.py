"""Caches of the data layer: raw releases prepared once, and the memory budget of the training cache.

Raw releases are prepared once into ``$RESFU_MED_HOME/prepared/<name>-<hash of the folder path>`` and reused by the
data registry and by the adapters' dataset classes (``ACDCDataset(raw_folder)``), so both find the same prepared copy.

The training cache (MONAI ``CacheDataset``) is sized by a memory budget (``--cache-gb``; default
:data:`DEFAULT_CACHE_FRACTION` of the memory available when training starts), not by a fixed fraction of the
dataset: the first items that fit are cached, the rest are read from disk each time, so a process's memory is
O(batch + budget) whatever the dataset size.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from resfu_med.errors import InputError
from resfu_med.home import resfu_home

from .layout import is_prepared_root

__all__ = ["prepared_cache_dir", "locked", "prepare_once", "DEFAULT_CACHE_FRACTION", "available_memory",
           "cache_budget", "budget_cache_rate"]

#: Share of the memory available at start that the training cache may use by default (per process).
DEFAULT_CACHE_FRACTION = 0.25
_GB = 1e9


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


def available_memory() -> int:
    """Bytes of memory available to new allocations now (Linux ``MemAvailable``; else free physical pages)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def cache_budget(cache_gb: float | None, available: int | None = None) -> int:
    """The cache budget in bytes: ``cache_gb`` GB, or :data:`DEFAULT_CACHE_FRACTION` of the available memory.

    Raises:
        InputError: ``cache_gb`` is negative or more than the memory available now (one line, before training).
    """
    available = available_memory() if available is None else available
    if cache_gb is None:
        return int(DEFAULT_CACHE_FRACTION * available)
    if cache_gb < 0:
        raise InputError(f"--cache-gb {cache_gb:g}: must be 0 (no cache) or more")
    if cache_gb * _GB > available:
        raise InputError(f"--cache-gb {cache_gb:g}: only {available / _GB:.1f} GB of memory is available now; ask for "
                         f"less (default {DEFAULT_CACHE_FRACTION:.0%} of it, 0 = read every item from disk)")
    return int(cache_gb * _GB)


def _nbytes(obj: Any) -> int:
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v) for v in obj)
    return int(getattr(obj, "nbytes", 0))


def budget_cache_rate(items: Sequence[Any], load: Callable[[Any], Any], budget: int, max_rate: float = 1.0,
                      samples: int = 8) -> tuple[float, int]:
    """The ``cache_rate`` whose cached items fit in ``budget`` bytes: ``(rate, estimated bytes per item)``.

    The size of a loaded item is the mean over up to ``samples`` evenly spaced items (the loading is what the cache
    keeps); ``max_rate`` (the config's ``cache_rate``) caps the rate.
    """
    n = len(items)
    if n == 0 or budget <= 0 or max_rate <= 0:
        return 0.0, 0
    picks = sorted({int(i) for i in np.linspace(0, n - 1, min(samples, n))})
    per_item = max(1, int(np.mean([_nbytes(load(items[i])) for i in picks])))
    fits = min(n, budget // per_item)
    return float(min(max_rate, fits / n)), per_item
