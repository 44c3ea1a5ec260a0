"""Dataset names → metadata and MONAI datasets: ``dataset_info``, ``get_dataset`` and the demo-data cache.

Each dataset is one entry of :data:`DATASETS`, registered with :func:`register_dataset` on the function giving its
metadata when no prepared record says otherwise; the entry holds, in one place, its one-line description (shown by
``resfu-med train --help``), how a raw release is prepared and read, and its label conventions.

Names: ``synapse`` (TransUNet layout, or a raw BTCV release prepared on first use), ``acdc`` (prepared, or the raw ACDC
release prepared on first use), ``msd`` (any Medical Segmentation Decathlon / nnU-Net folder, prepared on first use)
and ``demo`` (the embedded phantoms, generated on first use). Raw folders are prepared into
``$RESFU_MED_HOME/prepared/<name>-<hash of the folder path>`` (default home ``~/.cache/resfu-med``). An unknown name is
an :class:`~resfu_med.errors.InputError` with a did-you-mean.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from resfu_med.errors import InputError, look_up
from resfu_med.home import resfu_home
from resfu_med.outputs import output_folder

from .acdc import ACDC_CLASSES, ACDCDataset, is_acdc_copy, prepare_acdc
from .cache import locked, prepare_once, prepared_cache_dir
from .datasets import PreparedDataset, SynapseDataset
from .info import DatasetInfo
from .intensity import CT_SPEC, MRI_SPEC
from .layout import is_prepared_root, read_dataset_json
from .msd import msd_info, prepare_msd
from .synapse import SYNAPSE_CLASSES, SYNAPSE_LABEL_MAP, prepare_synapse

__all__ = ["DatasetInfo", "DatasetEntry", "DATASETS", "DATASET_NAMES", "register_dataset", "dataset_entry",
           "dataset_names", "dataset_info", "get_dataset", "prepare_dataset", "ensure_demo_data", "resfu_home",
           "prepared_cache_dir"]


@dataclasses.dataclass(frozen=True)
class DatasetEntry:
    """One registered dataset.

    Attributes:
        name: the dataset name (``--dataset``, ``data.dataset``).
        description: one line for ``--help``.
        info: ``f(root) -> DatasetInfo``: the metadata when no prepared record is found (``root`` may be ``None``).
        prepare: ``f(raw, out, **options) -> Path`` preparing a raw release into the training layout.
        dataset_class: the MONAI dataset class reading a prepared folder.
        raw_info: ``f(root) -> DatasetInfo`` reading a raw release's own ``dataset.json``, or ``None``.
        read_as_is: ``f(root) -> bool``: a folder already in the training layout (read without preparing), or ``None``.
        raw_label_map: the raw release's label values when its records give none (Synapse's BTCV numbering).
        writes_raw_labels: ``infer``/``evaluate`` write the raw label values (MSD) instead of class indices.
        prepare_options: ``f(ct_window, mri_norm, seed) -> kwargs`` of ``prepare`` for ``resfu-med prepare``.
    """

    name: str
    description: str
    info: Callable[[Path | None], DatasetInfo]
    prepare: Callable[..., Path]
    dataset_class: type = PreparedDataset
    raw_info: Callable[[Any], DatasetInfo] | None = None
    read_as_is: Callable[[Any], bool] | None = None
    raw_label_map: Mapping[Any, Any] | None = None
    writes_raw_labels: bool = False
    prepare_options: Callable[[tuple[float, float], str | None, int | None], dict[str, Any]] = lambda w, m, s: {}


#: name → entry, in registration order. Use :func:`register_dataset` to add to it.
DATASETS: dict[str, DatasetEntry] = {}


def register_dataset(name: str, description: str, **entry: Any) -> Callable[[Callable], Callable]:
    """Decorator registering dataset ``name`` on its metadata function ``info(root) -> DatasetInfo`` (see
    :class:`DatasetEntry` for the other fields, ``prepare`` required)."""

    def decorate(info: Callable[[Path | None], DatasetInfo]) -> Callable[[Path | None], DatasetInfo]:
        DATASETS[name] = DatasetEntry(name, description, info, **entry)
        return info

    return decorate


def dataset_entry(name: Any) -> DatasetEntry:
    """The entry of ``name``.

    Raises:
        InputError (a ``ValueError``): unknown name, with a did-you-mean and the valid names.
    """
    return look_up(name, DATASETS, "dataset")


def dataset_names() -> tuple[str, ...]:
    """The registered dataset names."""
    return tuple(DATASETS)


def _ct_options(window: tuple[float, float], mri_norm: str | None, seed: int | None) -> dict[str, Any]:
    return {"intensity": {"kind": "ct", "a_min": window[0], "a_max": window[1]}}


def _synapse_info(name: str, root: Path | None) -> DatasetInfo:
    return DatasetInfo(name, len(SYNAPSE_CLASSES) + 1, list(SYNAPSE_CLASSES), dict(CT_SPEC), "CT", root,
                       **_label_values(DATASETS[name], None, len(SYNAPSE_CLASSES) + 1))


@register_dataset("synapse", "Synapse multi-organ abdominal CT (BTCV), 8 organs; TransUNet layout or the raw release",
                  prepare=prepare_synapse, dataset_class=SynapseDataset, raw_label_map=SYNAPSE_LABEL_MAP,
                  prepare_options=_ct_options)
def _synapse(root: Path | None) -> DatasetInfo:
    return _synapse_info("synapse", root)


@register_dataset("acdc", "ACDC cardiac cine MRI: RV, myocardium, LV", prepare=prepare_acdc,
                  dataset_class=ACDCDataset, read_as_is=is_acdc_copy,
                  prepare_options=lambda w, mri_norm, s: {"mode": mri_norm or "minmax"})
def _acdc(root: Path | None) -> DatasetInfo:
    return DatasetInfo("acdc", 4, list(ACDC_CLASSES), dict(MRI_SPEC), "MRI", root)


@register_dataset("msd", "any Medical Segmentation Decathlon / nnU-Net folder (labels from its dataset.json)",
                  prepare=prepare_msd, raw_info=msd_info, writes_raw_labels=True,
                  prepare_options=lambda w, mri_norm, seed: {"seed": 1234 if seed is None else seed,
                                                             "ct_window": tuple(w), "mri_mode": mri_norm or "robust"})
def _msd(root: Path | None) -> DatasetInfo:
    raise InputError(f"{root}: msd needs a folder with a dataset.json (got {root})")


@register_dataset("demo", "generated abdominal phantoms (Synapse labels), created on first use; needs no data",
                  prepare=prepare_synapse, dataset_class=SynapseDataset, raw_label_map=SYNAPSE_LABEL_MAP,
                  prepare_options=_ct_options)
def _demo(root: Path | None) -> DatasetInfo:
    return _synapse_info("demo", root)


#: The built-in names (:func:`dataset_names` also lists names registered later).
DATASET_NAMES = dataset_names()


def _label_values(entry: DatasetEntry, label_map: dict | None, num_classes: int) -> dict[str, list[int] | None]:
    """``label_values``/``raw_label_values`` of :class:`DatasetInfo` from a prepared record's ``label_map``."""
    from .labels import label_values_from_map

    raw = label_values_from_map(label_map, num_classes) if label_map else None
    if raw is None and entry.raw_label_map is not None:
        raw = label_values_from_map(dict(entry.raw_label_map), num_classes)
    return {"label_values": raw if entry.writes_raw_labels else None, "raw_label_values": raw}


