"""Tiny fake raw releases written with nibabel (known values, odd affines), shared by the data tests as fixtures."""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

__all__ = ["odd_affine", "write_nifti", "make_btcv", "fake"]


def odd_affine(theta_deg: float = 17.0, spacing=(0.7, 0.9, 3.0), origin=(10.0, -20.0, 5.0)) -> np.ndarray:
    """A rotated, x/y-flipped, anisotropic affine (like BTCV's LPS-in-RAS headers)."""
    t = math.radians(theta_deg)
    rot = np.array([[math.cos(t), -math.sin(t), 0], [math.sin(t), math.cos(t), 0], [0, 0, 1]])
    a = np.eye(4)
    a[:3, :3] = rot @ np.diag([-spacing[0], -spacing[1], spacing[2]])
    a[:3, 3] = origin
    return a


def write_nifti(path: Path, data_xyz: np.ndarray, affine: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data_xyz, affine), str(path))
    return path


def make_btcv(root: Path, ids=(1, 5, 6), shape=(6, 5, 4), seed: int = 0) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Write ``img/imgXXXX.nii.gz`` + ``label/labelXXXX.nii.gz``; returns ``{id: (hu_xyz, label_xyz, affine)}``."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in ids:
        hu = rng.integers(-1000, 1000, size=shape).astype(np.int16)
        hu.flat[:6] = [-1000, -125, 0, 75, 275, 999]  # window edges and both clips
        lab = rng.integers(0, 14, size=shape).astype(np.uint8)
        lab.flat[:14] = np.arange(14)  # every raw label occurs
        aff = odd_affine(theta_deg=10 + i, spacing=(0.7 + 0.01 * i, 0.9, 3.0))
        write_nifti(root / "img" / f"img{i:04d}.nii.gz", hu, aff)
        write_nifti(root / "label" / f"label{i:04d}.nii.gz", lab, aff)
        out[i] = (hu, lab, aff)
    return out


class _Fakes:
    odd_affine = staticmethod(odd_affine)
    write_nifti = staticmethod(write_nifti)
    make_btcv = staticmethod(make_btcv)


@pytest.fixture()
def fake():
    """The fake-data writers of this module (``fake.make_btcv(root)``...)."""
    return _Fakes


def make_acdc(root: Path, patients=(1, 2, 19), shape=(7, 6, 3), seed: int = 1) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Write ``training/patientXXX/{Info.cfg, patientXXX_frameYY[_gt].nii.gz}``; returns ``{case: (img, gt, affine)}``."""
    rng = np.random.default_rng(seed)
    out = {}
    for p in patients:
        d = root / "training" / f"patient{p:03d}"
        d.mkdir(parents=True, exist_ok=True)
        ed, es = 1, 10 + p % 5
        (d / "Info.cfg").write_text(f"ED: {ed}\nES: {es}\nGroup: DCM\nHeight: 180.0\nNbFrame: 30\nWeight: 80.0\n")
        for f in (ed, es):
            img = rng.uniform(0, 500, size=shape).astype(np.float32)
            gt = rng.integers(0, 4, size=shape).astype(np.uint8)
            aff = odd_affine(theta_deg=-30 + p, spacing=(1.5625, 1.5625, 10.0))
            case = f"patient{p:03d}_frame{f:02d}"
            write_nifti(d / f"{case}.nii.gz", img, aff)
            write_nifti(d / f"{case}_gt.nii.gz", gt, aff)
            out[case] = (img, gt, aff)
    return out


def make_msd(root: Path, n=5, modality="CT", nnunet=False, seed: int = 2) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write an MSD (or nnU-Net v2) folder with labels {0, 1, 3} (a gap: renumbered to 0, 1, 2)."""
    import json

    rng = np.random.default_rng(seed)
    out, training = {}, []
    for i in range(n):
        case = f"organ_{i:03d}"
        img = rng.integers(-500, 500, size=(5, 4, 3)).astype(np.int16)
        lab = rng.choice(np.array([0, 1, 3], np.uint8), size=(5, 4, 3))
        aff = odd_affine(theta_deg=5 * i)
        img_name = f"{case}_0000.nii.gz" if nnunet else f"{case}.nii.gz"
        write_nifti(root / "imagesTr" / img_name, img, aff)
        write_nifti(root / "labelsTr" / f"{case}.nii.gz", lab, aff)
        training.append({"image": f"./imagesTr/{img_name}", "label": f"./labelsTr/{case}.nii.gz"})
        out[case] = (img, lab)
    if nnunet:
        meta = {"channel_names": {"0": modality}, "labels": {"background": 0, "organ": 1, "tumour": 3},
                "numTraining": n, "file_ending": ".nii.gz"}  # fmt: skip
    else:
        meta = {"name": "Task99_Fake", "modality": {"0": modality}, "labels": {"0": "background", "1": "organ", "3": "tumour"},
                "numTraining": n, "training": training}  # fmt: skip
    (root / "dataset.json").write_text(json.dumps(meta))
    return out


_Fakes.make_acdc = staticmethod(make_acdc)
_Fakes.make_msd = staticmethod(make_msd)
