"""NIfTI reading with validation, deterministic writing, and the array-orientation convention of resfu-med.

Convention (used by every dataset, ``prepare`` and ``infer``): a NIfTI data array indexed ``(x, y, z)`` (nibabel's
voxel order, *not* reoriented) becomes the array ``(Z, Y, X) = data.transpose(2, 1, 0)``: axial slices first, then rows
``j`` and columns ``i``. This is the TransUNet ``Z × H × W`` layout. No resampling or reorientation is applied, so the
inverse is exact: :func:`to_nifti_array` transposes back and the original affine/header write a prediction into the
source geometry voxel for voxel. Spacings are reported in array axis order ``(sz, sy, sx)`` = ``header zooms[::-1]``.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np

from resfu_med.atomic import atomic_write_bytes
from resfu_med.errors import InputError

__all__ = ["load_nifti", "from_nifti_array", "to_nifti_array", "spacing_from_affine", "save_nifti", "NIFTI_SUFFIXES"]

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def from_nifti_array(data: np.ndarray) -> np.ndarray:
    """NIfTI voxel array ``(X, Y, Z)`` → resfu-med array ``(Z, Y, X)`` (a transposed view, no copy)."""
    if data.ndim != 3:
        raise ValueError(f"data must be 3D (X, Y, Z), got shape {data.shape}")
    return data.transpose(2, 1, 0)


def to_nifti_array(array: np.ndarray) -> np.ndarray:
    """resfu-med array ``(Z, Y, X)`` → NIfTI voxel array ``(X, Y, Z)``; the exact inverse of :func:`from_nifti_array`."""
    if array.ndim != 3:
        raise ValueError(f"array must be 3D (Z, Y, X), got shape {array.shape}")
    return array.transpose(2, 1, 0)


def spacing_from_affine(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel spacing in mm in array axis order ``(sz, sy, sx)`` from a 4×4 affine (column norms, so rotations count)."""
    norms = np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))
    return float(norms[2]), float(norms[1]), float(norms[0])


def load_nifti(path: str | os.PathLike, *, dtype: type = np.float32) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Header]:
    """Read a 3D NIfTI file and validate it.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file. A 4D file with a last dimension of 1 is accepted as 3D.
        dtype: floating dtype of the returned array.

    Returns:
        ``(array, affine, header)``: the voxels as ``(Z, Y, X)`` (see the module docstring), the 4×4 float64 affine
        and the NIfTI header (for writing results back with the same geometry).

    Raises:
        InputError: naming ``path`` when it is missing, not NIfTI, truncated/corrupt, not 3D, or holds NaN/inf.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        img = nib.load(str(path))
    except Exception as err:  # nibabel raises ImageFileError, EOFError, OSError... for bad files
        raise InputError(f"{path}: not a readable NIfTI file ({type(err).__name__}: {err})") from err
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(f"{path}: not a NIfTI file (read as {type(img).__name__})")
    try:
        data = np.asarray(img.get_fdata(dtype=np.float64 if np.dtype(dtype).itemsize > 4 else np.float32))
    except Exception as err:  # a truncated .nii.gz fails only here, when the voxels are decompressed
        raise InputError(f"{path}: truncated or corrupt NIfTI data ({type(err).__name__}: {err})") from err
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"{path}: expected a 3D volume, got shape {data.shape}")
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise InputError(f"{path}: {bad} voxel(s) are NaN or infinite")
    affine = np.asarray(img.affine, dtype=np.float64)
    return np.ascontiguousarray(from_nifti_array(data), dtype=dtype), affine, img.header


def save_nifti(path: str | os.PathLike, array: np.ndarray, affine: np.ndarray, header: nib.Nifti1Header | None = None) -> None:
    """Write a ``(Z, Y, X)`` array as NIfTI with ``affine`` (and ``header``), atomically and byte-deterministically.

    ``.nii.gz`` files are gzip-compressed with a zero timestamp and no file name, so equal inputs give equal bytes.

    Args:
        path: destination, ``.nii`` or ``.nii.gz``.
        array: voxels in resfu-med order ``(Z, Y, X)``; its dtype is kept.
        affine: 4×4 voxel-to-world matrix.
        header: optional header to copy (dimensions and data type are updated from ``array``).
    """
    path = Path(path)
    img = nib.Nifti1Image(to_nifti_array(np.asarray(array)), np.asarray(affine, dtype=np.float64), header=header)
    img.set_data_dtype(np.asarray(array).dtype)
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    raw = img.to_bytes()
    atomic_write_bytes(path, gzip.compress(raw, compresslevel=6, mtime=0) if path.name.endswith(".gz") else raw)
