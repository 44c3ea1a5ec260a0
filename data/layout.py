"""The TransUNet on-disk layout that every ``prepare`` writes and every dataset reads.

::

    <root>/train_npz/<case>_slice<ZZZ>.npz     keys image (H, W) float32 normalised, label (H, W) uint8
    <root>/test_vol_h5/<case>.npy.h5           datasets image (Z, H, W) float32, label (Z, H, W) uint8
    <root>/lists/lists_<Name>/train.txt        one slice name per line (``case0005_slice000``)
    <root>/lists/lists_<Name>/<split>_vol.txt  one case per line, for each evaluation split (``test_vol.txt``)
    <root>/meta/<case>.json                    per-case record, written last: its presence marks the case finished
    <root>/dataset.json                        dataset-level record (labels, intensity spec, split, per-case geometry)

Training splits are stored as axial slices, evaluation splits as volumes (docs/datasets.md). Every file is written through
:mod:`resfu_med.atomic`, so an interrupted ``prepare`` never leaves a torn file that looks complete, and cases finished
earlier are skipped on the next run.

Durability (power loss, not only a killed process): a case's slices or volume are written atomically without a
per-file ``fsync``; finished cases are committed in groups (at most every :data:`COMMIT_SECONDS` and at the end): one
:func:`resfu_med.atomic.flush_to_disk`, then their ``meta/<case>.json`` markers. A marker therefore never reaches the
disk before its case's data; a case whose marker was lost (power loss, or a kill before its group was committed) is
redone. ``dataset.json`` and the lists are written (with ``fsync``) after a final flush.
"""

from __future__ import annotations

import io
import json
import fnmatch
import multiprocessing
import os
import sys
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from tqdm import tqdm

from resfu_med.atomic import atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text, flush_to_disk
from resfu_med.errors import InputError

from .plans import case_fingerprint, make_plans, write_plans

__all__ = [
    "CaseSource",
    "PreparedCase",
    "TRAIN_SPLITS",
    "write_prepared",
    "read_dataset_json",
    "is_prepared_root",
    "lists_from_files",
    "slice_name",
    "PREPARED_FORMAT",
]

PREPARED_FORMAT = 1
# Splits stored as 2D slices; every other split (test, val) is stored as volumes.
TRAIN_SPLITS = ("train",)
# Finished cases are flushed to disk and marked in groups at most this far apart: a kill loses at most this much work.
COMMIT_SECONDS = 1.0


@dataclass
class CaseSource:
    """One case to prepare: its output name, split and source files (``extra`` is copied into its meta record)."""

    case: str
    split: str
    image: Path
    label: Path
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class PreparedCase:
    """What a loader returns for one case: normalised image and mapped label ``(Z, H, W)`` plus geometry."""

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]


def slice_name(case: str, z: int) -> str:
    """Name of slice ``z`` of ``case`` in ``train_npz`` and ``train.txt`` (TransUNet: ``case0005_slice000``)."""
    return f"{case}_slice{z:03d}"


def _source_stamp(path: Path) -> list:
    st = path.stat()
    return [str(path), st.st_size, st.st_mtime_ns]


def _case_outputs(root: Path, case: str, split: str, depth: int) -> list[Path]:
    if split in TRAIN_SPLITS:
        return [root / "train_npz" / f"{slice_name(case, z)}.npz" for z in range(depth)]
    return [root / "test_vol_h5" / f"{case}.npy.h5"]


