"""ACDC cine MRI: the official release, the TransUNet/ReSFU patient split (SPEC §4), ``prepare`` and the dataset.

Raw release (``--raw-root``; either ``database/`` with ``training/``/``testing/`` or a folder of patients)::

    training/patient001/Info.cfg                        "ED: 1", "ES: 12", ...
    training/patient001/patient001_frame01.nii.gz       MRI
    training/patient001/patient001_frame01_gt.nii.gz    0 background, 1 RV, 2 MYO, 3 LV

Each patient gives two cases, its ED and ES frames (``patient001_frame01``, ``patient001_frame12``). Intensities are
normalised per volume (frame) — min–max to [0, 1] by default, z-score optional — and recorded in ``dataset.json``.
Default split: 10 validation and 20 test patients as listed in SPEC §4, the other patients of 001–100 train;
patients above 100 (the official testing set) are left out unless a ``--split-file`` names them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from resfu_med.errors import InputError

from .datasets import PreparedDataset
from .intensity import make_intensity_transform
from .layout import CaseSource, PreparedCase, write_prepared
from .io import spacing_from_affine
from .synapse import check_pair, read_split_file

__all__ = ["ACDC_CLASSES", "ACDC_VAL", "ACDC_TEST", "find_acdc_cases", "prepare_acdc", "ACDCDataset"]

ACDC_CLASSES = ["RV", "MYO", "LV"]
ACDC_VAL = [19, 21, 29, 33, 41, 50, 61, 71, 76, 80]
ACDC_TEST = [2, 3, 8, 9, 12, 14, 17, 24, 42, 48, 49, 53, 55, 64, 67, 79, 81, 88, 92, 95]
_PATIENT_RE = re.compile(r"^patient(\d{3})$")


def _read_info(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise InputError(f"{path}: Info.cfg not found (needed for the ED/ES frames)")
    info = {}
    for line in path.read_text(errors="replace").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info[key.strip()] = value.strip()
    for key in ("ED", "ES"):
        if not info.get(key, "").isdigit():
            raise InputError(f"{path}: missing or non-integer '{key}:' entry")
    return info


def find_acdc_cases(raw_root: str | os.PathLike) -> dict[int, list[tuple[str, Path, Path]]]:
    """Find patients and their ED/ES frames.

    Returns:
        ``{patient_number: [(case, image, label), ...]}`` with ED first.

    Raises:
        InputError: missing folder, no patients, missing Info.cfg/frame/ground-truth file.
    """
    raw_root = Path(raw_root)
    if not raw_root.is_dir():
        raise InputError(f"{raw_root}: folder not found (expected the ACDC release with patientXXX folders)")
    dirs = [p for p in raw_root.iterdir() if p.is_dir() and _PATIENT_RE.match(p.name)]
    for sub in ("training", "testing"):
        if (raw_root / sub).is_dir():
            dirs += [p for p in (raw_root / sub).iterdir() if p.is_dir() and _PATIENT_RE.match(p.name)]
    if not dirs:
        raise InputError(f"{raw_root}: no patientXXX folders (looked in it and in training/, testing/)")
    out: dict[int, list[tuple[str, Path, Path]]] = {}
    for d in sorted(dirs, key=lambda p: p.name):
        info = _read_info(d / "Info.cfg")
        frames = []
        for key in ("ED", "ES"):
            case = f"{d.name}_frame{int(info[key]):02d}"
            img, gt = d / f"{case}.nii.gz", d / f"{case}_gt.nii.gz"
            for f in (img, gt):
                if not f.is_file():
                    raise InputError(f"{f}: file not found ({key} frame named in {d / 'Info.cfg'})")
            if case not in [c for c, _, _ in frames]:  # ED == ES would list one frame twice
                frames.append((case, img, gt))
        out[int(_PATIENT_RE.match(d.name).group(1))] = frames
    return out


def prepare_acdc(
    raw_root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    split_file: str | os.PathLike | None = None,
    mode: str = "minmax",
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Convert the ACDC release into the prepared layout (train slices; val and test volumes).

    Args:
        raw_root: ACDC ``database`` folder (or a folder of patient folders).
        out: output folder.
        split_file: JSON ``{"train": [...], "val": [...], "test": [...]}`` of patients (``patient001`` or ``1``).
        mode: per-volume normalisation, ``"minmax"`` or ``"zscore"``.
        overwrite: redo finished cases.
        progress: show a progress bar.

    Returns:
        The prepared root.

    Raises:
        InputError: bad files/labels or an empty split, naming the file.
    """
    patients = find_acdc_cases(raw_root)
    if split_file is not None:
        split = {k: [int(re.sub(r"\D", "", str(p)) or -1) for p in v] for k, v in read_split_file(split_file).items()}
        origin = str(split_file)
    else:
        split = {"val": ACDC_VAL, "test": ACDC_TEST}
        split["train"] = [p for p in range(1, 101) if p not in ACDC_VAL and p not in ACDC_TEST]
        origin = f"{raw_root} (SPEC §4 ACDC split)"
    sources = []
    for name, members in split.items():
        present = [p for p in members if p in patients]
        if split_file is not None and len(present) != len(members):
            missing = sorted(set(members) - set(present))
            raise InputError(f"{origin}: split '{name}' lists patients not in the release: {missing[:5]}")
        if not present:
            raise InputError(f"{origin}: the '{name}' split is empty (no such patients under {raw_root})")
        for p in present:
            sources += [CaseSource(case, name, img, gt, {"patient": f"patient{p:03d}"}) for case, img, gt in patients[p]]
    spec = {"kind": "mri", "mode": mode}
    norm = make_intensity_transform(spec)

    def load_case(src: CaseSource) -> PreparedCase:
        image, label, affine = check_pair(src.image, src.label, max_label=3)
        return PreparedCase(norm(image), label, affine, spacing_from_affine(affine))

    info = {"dataset": "acdc", "modality": "MRI", "num_classes": 4, "label_names": ACDC_CLASSES, "intensity": spec,
            "source": str(raw_root)}  # fmt: skip
    return write_prepared(out, sources, load_case, info=info, list_name="ACDC", overwrite=overwrite, progress=progress)


class ACDCDataset(PreparedDataset):
    """ACDC split as a MONAI dataset: slices for ``train``, volumes for ``val``/``test``.

    Args:
        root: a prepared ACDC folder, or the raw release (prepared into the cache on first use).
        split: ``"train"``, ``"val"`` or ``"test"``.
        transform: MONAI transform(s) applied after loading.
        progress: progress bar when the raw release is prepared.
        **kw: passed to :class:`~resfu_med.data.datasets.PreparedDataset` (``cache_rate``...).
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", transform: Callable | None = None,
                 progress: bool = True, **kw: Any) -> None:  # fmt: skip
        from .registry import _prepared_root

        super().__init__(_prepared_root("acdc", root, progress), split, transform, **kw)
