"""Medical Segmentation Decathlon / nnU-Net raw folders: any CT or MRI dataset described by a ``dataset.json``.

Accepted layouts::

    MSD:        dataset.json {"modality": {"0": "CT"}, "labels": {"0": "background", "1": "spleen"},
                              "training": [{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}, ...]}
    nnU-Net v2: dataset.json {"channel_names": {"0": "CT"}, "labels": {"background": 0, "spleen": 1},
                              "file_ending": ".nii.gz"}, imagesTr/<case>_0000.nii.gz, labelsTr/<case>.nii.gz

Intensities follow the modality of channel 0: ``CT`` → clip/scale a HU window (default [−125, 275]); anything else
(MRI, T2, ADC...) → z-score over the non-zero voxels after 0.5–99.5 percentile clipping (``robust``, nnU-Net's
choice; per-volume min–max or plain z-score on request, :mod:`~resfu_med.data.intensity`). Labels are renumbered to 0..K−1 in increasing raw value (recorded
as ``label_map``); names come from ``dataset.json``. nnU-Net's ``"ignore"`` label becomes :data:`IGNORE_INDEX`
(excluded from the loss and the scores, never predicted). Split, first found: ``--split-file``; a ``"split"`` entry in
``dataset.json``; else a seeded case-level 80/20 train/test split; a MONAI-style ``"validation"`` list is the ``val``
split. nnU-Net v1 task folders (``dataset.json`` names without ``_0000``) and hidden ``._*`` files are handled as
nnU-Net does. Only single-channel images are supported.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from resfu_med.errors import InputError
from resfu_med.safety import check_inside

from .cache import prepare_once
from .datasets import PreparedDataset
from .info import DatasetInfo
from .intensity import CT_SPEC, MRI_ROBUST_SPEC, make_intensity_transform
from .layout import CaseSource, PreparedCase, write_prepared
from .io import image_stem, spacing_from_affine
from .synapse import check_pair, map_labels, read_split_file

__all__ = ["read_msd", "msd_info", "msd_split", "prepare_msd", "MSDDataset", "IGNORE_INDEX"]


#: Label value that the prepared layout gives nnU-Net's ``"ignore"`` label: excluded from the loss, never predicted,
#: not scored (nnU-Net v2 semantics; ``dataset.json`` records it as ``ignore_index``).
IGNORE_INDEX = 255


def _case_name(path: str) -> str:
    return image_stem(path)


def _image_file(root: Path, listed: str) -> Path:
    """The image of a ``training``/``validation`` entry; nnU-Net v1 task folders list ``case.nii.gz`` while the
    file on disk is the channel-0 file ``case_0000.nii.gz``."""
    path = root / listed
    if path.is_file():
        return path
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            v1 = path.with_name(f"{name[: -len(suffix)]}_0000{suffix}")
            if v1.is_file():
                return v1
    return path


def _entries(meta: dict, key: str, path: Path) -> list[dict]:
    entries = meta.get(key) or []
    if not isinstance(entries, list) or not all(isinstance(e, dict) and "image" in e and "label" in e for e in entries):
        raise InputError(f"{path}: '{key}' must be a list of {{\"image\": ..., \"label\": ...}} entries")
    for i, entry in enumerate(entries):  # no entry may point outside the dataset folder (../, absolute paths)
        for field in ("image", "label"):
            check_inside(str(entry[field]), path.parent, str(path), what=f"entry {key}[{i}].{field}")
    # MSD archives made on macOS carry AppleDouble "._name" files; nnU-Net skips names starting with "."
    return [e for e in entries if not Path(str(e["label"])).name.startswith(".")]


def read_msd(root: str | os.PathLike) -> dict[str, Any]:
    """Parse an MSD/nnU-Net ``dataset.json``.

    Returns:
        ``{"name", "modality" ("CT"/"MRI"), "raw_modality", "labels" {raw value: name} incl. background (and
        ``"ignore"``), "cases" {case: (image, label)} incl. validation cases, "split" or None, "validation" [cases
        of a MONAI-style ``"validation"`` list], "ignore_label" (raw value of nnU-Net's ``"ignore"``) or None}``.

    Raises:
        InputError: missing/invalid ``dataset.json`` or folders, or missing image/label files.
    """
    root = Path(root)
    path = root / "dataset.json"
    if not path.is_file():
        raise InputError(f"{path}: not found (an MSD / nnU-Net folder needs a dataset.json)")
    try:
        meta = json.loads(path.read_text())
    except ValueError as err:
        raise InputError(f"{path}: not valid JSON ({err})") from err
    modalities = meta.get("modality") or meta.get("channel_names") or {}
    if len(modalities) > 1:
        raise InputError(f"{path}: {len(modalities)} input channels; only single-channel datasets are supported")
    raw_mod = str(next(iter(modalities.values()), "CT"))
    labels_raw = meta.get("labels")
    if not isinstance(labels_raw, dict) or not labels_raw:
        raise InputError(f"{path}: missing 'labels'")
    try:
        if all(str(k).lstrip("-").isdigit() for k in labels_raw):  # MSD: {"0": "background"}
            labels = {int(k): str(v) for k, v in labels_raw.items()}
        else:  # nnU-Net v2: {"background": 0}
            labels = {int(v): str(k) for k, v in labels_raw.items()}
    except (TypeError, ValueError) as err:
        raise InputError(f"{path}: 'labels' must map integers to names (region labels are not supported)") from err
    labels.setdefault(0, "background")
    ignore = [v for v, n in labels.items() if n == "ignore"]
    if ignore and ignore[0] != max(labels):  # nnU-Net v2 requires it too: the ignore label is the highest value
        raise InputError(f"{path}: the 'ignore' label ({ignore[0]}) must have the highest label value (nnU-Net rule)")
    cases: dict[str, tuple[Path, Path]] = {}
    validation: list[str] = []
    if "training" in meta:
        for entry in _entries(meta, "training", path):
            cases[_case_name(entry["label"])] = (_image_file(root, entry["image"]), root / entry["label"])
        for entry in _entries(meta, "validation", path):  # a MONAI datalist's validation cases
            case = _case_name(entry["label"])
            cases[case] = (_image_file(root, entry["image"]), root / entry["label"])
            validation.append(case)
    else:
        ending = meta.get("file_ending", ".nii.gz")
        lab_dir = root / "labelsTr"
        if not lab_dir.is_dir():
            raise InputError(f"{lab_dir}: folder not found")
        for lab in sorted(lab_dir.glob(f"*{ending}")):
            if lab.name.startswith("."):  # hidden / AppleDouble files: nnU-Net skips names starting with "."
                continue
            case = lab.name[: -len(ending)]
            cases[case] = (root / "imagesTr" / f"{case}_0000{ending}", lab)
    if not cases:
        raise InputError(f"{path}: no training cases")
    for case, (img, lab) in cases.items():
        for f in (img, lab):
            if not f.is_file():
                raise InputError(f"{f}: file not found (case {case} of {path})")
    split = meta.get("split") if isinstance(meta.get("split"), dict) else None
    return {"name": str(meta.get("name", root.name)), "modality": "CT" if raw_mod.upper() == "CT" else "MRI",
            "raw_modality": raw_mod, "labels": dict(sorted(labels.items())), "cases": dict(sorted(cases.items())),
            "split": split, "validation": validation, "ignore_label": ignore[0] if ignore else None}  # fmt: skip


def _classes(m: dict[str, Any]) -> tuple[list[int], dict[int, int]]:
    """Raw label values of the trained classes (background first, ``"ignore"`` left out) and raw → prepared map."""
    values = [v for v in sorted(m["labels"]) if v != m["ignore_label"]]
    mapping = {v: i for i, v in enumerate(values)}
    if m["ignore_label"] is not None:
        mapping[m["ignore_label"]] = IGNORE_INDEX
    return values, mapping


def msd_split(cases: list[str], seed: int = 1234, test_fraction: float = 0.2) -> dict[str, list[str]]:
    """Seeded case-level split: ``round(test_fraction * n)`` (at least 1) cases to ``test``, the rest ``train``."""
    if len(cases) < 2:
        raise InputError(f"need at least 2 cases to split into train and test, got {len(cases)}")
    order = np.random.default_rng(seed).permutation(len(cases))
    n_test = min(len(cases) - 1, max(1, round(test_fraction * len(cases))))
    test = sorted(cases[i] for i in order[:n_test])
    return {"train": [c for c in cases if c not in test], "test": test}


def msd_info(root: str | os.PathLike):
    """:class:`~resfu_med.data.info.DatasetInfo` of a raw MSD/nnU-Net folder (labels and modality)."""
    m = read_msd(root)
    values, _ = _classes(m)
    names = [m["labels"][v] for v in values[1:]]
    return DatasetInfo("msd", len(names) + 1, names, dict(CT_SPEC if m["modality"] == "CT" else MRI_ROBUST_SPEC), m["modality"],
                       None, IGNORE_INDEX if m["ignore_label"] is not None else None,
                       label_values=list(values), raw_label_values=list(values))  # fmt: skip


def prepare_msd(
    data_root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    split_file: str | os.PathLike | None = None,
    seed: int = 1234,
    ct_window: tuple[float, float] = (-125.0, 275.0),
    mri_mode: str = "robust",
    overwrite: bool = False,
    progress: bool = True,
    num_processes: int = 1,
    continue_on_error: bool = False,
) -> Path:
    """Prepare an MSD/nnU-Net folder into the layout of :mod:`~resfu_med.data.layout` (list folder ``lists_MSD``).

    Args:
        data_root: folder with ``dataset.json``, ``imagesTr/``, ``labelsTr/``.
        out: output folder.
        split_file: JSON ``{"train": [cases], "test": [cases], ("val": [...])}``.
        seed: seed of the default 80/20 split.
        ct_window: HU window for CT.
        mri_mode: ``"robust"`` (default), ``"minmax"`` or ``"zscore"`` for non-CT modalities.
        overwrite: redo finished cases.
        progress: show a progress bar.
        num_processes, continue_on_error: see :func:`.layout.write_prepared` (``prepare -np``).

    Returns:
        The prepared root.

    Raises:
        InputError: bad folders/files/labels or an empty split, naming the file.
    """
    m = read_msd(data_root)
    cases = [c for c in m["cases"] if c not in m["validation"]]
    if split_file is not None:
        split, origin = read_split_file(split_file), str(split_file)
    elif m["split"] is not None:
        split, origin = {k: list(v) for k, v in m["split"].items()}, str(Path(data_root) / "dataset.json")
    else:
        split, origin = msd_split(cases, seed), f"seeded 80/20 split (seed {seed})"
    if m["validation"] and "val" not in split:  # a MONAI datalist's "validation" list is the val split
        split = {**{k: [c for c in v if _case_name(str(c)) not in m["validation"]] for k, v in split.items()},
                 "val": list(m["validation"])}
        origin += " + 'validation' list of dataset.json"
    sources = []
    for name, members in split.items():
        if not members:
            raise InputError(f"{origin}: the '{name}' split is empty")
        for c in members:
            c = _case_name(str(c))
            if c not in m["cases"]:
                raise InputError(f"{origin}: split '{name}' lists {c}, which is not among the training cases")
            sources.append(CaseSource(c, name, *m["cases"][c]))
    if "train" not in split or not any(k != "train" for k in split):
        raise InputError(f"{origin}: needs a 'train' split and an evaluation split ('test' or 'val')")
    spec = ({"kind": "ct", "a_min": float(ct_window[0]), "a_max": float(ct_window[1])} if m["modality"] == "CT"
            else dict(MRI_ROBUST_SPEC) if mri_mode == "robust" else {"kind": "mri", "mode": mri_mode})  # fmt: skip
    norm = make_intensity_transform(spec)
    raw_values, mapping = _classes(m)
    declared = sorted(m["labels"])

    def load_case(src: CaseSource) -> PreparedCase:
        image, label, affine = check_pair(src.image, src.label, max_label=255)
        unknown = sorted(set(np.unique(label).tolist()) - set(declared))
        if unknown:
            raise InputError(f"{src.label}: label values {unknown[:8]} are not declared in dataset.json labels {declared}")
        return PreparedCase(norm(image), map_labels(label, mapping), affine, spacing_from_affine(affine))

    info = {"dataset": "msd", "name": m["name"], "modality": m["modality"], "raw_modality": m["raw_modality"],
            "num_classes": len(raw_values), "label_names": [m["labels"][v] for v in raw_values[1:]],
            "intensity": spec, "label_map": {str(k): v for k, v in mapping.items()}, "source": str(data_root),
            "split_origin": origin}  # fmt: skip
    if m["ignore_label"] is not None:
        info["ignore_index"] = IGNORE_INDEX
    return write_prepared(out, sources, load_case, info=info, list_name="MSD", overwrite=overwrite, progress=progress,
                          num_processes=num_processes, continue_on_error=continue_on_error)


class MSDDataset(PreparedDataset):
    """A split of an MSD/nnU-Net dataset: slices for ``train``, volumes for ``test``/``val``.

    Args:
        root: a prepared folder, or the raw MSD/nnU-Net folder (prepared into the cache on first use).
        split: ``"train"``, ``"test"`` (or ``"val"`` when the split file has one).
        transform: MONAI transform(s) applied after loading.
        progress: progress bar when the raw folder is prepared.
        **kw: passed to :class:`~resfu_med.data.datasets.PreparedDataset`.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", transform: Callable | None = None,
                 progress: bool = True, **kw: Any) -> None:  # fmt: skip
        super().__init__(prepare_once("msd", root, prepare_msd, progress), split, transform, **kw)
