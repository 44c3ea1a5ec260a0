"""ACDC cine MRI: the official release, the TransUNet/ReSFU patient split (docs/datasets.md), ``prepare`` and the dataset.

Raw release (``--raw-root``; either ``database/`` with ``training/``/``testing/`` or a folder of patients)::

    training/patient001/Info.cfg                        "ED: 1", "ES: 12", ...
    training/patient001/patient001_frame01.nii.gz       MRI
    training/patient001/patient001_frame01_gt.nii.gz    0 background, 1 RV, 2 MYO, 3 LV

Each patient gives two cases, its ED and ES frames (``patient001_frame01``, ``patient001_frame12``). Intensities are
normalised per volume (frame) — min–max to [0, 1] by default, z-score optional — and recorded in ``dataset.json``.
Default split: 10 validation and 20 test patients as listed in docs/datasets.md, the other patients of 001–100 train;
patients above 100 (the official testing set) are left out unless a ``--split-file`` names them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from resfu_med.errors import InputError

from .cache import prepare_once
from .datasets import PreparedDataset
from .intensity import make_intensity_transform
from .layout import CaseSource, PreparedCase, write_prepared
from .io import spacing_from_affine
from .synapse import check_pair, read_split_file

__all__ = ["ACDC_CLASSES", "ACDC_VAL", "ACDC_TEST", "find_acdc_cases", "find_acdc_patients", "patient_frames",
           "prepare_acdc", "ACDCDataset", "is_acdc_copy", "acdc_copy_items"]

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


def find_acdc_patients(raw_root: str | os.PathLike) -> dict[int, Path]:
    """The ``patientXXX`` folders of an ACDC release (in it, and in its ``training/`` and ``testing/``), unvalidated.

    Raises:
        InputError: missing folder or no patient folders.
    """
    raw_root = Path(raw_root)
    if not raw_root.is_dir():
        raise InputError(f"{raw_root}: folder not found (expected the ACDC release with patientXXX folders)")
    dirs = [p for p in raw_root.iterdir() if p.is_dir() and _PATIENT_RE.match(p.name)]
    for sub in ("training", "testing"):
        if (raw_root / sub).is_dir():
            dirs += [p for p in (raw_root / sub).iterdir() if p.is_dir() and _PATIENT_RE.match(p.name)]
    if not dirs:
        if is_acdc_copy(raw_root):
            raise InputError(f"{raw_root}: this is the preprocessed ACDC copy (train/ valid/ test/), which needs no "
                             "prepare: pass it to train/evaluate as --data-root")
        raise InputError(f"{raw_root}: no patientXXX folders (looked in it and in training/, testing/)")
    return {int(_PATIENT_RE.match(d.name).group(1)): d for d in sorted(dirs, key=lambda p: p.name)}


def patient_frames(d: Path, split: str | None = None) -> list[tuple[str, Path, Path]]:
    """The ED and ES frames of one patient folder: ``[(case, image, ground truth), ...]``, ED first.

    Raises:
        InputError: missing Info.cfg, frame or ground-truth file (one line naming the file and, if given, the split
            that needs it).
    """
    info = _read_info(d / "Info.cfg")
    frames: list[tuple[str, Path, Path]] = []
    for key in ("ED", "ES"):
        case = f"{d.name}_frame{int(info[key]):02d}"
        img, gt = d / f"{case}.nii.gz", d / f"{case}_gt.nii.gz"
        if not img.is_file():
            raise InputError(f"{img}: file not found ({key} frame named in {d / 'Info.cfg'})")
        if not gt.is_file():
            used = f", and split '{split}' uses {d.name}" if split else ""
            raise InputError(f"{gt}: no ground truth for the {key} frame{used} (copies of ACDC's testing/ set "
                             "may lack it: leave such patients out of the split)")
        if case not in [c for c, _, _ in frames]:  # ED == ES would list one frame twice
            frames.append((case, img, gt))
    return frames


def find_acdc_cases(raw_root: str | os.PathLike) -> dict[int, list[tuple[str, Path, Path]]]:
    """Find every patient and its ED/ES frames (all validated; ``prepare_acdc`` validates only the split's).

    Returns:
        ``{patient_number: [(case, image, label), ...]}`` with ED first.

    Raises:
        InputError: missing folder, no patients, missing Info.cfg/frame/ground-truth file.
    """
    return {p: patient_frames(d) for p, d in find_acdc_patients(raw_root).items()}


def prepare_acdc(
    raw_root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    split_file: str | os.PathLike | None = None,
    mode: str = "minmax",
    overwrite: bool = False,
    progress: bool = True,
    num_processes: int = 1,
    continue_on_error: bool = False,
) -> Path:
    """Convert the ACDC release into the prepared layout (train slices; val and test volumes).

    Args:
        raw_root: ACDC ``database`` folder (or a folder of patient folders).
        out: output folder.
        split_file: JSON ``{"train": [...], "val": [...], "test": [...]}`` of patients (``patient001`` or ``1``).
        mode: per-volume normalisation, ``"minmax"`` or ``"zscore"``.
        overwrite: redo finished cases.
        progress: show a progress bar.
        num_processes, continue_on_error: see :func:`.layout.write_prepared` (``prepare -np``).

    Returns:
        The prepared root.

    Raises:
        InputError: bad files/labels or an empty split, naming the file.
    """
    patients = find_acdc_patients(raw_root)  # only the patients of the split are validated (testing/ may lack _gt)
    if split_file is not None:
        split = {k: [int(re.sub(r"\D", "", str(p)) or -1) for p in v] for k, v in read_split_file(split_file).items()}
        origin = str(split_file)
    else:
        split = {"val": ACDC_VAL, "test": ACDC_TEST}
        split["train"] = [p for p in range(1, 101) if p not in ACDC_VAL and p not in ACDC_TEST]
        origin = f"{raw_root} (the default ACDC split, docs/datasets.md)"
    sources = []
    for name, members in split.items():
        present = [p for p in members if p in patients]
        if split_file is not None and len(present) != len(members):
            missing = sorted(set(members) - set(present))
            raise InputError(f"{origin}: split '{name}' lists patients not in the release: {missing[:5]}")
        if not present:
            raise InputError(f"{origin}: the '{name}' split is empty (no such patients under {raw_root})")
        for p in present:
            sources += [CaseSource(case, name, img, gt, {"patient": f"patient{p:03d}"})
                        for case, img, gt in patient_frames(patients[p], name)]
    spec = {"kind": "mri", "mode": mode}
    norm = make_intensity_transform(spec)

    def load_case(src: CaseSource) -> PreparedCase:
        image, label, affine = check_pair(src.image, src.label, max_label=3)
        return PreparedCase(norm(image), label, affine, spacing_from_affine(affine))

    info = {"dataset": "acdc", "modality": "MRI", "num_classes": 4, "label_names": ACDC_CLASSES, "intensity": spec,
            "source": str(raw_root)}  # fmt: skip
    return write_prepared(out, sources, load_case, info=info, list_name="ACDC", overwrite=overwrite, progress=progress,
                          num_processes=num_processes, continue_on_error=continue_on_error)


# The preprocessed ACDC copy of TransUNet follow-ups (MISSFormer, Swin-Unet, CASCADE... ``ACDCdataset``): slices
# <root>/{train,valid}/case_001_sliceED_0.npz and volumes <root>/test/case_002_volume_ED.npz, keys "img" and "label",
# lists lists_ACDC/{train,valid,test}.txt of file names. Its "valid" folder holds slices: they are stacked into volumes.
COPY_FOLDERS = {"train": "train", "val": "valid", "test": "test"}
_COPY_SLICE_RE = re.compile(r"^(case_\d+)_slice(ED|ES)_(\d+)\.npz$")
_COPY_VOLUME_RE = re.compile(r"^(case_\d+)_volume_(ED|ES)\.npz$")


def is_acdc_copy(root: str | os.PathLike) -> bool:
    """True when ``root`` holds the follow-ups' preprocessed ACDC copy (``train/`` with ``case_XXX_sliceED_N.npz``)."""
    train = Path(root) / "train"
    return train.is_dir() and any(_COPY_SLICE_RE.match(p.name) for p in train.glob("case_*_slice*.npz"))


def _copy_names(root: Path, folder: str) -> list[str]:
    """File names of one copy folder: the user's ``lists/lists_ACDC/<folder>.txt`` if present, else the files present
    (natural order: case, phase, slice number)."""
    listed = root / "lists" / "lists_ACDC" / f"{folder}.txt"
    if listed.is_file():
        from .datasets import read_list

        return [n if n.endswith(".npz") else f"{n}.npz" for n in read_list(listed)]
    if not (root / folder).is_dir():
        raise InputError(f"{root / folder}: folder not found (the ACDC copy has train/, valid/, test/)")

    def key(name: str) -> tuple:
        m = _COPY_SLICE_RE.match(name)
        return (m.group(1), m.group(2), int(m.group(3))) if m else (name, "", -1)

    return sorted((p.name for p in (root / folder).glob("case_*.npz")), key=key)


def acdc_copy_items(root: str | os.PathLike, split: str, volumes: bool = False) -> list[dict[str, Any]]:
    """Items of :class:`~resfu_med.data.datasets.PreparedDataset` for one split of the ACDC copy.

    ``train``: one slice item per file of ``train/`` (or, with ``volumes``, the slices of each case and phase stacked
    in slice order); ``val``: the slices of ``valid/`` stacked into ``case_XXX_ED``/``_ES`` volumes; ``test``: the
    volumes of ``test/``. Case names are ``case_XXX_ED`` / ``case_XXX_ES``.

    Raises:
        InputError: an unknown split, a missing folder or listed file, a file name outside the copy's patterns, or a
            case whose slices are not numbered ``0..Z-1``.
    """
    root = Path(root)
    if split not in COPY_FOLDERS:
        raise InputError(f"{root}: the ACDC copy has the splits {', '.join(COPY_FOLDERS)}; got '{split}'")
    folder = COPY_FOLDERS[split]
    names = _copy_names(root, folder)
    if split == "test":
        items = []
        for n in names:
            m = _COPY_VOLUME_RE.match(n)
            if m is None:
                raise InputError(f"{root / folder / n}: not a volume of the ACDC copy (case_XXX_volume_ED.npz)")
            items.append({"path": str(root / folder / n), "case": f"{m.group(1)}_{m.group(2)}", "kind": "volume",
                          "spacing": None, "affine": None})  # fmt: skip
        return items
    by_case: dict[str, dict[int, str]] = {}
    for n in names:
        m = _COPY_SLICE_RE.match(n)
        if m is None:
            raise InputError(f"{root / folder / n}: not a slice of the ACDC copy (case_XXX_sliceED_N.npz)")
        path = root / folder / n
        if not path.is_file():
            raise InputError(f"{path}: listed but missing")
        by_case.setdefault(f"{m.group(1)}_{m.group(2)}", {})[int(m.group(3))] = str(path)
    if split == "train" and not volumes:
        return [{"path": p, "case": case, "kind": "slice"} for case, slices in by_case.items() for p in slices.values()]
    items = []
    for case, slices in by_case.items():
        if sorted(slices) != list(range(len(slices))):
            raise InputError(f"{root / folder}: case {case} has slices {sorted(slices)[:12]}, not 0..{len(slices) - 1}; "
                             "cannot stack a volume")
        items.append({"paths": [slices[z] for z in range(len(slices))], "case": case, "kind": "stack"})
    return items


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
        super().__init__(prepare_once("acdc", root, prepare_acdc, progress, read_as_is=is_acdc_copy), split, transform, **kw)

    def _items_as_is(self, split: str, volumes: bool) -> list[dict[str, Any]] | None:
        """The follow-ups' preprocessed ACDC copy is read as it is."""
        return acdc_copy_items(self.root, split, volumes) if is_acdc_copy(self.root) else None