def _is_finished(root: Path, src: CaseSource, settings: dict) -> dict | None:
    meta_path = root / "meta" / f"{src.case}.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return None
    same_source = meta.get("image_stamp") == _source_stamp(src.image) and meta.get("label_stamp") == _source_stamp(src.label)
    # A case prepared with another intensity spec or label map must be redone, not silently mixed in.
    if meta.get("split") != src.split or not same_source or meta.get("settings") != settings:
        return None
    if not all(p.is_file() for p in _case_outputs(root, src.case, src.split, int(meta["shape"][0]))):
        return None
    return meta


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    """``np.savez_compressed`` with a fixed zip timestamp, so preparing the same case twice (or in another process)
    gives byte-identical files."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, arr in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asanyarray(arr), allow_pickle=False)
    return buf.getvalue()


def _write_slices(root: Path, case: str, image: np.ndarray, label: np.ndarray) -> None:
    # durable=False: made durable by the case's group commit, before its marker (module docstring)
    for z in range(image.shape[0]):
        data = _npz_bytes(image=image[z].astype(np.float32), label=label[z].astype(np.uint8))
        atomic_write_bytes(root / "train_npz" / f"{slice_name(case, z)}.npz", data, durable=False)
    # A re-prepared case with fewer slices must not keep stale higher-numbered slices around. Slices are written in
    # order, so any earlier version's slices are numbered contiguously: probe upwards (a glob of the folder per case
    # would make preparing N cases O(N^2)).
    z = image.shape[0]
    while (stale := root / "train_npz" / f"{slice_name(case, z)}.npz").is_file():
        stale.unlink()
        z += 1


def _write_volume(root: Path, case: str, image: np.ndarray, label: np.ndarray) -> None:
    with atomic_path(root / "test_vol_h5" / f"{case}.npy.h5", suffix=".h5", durable=False) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("image", data=image.astype(np.float32), compression="gzip", compression_opts=4)
            f.create_dataset("label", data=label.astype(np.uint8), compression="gzip", compression_opts=4)


def write_prepared(
    root: str | os.PathLike,
    sources: Sequence[CaseSource],
    load_case: Callable[[CaseSource], PreparedCase],
    *,
    info: dict[str, Any],
    list_name: str,
    overwrite: bool = False,
    progress: bool = True,
    num_processes: int = 1,
    continue_on_error: bool = False,
) -> Path:
    """Prepare ``sources`` into the TransUNet layout under ``root`` (idempotent, atomic, resumable).

    Args:
        root: output folder (created).
        sources: the cases and their splits; every split must be non-empty.
        load_case: loads, validates and normalises one case (raises :class:`InputError` naming the bad file).
        info: dataset-level fields for ``dataset.json`` (``dataset``, ``modality``, ``label_names``, ``intensity``...).
        list_name: the list folder suffix, e.g. ``"Synapse"`` for ``lists/lists_Synapse``.
        overwrite: redo cases that are already finished.
        progress: show a tqdm bar.
        num_processes: cases prepared at once, each in its own worker process holding one case at a time (nnU-Net's
            ``-np``); the files are byte-identical to ``num_processes=1``.
        continue_on_error: prepare every other case after a bad one and report all failures at the end; default:
            stop at the first (cases already running finish; nothing is left half-written).

    Returns:
        ``root`` as a Path.

    Raises:
        InputError: an empty split, or a bad case (named by its file; with ``continue_on_error`` every failure in
            one message); finished cases stay intact.
    """
    if int(num_processes) < 1:
        raise ValueError(f"num_processes must be at least 1, got {num_processes}")
    root = Path(root)
    if not sources:
        raise InputError(f"{root}: no cases to prepare")
    splits: dict[str, list[str]] = {}
    for src in sources:
        splits.setdefault(src.split, []).append(src.case)
    root.mkdir(parents=True, exist_ok=True)
    settings = json.loads(json.dumps({"intensity": info.get("intensity"), "label_map": info.get("label_map")}))
    metas: dict[str, dict] = {}
    todo = []
    for i, src in enumerate(sources):
        meta = None if overwrite else _is_finished(root, src, settings)
        if meta is None:
            todo.append(i)
        else:
            metas[src.case] = meta
    _remove_temporaries(root, [sources[i].case for i in todo])
    bar = tqdm(total=len(sources), initial=len(metas), desc=f"prepare {info.get('dataset', '')}", unit="case",
               disable=not progress)
    failed: list[str] = []
    stop = False
    commit = _GroupCommit(root)
    try:
        for i, meta, error in _run_cases(root, sources, todo, load_case, settings, num_processes, lambda: stop):
            bar.update()
            if error is None:
                metas[sources[i].case] = meta
                commit.add(meta)
                continue
            failed.append(error)
            # Without --continue-on-error: start no more cases; those already running finish and are kept.
            stop = stop or not continue_on_error
    finally:
        commit.flush()  # also on Ctrl-C / SIGTERM: the cases received so far are complete; mark them
        bar.close()
    metas = {src.case: metas[src.case] for src in sources if src.case in metas}  # the sources' order, not finishing order
    if failed:
        # No lists or dataset.json: an incomplete preparation must not look finished. The good cases are kept, so a
        # rerun after fixing the bad files only redoes those.
        if not continue_on_error:
            raise InputError(failed[0] + (" (pass --continue-on-error to prepare the other cases)"
                                          if len(sources) > 1 else ""))
        if len(failed) == 1:
            raise InputError(failed[0])
        raise InputError(f"{len(failed)} of {len(sources)} cases failed (the others are prepared): "
                         + "; ".join(failed))
    flush_to_disk(root)  # every marker on disk before dataset.json says the preparation is complete
    list_dir = root / "lists" / f"lists_{list_name}"
    for split, cases in splits.items():
        if split in TRAIN_SPLITS:
            names = [slice_name(c, z) for c in cases for z in range(int(metas[c]["shape"][0]))]
            atomic_write_text(list_dir / f"{split}.txt", "".join(n + "\n" for n in names))
        else:
            atomic_write_text(list_dir / f"{split}_vol.txt", "".join(c + "\n" for c in cases))
    record = {
        "resfu_med_prepared": PREPARED_FORMAT,
        **info,
        "list_dir": f"lists/lists_{list_name}",
        "orientation": "array (Z, Y, X) = NIfTI data (x, y, z).transpose(2, 1, 0); spacing in (sz, sy, sx) mm",
        "split": splits,
        "cases": {c: {k: v for k, v in m.items() if not k.endswith("_stamp") and k not in ("settings", "fingerprint")} for c, m in metas.items()},
    }
    atomic_write_json(root / "dataset.json", record)
    # The plans are made from the training cases only (as nnU-Net's fingerprint): test labels never shape training.
    planned = [m for m in metas.values() if m["split"] in TRAIN_SPLITS] or list(metas.values())
    write_plans(root, make_plans([m.get("fingerprint") or _fingerprint_from_files(root, m) for m in planned],
                                 info.get("label_names"), info.get("modality")))
    return root


def _fingerprint_from_files(root: Path, meta: dict) -> dict:
    """The fingerprint of a case prepared before fingerprints were recorded, read back from its files."""
    case, depth = meta["case"], int(meta["shape"][0])
    if meta["split"] in TRAIN_SPLITS:
        slices = [np.load(root / "train_npz" / f"{slice_name(case, z)}.npz") for z in range(depth)]
        image, label = np.stack([s["image"] for s in slices]), np.stack([s["label"] for s in slices])
    else:
        with h5py.File(root / "test_vol_h5" / f"{case}.npy.h5", "r") as f:
            image, label = f["image"][()], f["label"][()]
    return case_fingerprint(image, label, meta["spacing"])


class _GroupCommit:
    """Marks finished cases in groups: one :func:`flush_to_disk` of their data, then their ``meta/<case>.json``
    markers (module docstring). A group is committed when :data:`COMMIT_SECONDS` have passed since the last one, and
    by :meth:`flush`."""

    def __init__(self, root: Path) -> None:
        self.root, self.pending, self.last = root, [], time.monotonic()

    def add(self, meta: dict) -> None:
        self.pending.append(meta)
        if time.monotonic() - self.last >= COMMIT_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            flush_to_disk(self.root)
            for meta in self.pending:
                # Not fsynced: a marker lost to a power loss only means the case is redone (an unreadable marker
                # counts as missing); the final flush before dataset.json makes all of them durable.
                atomic_write_json(self.root / "meta" / f"{meta['case']}.json", meta, durable=False)
            self.pending = []
        self.last = time.monotonic()


def _remove_temporaries(root: Path, cases: Sequence[str]) -> None:
    """Delete the temporary files a killed run left for ``cases`` (:mod:`resfu_med.atomic` names them
    ``.<file>.<random>.tmp*``); those cases are redone. Each folder is listed once."""
    temporaries = [p for folder in ("train_npz", "test_vol_h5", "meta") if (root / folder).is_dir()
                   for p in (root / folder).iterdir() if p.name.startswith(".") and ".tmp" in p.name]
    for tmp in temporaries:
        if any(fnmatch.fnmatchcase(tmp.name, pattern) for case in cases
               for pattern in (f".{case}_slice*.tmp*", f".{case}.*.tmp*")):
            tmp.unlink(missing_ok=True)


def _prepare_case(root: Path, src: CaseSource, load_case: Callable[[CaseSource], PreparedCase],
                  settings: dict) -> dict:
    """Load, check and write one case's data; returns its meta record. The caller marks the case finished by
    writing the record to ``meta/<case>.json`` after its data is flushed to disk (:class:`_GroupCommit`)."""
    # An earlier version of the case (--overwrite, changed settings or sources) is no longer finished once its files
    # start changing.
    (root / "meta" / f"{src.case}.json").unlink(missing_ok=True)
    case = load_case(src)
    if case.image.shape != case.label.shape or case.image.ndim != 3:
        raise InputError(f"{src.label}: label shape {case.label.shape} differs from image shape {case.image.shape}")
    if src.split in TRAIN_SPLITS:
        _write_slices(root, src.case, case.image, case.label)
    else:
        _write_volume(root, src.case, case.image, case.label)
    meta = {
        "case": src.case,
        "split": src.split,
        "image": str(src.image),
        "label": str(src.label),
        "image_stamp": _source_stamp(src.image),
        "label_stamp": _source_stamp(src.label),
        "shape": list(case.image.shape),
        "spacing": [float(s) for s in case.spacing],
        "affine": np.asarray(case.affine, dtype=np.float64).tolist(),
        "labels_present": sorted(int(v) for v in np.unique(case.label)),
        "fingerprint": case_fingerprint(case.image, case.label, case.spacing),  # plans.json (.plans)
        "settings": settings,
        **src.extra,
    }
    return meta


def _case_error(src: CaseSource, err: Exception) -> str:
    """One line naming the bad case's file."""
    if isinstance(err, InputError):
        return str(err)
    first = str(err).splitlines()[0] if str(err) else ""
    return f"{src.image} (case {src.case}): {type(err).__name__}: {first}"


