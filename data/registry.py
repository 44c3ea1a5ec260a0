"""Dataset names → metadata and MONAI datasets: ``dataset_info``, ``get_dataset`` and the demo-data cache.

Names: ``synapse`` (TransUNet layout, or a raw BTCV release prepared on first use), ``demo`` (the embedded phantoms,
generated on first use), ``acdc`` (prepared, or the raw ACDC release prepared on first use) and ``msd`` (any Medical
Segmentation Decathlon / nnU-Net folder, prepared on first use). Raw folders are prepared into
``$RESFU_MED_HOME/prepared/<name>-<hash of the folder path>`` (default home ``~/.cache/resfu-med``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from resfu_med.errors import InputError
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

__all__ = ["DatasetInfo", "DATASET_NAMES", "dataset_info", "get_dataset", "prepare_dataset", "ensure_demo_data", "resfu_home",
           "prepared_cache_dir"]

#: dataset name → the function preparing its raw release (the demo's phantoms are a raw BTCV-style release).
_PREPARE: dict[str, Callable[..., Path]] = {"synapse": prepare_synapse, "acdc": prepare_acdc, "msd": prepare_msd,
                                            "demo": prepare_synapse}
DATASET_NAMES = tuple(_PREPARE)


def _label_values(name: str, label_map: dict | None, num_classes: int) -> dict[str, list[int] | None]:
    """``label_values``/``raw_label_values`` of :class:`DatasetInfo` from a prepared record's ``label_map``."""
    from .labels import label_values_from_map

    raw = label_values_from_map(label_map, num_classes) if label_map else None
    if raw is None and name in ("synapse", "demo"):
        raw = label_values_from_map(SYNAPSE_LABEL_MAP, num_classes)
    return {"label_values": raw if name == "msd" else None, "raw_label_values": raw}


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


def _check_name(name: str) -> str:
    if name not in DATASET_NAMES:
        raise ValueError(f"dataset must be one of {', '.join(DATASET_NAMES)}; got {name!r}")
    return name


def dataset_info(name: str, root: str | os.PathLike | None = None) -> DatasetInfo:
    """Metadata of dataset ``name``; read from ``root``'s ``dataset.json`` when there is one.

    Args:
        name: ``synapse``, ``acdc``, ``msd`` or ``demo``.
        root: the dataset folder (prepared or raw). Required for ``msd`` (labels come from its ``dataset.json``).

    Raises:
        ValueError: unknown name. InputError: ``msd`` without a readable ``dataset.json``.
    """
    _check_name(name)
    meta = None
    if root is not None and Path(root).is_dir() and not is_prepared_root(root) and not is_acdc_copy(root):
        cached = prepared_cache_dir(name, root)
        if (cached / "dataset.json").is_file():  # a raw folder prepared earlier: its record says what was done
            root = cached
    if root is not None and Path(root).is_dir():
        meta = read_dataset_json(root)
        if meta is not None and "resfu_med_prepared" not in meta:
            if name == "msd":
                return msd_info(root)
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
                           **_label_values(name, meta.get("label_map"), int(meta["num_classes"])))  # fmt: skip
    if name in ("synapse", "demo"):
        return DatasetInfo(name, len(SYNAPSE_CLASSES) + 1, list(SYNAPSE_CLASSES), dict(CT_SPEC), "CT",
                           Path(root) if root is not None else None,
                           **_label_values(name, None, len(SYNAPSE_CLASSES) + 1))  # fmt: skip
    if name == "acdc":
        return DatasetInfo(name, 4, list(ACDC_CLASSES), dict(MRI_SPEC), "MRI", Path(root) if root is not None else None)
    raise InputError(f"{root}: msd needs a folder with a dataset.json (got {root})")


def _prepared_root(name: str, root: str | os.PathLike | None, progress: bool) -> Path:
    """Resolve ``root`` to a prepared folder, preparing a raw release into the cache on first use."""
    if name == "demo" and root is None:
        return ensure_demo_data(progress=progress)
    return prepare_once(name, root, _PREPARE[name], progress, read_as_is=is_acdc_copy if name == "acdc" else None)


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
        ValueError: unknown name. InputError: missing/invalid data or an empty split.
    """
    _check_name(name)
    root = _prepared_root(name, root, progress)
    cls = {"synapse": SynapseDataset, "demo": SynapseDataset, "acdc": ACDCDataset}.get(name, PreparedDataset)
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

    Returns:
        The prepared folder.

    Raises:
        InputError: unknown name, a bad window, a missing ``data_root``/``output``, or bad data (names the file).
    """
    if name not in DATASET_NAMES:
        raise InputError(f"--dataset must be one of {', '.join(DATASET_NAMES)}, got {name!r}")
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
            return prepare_synapse(raw, Path(output) / "prepared", name="demo", overwrite=overwrite, progress=progress)
    if data_root is None:
        raise InputError(f"--data-root is required for --dataset {name}")
    if not Path(data_root).is_dir():
        raise InputError(f"--data-root {data_root}: folder not found")
    out = output if output is not None else prepared_cache_dir(name, data_root)
    common = {"split_file": split_file, "overwrite": overwrite, "progress": progress}
    # The raw release is read-only to us: the output never is, lies inside or contains it (a dataset.json there would
    # be overwritten); a foreign non-empty folder needs --overwrite; the cache folder is ours.
    with output_folder(out, "prepare", inputs=[data_root], overwrite=overwrite, reuse=output is None):
        if name == "synapse":
            ct = {"kind": "ct", "a_min": ct_window[0], "a_max": ct_window[1]}
            return prepare_synapse(data_root, out, intensity=ct, **common)
        if name == "acdc":
            return prepare_acdc(data_root, out, mode=mri_norm or "minmax", **common)
        return prepare_msd(data_root, out, seed=1234 if seed is None else seed, ct_window=tuple(ct_window),
                           mri_mode=mri_norm or "robust", **common)