def ensure_demo_data(home: str | os.PathLike | None = None, progress: bool = False) -> Path:
    """Generate the demo phantoms and prepare them (once; later calls reuse the cache).

    Args:
        home: cache folder (default :func:`resfu_home`).
        progress: show the ``prepare`` progress bar.

    Returns:
        The prepared root (TransUNet layout; ``lists/lists_Synapse``, splits ``train`` and ``test``).
    """
    from .demo import DEMO_SEED, DEMO_VERSION, make_demo_dataset

    base = Path(home).expanduser() if home is not None else resfu_home()
    base = base / f"demo-v{DEMO_VERSION}"
    raw, prepared = base / "raw", base / "prepared"
    with locked(base / ".lock"):
        meta = read_dataset_json(prepared) if (prepared / "dataset.json").is_file() else None
        if meta is not None and meta.get("dataset") == "demo":
            return prepared
        if not (raw / "dataset.json").is_file():  # written last by make_demo_dataset
            make_demo_dataset(raw, seed=DEMO_SEED)
        prepare_synapse(raw, prepared, name="demo", progress=progress)
    return prepared


def dataset_info(name: str, root: str | os.PathLike | None = None) -> DatasetInfo:
    """Metadata of dataset ``name``; read from ``root``'s ``dataset.json`` when there is one.

    Args:
        name: ``synapse``, ``acdc``, ``msd`` or ``demo``.
        root: the dataset folder (prepared or raw). Required for ``msd`` (labels come from its ``dataset.json``).

    Raises:
        InputError: unknown name; ``msd`` without a readable ``dataset.json``.
    """
    entry = dataset_entry(name)
    meta = None
    if root is not None and Path(root).is_dir() and not is_prepared_root(root) and not is_acdc_copy(root):
        cached = prepared_cache_dir(name, root)
        if (cached / "dataset.json").is_file():  # a raw folder prepared earlier: its record says what was done
            root = cached
    if root is not None and Path(root).is_dir():
        meta = read_dataset_json(root)
        if meta is not None and "resfu_med_prepared" not in meta:
            if entry.raw_info is not None:
                return entry.raw_info(root)
            names = meta.get("label_names") if is_prepared_root(root) else None
            meta = None  # a raw release's own dataset.json (the demo's split record) is not a prepared record
            if isinstance(names, list) and names and all(isinstance(n, str) and n for n in names):
                # a TransUNet-layout copy labelled in another order, described by the user's {"label_names": [...]}
                base = dataset_info(name)
                return DatasetInfo(name, len(names) + 1, [str(n) for n in names], base.intensity, base.modality, Path(root))
    if meta is not None:
        ignore = meta.get("ignore_index")
        return DatasetInfo(name, int(meta["num_classes"]), list(meta["label_names"]), dict(meta["intensity"]),
                           meta.get("modality", "CT"), Path(root), None if ignore is None else int(ignore),
                           **_label_values(entry, meta.get("label_map"), int(meta["num_classes"])))  # fmt: skip
    return entry.info(Path(root) if root is not None else None)