# The job a forked worker process runs (inherited at fork: the loaders are closures, which cannot be pickled).
_JOB: tuple | None = None


def _worker(i: int) -> tuple[int, dict | None, str | None]:
    root, sources, load_case, settings = _JOB
    try:
        return i, _prepare_case(root, sources[i], load_case, settings), None
    except Exception as err:  # reported by name in the parent
        return i, None, _case_error(sources[i], err)


def worker_threads(num_processes: int) -> int:
    """Intra-op threads of each of ``num_processes`` prepare workers: the cores this process may use, shared out."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, num_processes))


def _limit_threads(threads: int) -> None:
    # A forked worker inherits the parent's torch thread count (all cores): N workers would run N x cores threads and
    # oversubscribe the machine (measured: -np 2 slower than -np 1 on 2 cores). Like nnU-Net's preprocessing
    # workers, each gets its share. torch is only touched when the parent loaded it (MONAI's transforms do).
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


def _run_cases(root: Path, sources: Sequence[CaseSource], todo: list[int], load_case: Callable, settings: dict,
               num_processes: int, stopped: Callable[[], bool]) -> Iterator[tuple[int, dict | None, str | None]]:
    """Prepare ``sources[i]`` for each ``i`` of ``todo``; yields ``(i, meta, None)`` or ``(i, None, error)`` as
    cases finish. With several processes, each worker holds one case at a time. Once ``stopped()`` is true no new
    case starts; the results of the cases already running are still yielded."""
    global _JOB
    if num_processes <= 1 or len(todo) <= 1:
        for i in todo:
            if stopped():
                return
            try:
                yield i, _prepare_case(root, sources[i], load_case, settings), None
            except Exception as err:
                yield i, None, _case_error(sources[i], err)
        return
    _JOB = (root, sources, load_case, settings)
    workers = min(num_processes, len(todo))
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"), initializer=_limit_threads,
                               initargs=(worker_threads(workers),))
    try:
        futures = [pool.submit(_worker, i) for i in todo]
        for fut in as_completed(futures):
            if fut.cancelled():
                continue
            yield fut.result()
            if stopped():
                for other in futures:
                    other.cancel()  # only the ones not yet running
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        _JOB = None


def read_dataset_json(root: str | os.PathLike) -> dict[str, Any] | None:
    """The ``dataset.json`` of a prepared root, or ``None`` when absent (e.g. TransUNet's own release)."""
    path = Path(root) / "dataset.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise InputError(f"{path}: not valid JSON ({err})") from err


def is_prepared_root(root: str | os.PathLike) -> bool:
    """True when ``root`` holds the TransUNet layout: a ``lists`` folder beside ``train_npz`` or ``test_vol_h5``, or
    both data folders without ``lists`` (TransUNet's Synapse download: its lists live in the code repository)."""
    root = Path(root)
    has_train, has_test = (root / "train_npz").is_dir(), (root / "test_vol_h5").is_dir()
    return (has_train and has_test) or ((root / "lists").is_dir() and (has_train or has_test))


def _slice_key(name: str) -> tuple[str, int, str]:
    case, sep, z = name.rpartition("_slice")
    return (case, int(z), name) if sep and z.isdigit() else (name, -1, name)


def lists_from_files(root: str | os.PathLike) -> dict[str, list[str]]:
    """The lists of a TransUNet-layout folder without ``lists/``, built from the files present, sorted.

    Returns:
        ``{"train": slice names of train_npz/*.npz by case then slice number, "test_vol": case names of
        test_vol_h5/*.npy.h5}`` (TransUNet's ``train.txt`` / ``test_vol.txt``); hidden ``.``-files are skipped.
    """
    root = Path(root)
    slices = [p.name[: -len(".npz")] for p in (root / "train_npz").glob("*.npz") if not p.name.startswith(".")]
    volumes = [p.name[: -len(".npy.h5")] for p in (root / "test_vol_h5").glob("*.npy.h5") if not p.name.startswith(".")]
    return {"train": sorted(slices, key=_slice_key), "test_vol": sorted(volumes)}
