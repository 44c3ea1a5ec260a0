"""Synapse multi-organ CT (BTCV abdomen): label maps, the TransUNet split and ``prepare`` from the raw NIfTI release.

Raw release (``--raw-root``)::

    img/img0001.nii.gz ... img/img0040.nii.gz        CT in HU
    label/label0001.nii.gz ...                        13 organs (see RAW_BTCV_LABELS)
    dataset.json                                      optional: {"split": {"train": [...], "test": [...]}}

``prepare_synapse`` writes the TransUNet layout (:mod:`resfu_med.data.layout`) with cases named ``caseXXXX``.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from resfu_med.errors import InputError

from .intensity import CT_SPEC, make_intensity_transform
from .layout import CaseSource, PreparedCase, write_prepared
from .io import read_image, spacing_from_affine

__all__ = [
    "RAW_BTCV_LABELS",
    "SYNAPSE_LABEL_MAP",
    "SYNAPSE_CLASSES",
    "SYNAPSE_TEST_CASES",
    "prepare_synapse",
    "find_btcv_cases",
    "read_split_file",
    "map_labels",
    "check_pair",
    "grid_offset_mm",
    "GeometryWarning",
]

RAW_BTCV_LABELS = {
    0: "background", 1: "spleen", 2: "right kidney", 3: "left kidney", 4: "gallbladder", 5: "esophagus", 6: "liver",
    7: "stomach", 8: "aorta", 9: "inferior vena cava", 10: "portal and splenic veins", 11: "pancreas",
    12: "right adrenal gland", 13: "left adrenal gland",
}  # fmt: skip
# docs/datasets.md: raw BTCV label -> TransUNet class; all other raw labels -> 0.
SYNAPSE_LABEL_MAP = {8: 1, 4: 2, 3: 3, 2: 4, 6: 5, 11: 6, 1: 7, 7: 8}
SYNAPSE_CLASSES = ["aorta", "gallbladder", "kidney_left", "kidney_right", "liver", "pancreas", "spleen", "stomach"]
SYNAPSE_TEST_CASES = ["case0001", "case0002", "case0003", "case0004", "case0008", "case0022", "case0025", "case0029",
                      "case0032", "case0035", "case0036", "case0038"]  # fmt: skip

_IMG_RE = re.compile(r"^img(\d+)\.nii(\.gz)?$")
_LAB_RE = re.compile(r"^label(\d+)\.nii(\.gz)?$")


def find_btcv_cases(raw_root: str | os.PathLike) -> dict[str, tuple[Path, Path]]:
    """Pair ``img/imgXXXX.nii.gz`` with ``label/labelXXXX.nii.gz`` under ``raw_root``.

    Returns:
        ``{"caseXXXX": (image_path, label_path)}`` sorted by case.

    Raises:
        InputError: a missing folder, no images, or an image without its label (or a label without its image).
    """
    raw_root = Path(raw_root)
    img_dir, lab_dir = raw_root / "img", raw_root / "label"
    if not img_dir.is_dir() and (raw_root / "train_npz").is_dir() and (raw_root / "test_vol_h5").is_dir():
        raise InputError(f"{raw_root}: this is TransUNet's preprocessed release (train_npz/, test_vol_h5/), which needs "
                         "no prepare: pass it to train/evaluate as --data-root")
    for d in (raw_root, img_dir, lab_dir):
        if not d.is_dir():
            raise InputError(f"{d}: folder not found (expected the BTCV release with img/ and label/)")
    images = {f"case{int(m.group(1)):04d}": p for p in img_dir.iterdir() if (m := _IMG_RE.match(p.name))}
    labels = {f"case{int(m.group(1)):04d}": p for p in lab_dir.iterdir() if (m := _LAB_RE.match(p.name))}
    if not images:
        raise InputError(f"{img_dir}: no imgXXXX.nii(.gz) files")
    for case, img in sorted(images.items()):
        if case not in labels:
            raise InputError(f"{img}: no matching label file {lab_dir / img.name.replace('img', 'label', 1)}")
    for case, lab in sorted(labels.items()):
        if case not in images:
            raise InputError(f"{lab}: no matching image file {img_dir / lab.name.replace('label', 'img', 1)}")
    return {c: (images[c], labels[c]) for c in sorted(images)}


def read_split_file(path: str | os.PathLike) -> dict[str, list[str]]:
    """Read a split JSON: ``{"train": [...], "test": [...]}`` or a dataset.json holding such a ``"split"`` key.

    Raises:
        InputError: missing/invalid file or a split that is not a list of names.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: split file not found")
    try:
        obj = json.loads(path.read_text())
    except ValueError as err:
        raise InputError(f"{path}: not valid JSON ({err})") from err
    split = obj.get("split", obj) if isinstance(obj, dict) else None
    if not isinstance(split, dict) or not all(isinstance(v, list) for v in split.values()):
        raise InputError(f"{path}: expected {{\"train\": [cases], \"test\": [cases]}}")
    return {str(k): [str(c) for c in v] for k, v in split.items()}