def _prepared_root(name: str, root: str | os.PathLike | None, progress: bool) -> Path:
    """Resolve ``root`` to a prepared folder, preparing a raw release into the cache on first use."""
    if name == "demo" and root is None:
        return ensure_demo_data(progress=progress)
    entry = dataset_entry(name)
    return prepare_once(name, root, entry.prepare, progress, read_as_is=entry.read_as_is)


def get_dataset(
    name: str,
    root: str | os.PathLike | None,
    split: str,
    transform: Callable | None = None,
    *,
    cache_rate: float = 0.0,
    progress: bool = True,
    volumes: bool = False,
):
    """A MONAI dataset of one split (slices for ``train``, volumes for ``test``/``val``; see :mod:`.datasets`).

    Args:
        name: ``synapse``, ``acdc``, ``msd`` or ``demo``.
        root: prepared folder, or a raw release (prepared into the cache on first use); ``None`` for ``demo``.
        split: ``train``, ``test`` or (ACDC, split files) ``val``.
        transform: MONAI transform(s) applied after loading (e.g. :func:`get_transforms`).
        cache_rate: fraction of loaded items cached in memory (``CacheDataset``).
        progress: progress bar when a raw release has to be prepared first.
        volumes: training split as whole volumes (its slices stacked per case), for 3D patch training.

    Raises:
        InputError: unknown name, missing/invalid data or an empty split.
    """
    cls = dataset_entry(name).dataset_class
    root = _prepared_root(name, root, progress)
    return cls(root, split, transform, cache_rate=cache_rate, volumes=volumes)


