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