def _normalise_case_name(name: str) -> str:
    digits = re.sub(r"\D", "", name)
    return f"case{int(digits):04d}" if digits else name


def _assign_splits(cases: list[str], split: dict[str, list[str]] | None, origin: str) -> dict[str, str]:
    if split is None:  # TransUNet: the 12 fixed test cases, everything else trains
        return {c: ("test" if c in SYNAPSE_TEST_CASES else "train") for c in cases}
    assignment = {}
    for name, members in split.items():
        for m in members:
            c = _normalise_case_name(m)
            if c not in cases:
                raise InputError(f"{origin}: split '{name}' lists {m}, which is not in the raw release")
            assignment[c] = name
    return assignment


class GeometryWarning(UserWarning):
    """An image and its label disagree slightly in geometry (header rounding); the image's geometry is used."""


def grid_offset_mm(affine: np.ndarray, other: np.ndarray, shape_xyz: tuple[int, ...]) -> float:
    """Largest distance in mm between the voxel centres that two affines give to the corners of a ``shape_xyz`` grid.

    Both grids are affine, so the largest displacement over the whole volume is reached at one of its 8 corners.
    """
    corners = np.array([[i, j, k, 1.0] for i in (0, shape_xyz[0] - 1) for j in (0, shape_xyz[1] - 1)
                        for k in (0, shape_xyz[2] - 1)]).T  # fmt: skip
    delta = (np.asarray(affine, np.float64) - np.asarray(other, np.float64)) @ corners
    return float(np.sqrt((delta[:3] ** 2).sum(axis=0)).max())


#: Label grids whose voxel centres lie within this fraction of the smallest voxel size of the image's are the same
#: grid written with other rounding (nnU-Net warns rather than fails for these); beyond it they disagree.
GRID_TOLERANCE = 0.5
#: Below this fraction of a voxel the difference is floating-point noise and not worth a warning.
GRID_NOISE = 1e-3