def prepare_dataset(
    name: str,
    data_root: str | os.PathLike | None = None,
    output: str | os.PathLike | None = None,
    *,
    split_file: str | os.PathLike | None = None,
    seed: int | None = None,
    ct_window: tuple[float, float] = (-125.0, 275.0),
    mri_norm: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    num_processes: int = 1,
    continue_on_error: bool = False,
) -> Path:
    """``resfu-med prepare``: convert a raw release (or the demo phantoms) into the TransUNet training layout.

    Args:
        name: a dataset name (:data:`DATASET_NAMES`).
        data_root: the raw release (not for ``demo``).
        output: the prepared folder; default the cache (:func:`prepared_cache_dir`), which ``get_dataset`` on the
            raw folder reuses; for ``demo`` the default is the demo cache, else ``<output>/raw`` + ``prepared``.
        split_file: JSON ``{"train": [cases], "test": [cases], ...}`` overriding the default split.
        seed: ``demo``: the phantom seed (default the fixed demo seed); ``msd``: the split seed (default 1234).
        ct_window: CT HU window clipped and scaled to [0, 1] (synapse, MSD CT).
        mri_norm: per-volume MRI normalisation, ``minmax``, ``zscore`` or ``robust`` (:mod:`.intensity`); default
            ``minmax`` for acdc, ``robust`` for MSD MRI.
        overwrite: redo cases that are already prepared.
        progress: show a progress bar.
        num_processes: cases prepared in parallel worker processes, one case each at a time (``-np``); the output
            is byte-identical to one process.
        continue_on_error: prepare the other cases after a bad one and list every failure at the end.

    Returns:
        The prepared folder.

    Raises:
        InputError: unknown name, a bad window, a missing ``data_root``/``output``, or bad data (names the file).
    """
    entry = dataset_entry(name)
    if ct_window[1] <= ct_window[0]:
        raise InputError(f"--ct-window: A_MAX must exceed A_MIN, got {list(ct_window)}")
    if name == "demo":
        if output is None and seed is None:
            return ensure_demo_data(progress=progress)
        if output is None:
            raise InputError("--output is required with --seed for the demo")
        from .demo import DEMO_SEED, make_demo_dataset

        with output_folder(output, "prepare", overwrite=overwrite):
            raw = Path(output) / "raw"
            if overwrite or not (raw / "dataset.json").is_file():
                make_demo_dataset(raw, seed=DEMO_SEED if seed is None else seed)
            return prepare_synapse(raw, Path(output) / "prepared", name="demo", overwrite=overwrite, progress=progress,
                                   num_processes=num_processes, continue_on_error=continue_on_error)
    if data_root is None:
        raise InputError(f"--data-root is required for --dataset {name}")
    if not Path(data_root).is_dir():
        raise InputError(f"--data-root {data_root}: folder not found")
    out = output if output is not None else prepared_cache_dir(name, data_root)
    common = {"split_file": split_file, "overwrite": overwrite, "progress": progress, "num_processes": num_processes,
              "continue_on_error": continue_on_error}
    # The raw release is read-only to us: the output never is, lies inside or contains it (a dataset.json there would
    # be overwritten); a foreign non-empty folder needs --overwrite; the cache folder is ours.
    with output_folder(out, "prepare", inputs=[data_root], overwrite=overwrite, reuse=output is None):
        return entry.prepare(data_root, out, **entry.prepare_options(tuple(ct_window), mri_norm, seed), **common)