def check_pair(image_path: Path, label_path: Path, *, max_label: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Load an image/label pair (any format of :mod:`.io`) and validate it (same shape and grid, integer labels in ``0..max_label``).

    Grids are compared by where they put the voxels, relative to the voxel size: a label whose voxel centres lie
    within ``GRID_TOLERANCE`` (half) of the image's smallest voxel size everywhere in the volume is
    accepted with a :class:`GeometryWarning` naming the case (differences under ``GRID_NOISE`` of a voxel silently);
    a larger disagreement, or different shapes, is an error.

    Returns:
        ``(image, label, affine)`` with image float32 and label uint8, both ``(Z, Y, X)``; ``affine`` is the image's.

    Raises:
        InputError: naming the offending file.
    """
    image, geometry = read_image(image_path)
    label, lab_geometry = read_image(label_path)
    affine, lab_affine = geometry.affine, lab_geometry.affine
    if image.shape != label.shape:
        raise InputError(f"{label_path}: shape {label.shape[::-1]} differs from image {image_path} {image.shape[::-1]} (x, y, z)")
    voxel = min(spacing_from_affine(affine))
    offset = grid_offset_mm(affine, lab_affine, image.shape[::-1])
    if offset > GRID_TOLERANCE * voxel:
        raise InputError(f"{label_path}: its voxel grid is up to {offset:.3g} mm away from the image's ({image_path}; "
                         f"voxel size {voxel:.3g} mm): the label does not belong to this image's grid")
    if offset > GRID_NOISE * voxel:
        warnings.warn(f"{label_path}: voxel grid differs from the image's by up to {offset:.3g} mm (under half a "
                      f"voxel of {voxel:.3g} mm); using the image's geometry", GeometryWarning, stacklevel=2)
    values = np.unique(label)
    bad = [v for v in values if v != np.round(v) or v < 0 or v > max_label]
    if bad:
        shown = ", ".join(f"{v:g}" for v in bad[:8])
        raise InputError(f"{label_path}: label values outside 0..{max_label}: {shown}")
    return image, label.astype(np.uint8), affine


def map_labels(label: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    """Apply a raw→class lookup (unlisted values → 0) to an integer label array; returns uint8."""
    lut = np.zeros(256, dtype=np.uint8)
    for raw, cls in mapping.items():
        lut[raw] = cls
    return lut[label.astype(np.uint8)]


def prepare_synapse(
    raw_root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    split_file: str | os.PathLike | None = None,
    intensity: dict[str, Any] | None = None,
    name: str = "synapse",
    overwrite: bool = False,
    progress: bool = True,
    num_processes: int = 1,
    continue_on_error: bool = False,
) -> Path:
    """Convert the raw BTCV release into the TransUNet Synapse layout (docs/datasets.md).

    Intensities: HU clipped to [−125, 275] then ``(x + 125) / 400``. Labels: :data:`SYNAPSE_LABEL_MAP`. Split, first
    found: ``split_file``; ``raw_root/dataset.json``'s ``"split"`` (the demo uses this); else TransUNet's 12 test cases
    (:data:`SYNAPSE_TEST_CASES`) with every other case in ``train``.

    Args:
        raw_root: folder with ``img/`` and ``label/``.
        out: output folder.
        split_file: optional JSON split (see :func:`read_split_file`).
        intensity: intensity spec (default :data:`~resfu_med.data.intensity.CT_SPEC`).
        name: dataset name recorded in ``dataset.json`` (``"demo"`` for the phantoms).
        overwrite: redo finished cases.
        progress: show a progress bar.
        num_processes, continue_on_error: see :func:`.layout.write_prepared` (``prepare -np``).

    Returns:
        The prepared root.

    Raises:
        InputError: bad folders/files/labels or an empty split, naming the file.
    """
    raw_root = Path(raw_root)
    pairs = find_btcv_cases(raw_root)
    split = None
    origin = str(split_file)
    if split_file is not None:
        split = read_split_file(split_file)
    elif (raw_root / "dataset.json").is_file():
        meta = json.loads((raw_root / "dataset.json").read_text())
        if isinstance(meta, dict) and "split" in meta:
            split, origin = read_split_file(raw_root / "dataset.json"), str(raw_root / "dataset.json")
    assignment = _assign_splits(list(pairs), split, origin)
    for needed in ("train", "test"):
        if needed not in assignment.values():
            where = origin if split is not None else f"{raw_root} (TransUNet split)"
            raise InputError(f"{where}: the '{needed}' split is empty")
    spec = dict(intensity or CT_SPEC)
    norm = make_intensity_transform(spec)

    def load_case(src: CaseSource) -> PreparedCase:
        image, label, affine = check_pair(src.image, src.label, max_label=max(RAW_BTCV_LABELS))
        return PreparedCase(norm(image), map_labels(label, SYNAPSE_LABEL_MAP), affine, spacing_from_affine(affine))

    sources = [CaseSource(c, assignment[c], *pairs[c]) for c in pairs if c in assignment]
    info = {
        "dataset": name,
        "modality": "CT",
        "num_classes": len(SYNAPSE_CLASSES) + 1,
        "label_names": SYNAPSE_CLASSES,
        "intensity": spec,
        "raw_labels": {str(k): v for k, v in RAW_BTCV_LABELS.items()},
        "label_map": {str(k): v for k, v in SYNAPSE_LABEL_MAP.items()},
        "source": str(raw_root),
    }
    return write_prepared(out, sources, load_case, info=info, list_name="Synapse", overwrite=overwrite, progress=progress,
                          num_processes=num_processes, continue_on_error=continue_on_error)
