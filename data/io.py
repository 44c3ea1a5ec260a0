"""The one image read/write path of resfu-med: NIfTI, MetaImage, NRRD and DICOM series in, a label map back out.

Every command reads an image or label volume with :func:`read_image` into ``(array, geometry)`` and writes results with
:func:`write_image` in the input's geometry (and, by default, its format):

=====================================  ============================  ============================================
input                                  read with                     written back as
=====================================  ============================  ============================================
``.nii``, ``.nii.gz``                  nibabel (streamed in slabs)   ``.nii.gz``; affine, qform/sform and
                                                                     their codes and header fields kept
``.mha``, ``.mhd``                     SimpleITK                     ``.mha`` (one file, compressed)
``.nrrd``, ``.nhdr``                   SimpleITK                     ``.nrrd`` (one file, compressed)
a folder holding one DICOM series      SimpleITK (GDCM)              ``.nii.gz``
=====================================  ============================  ============================================

``--output-format nii.gz|mha|nrrd`` picks another output format; the geometry is converted exactly (NIfTI's RAS affine
↔ ITK's LPS origin/direction).

Array convention (every dataset, ``prepare``, ``evaluate``, ``infer``): a volume is a ``(Z, Y, X)`` array — the image's
voxel axes ``(i, j, k)`` reversed, which is nibabel's ``dataobj`` transposed and exactly SimpleITK's
``GetArrayFromImage``. Nothing is resampled or reoriented, so writing the array back with the same geometry restores
the source grid voxel for voxel. Spacings are reported in array order ``(sz, sy, sx)``.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from resfu_med.atomic import atomic_path
from resfu_med.errors import InputError

__all__ = [
    "Geometry",
    "read_image",
    "write_image",
    "image_format",
    "image_stem",
    "output_suffix",
    "find_images",
    "is_dicom_series",
    "from_nifti_array",
    "to_nifti_array",
    "spacing_from_affine",
    "IMAGE_SUFFIXES",
    "OUTPUT_FORMATS",
]

#: file suffix → format name; a folder of one DICOM series is format ``"dicom"``.
IMAGE_SUFFIXES = {".nii.gz": "nifti", ".nii": "nifti", ".mha": "metaimage", ".mhd": "metaimage", ".nrrd": "nrrd",
                  ".nhdr": "nrrd"}  # fmt: skip
#: ``--output-format`` choices → suffix written.
OUTPUT_FORMATS = {"nii.gz": ".nii.gz", "nii": ".nii", "mha": ".mha", "nrrd": ".nrrd"}
#: default output suffix for each input format (MetaImage/NRRD headers with a separate data file come back as one file)
_DEFAULT_SUFFIX = {"nifti": ".nii.gz", "metaimage": ".mha", "nrrd": ".nrrd", "dicom": ".nii.gz"}
#: NIfTI slices read (and scaled to the target dtype) at a time: never a full-volume float64 copy
READ_SLAB = 32
# RAS (NIfTI world) <-> LPS (ITK/DICOM world): flip x and y
_LPS = np.diag([-1.0, -1.0, 1.0])


def spacing_from_affine(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel spacing in mm in array axis order ``(sz, sy, sx)`` from a 4×4 affine (column norms, so rotations count)."""
    norms = np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))
    return float(norms[2]), float(norms[1]), float(norms[0])


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


@dataclass
class Geometry:
    """Where a ``(Z, Y, X)`` array lies in the world, in ITK terms, plus what its source file was.

    Attributes:
        shape: array shape ``(Z, Y, X)``.
        spacing: voxel size along ``(i, j, k)`` = ``(x, y, z)`` in mm (ITK order).
        origin: world position of voxel ``(0, 0, 0)`` in LPS mm (ITK/DICOM convention).
        direction: 3×3 matrix whose columns are the ``i, j, k`` axis directions in LPS.
        format: ``"nifti"``, ``"metaimage"``, ``"nrrd"`` or ``"dicom"`` (the source's format).
        suffix: the source's file suffix (``".nii.gz"``...; ``""`` for a DICOM folder).
        nifti_header: the source NIfTI header (qform/sform codes, units, description...), when the source is NIfTI.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    format: str = "nifti"
    suffix: str = ".nii.gz"
    nifti_header: Any = None

    @property
    def affine(self) -> np.ndarray:
        """4×4 NIfTI (RAS) voxel-to-world matrix for voxel axes ``(i, j, k)``."""
        a = np.eye(4)
        a[:3, :3] = _LPS @ np.asarray(self.direction, dtype=np.float64) @ np.diag(self.spacing)
        a[:3, 3] = _LPS @ np.asarray(self.origin, dtype=np.float64)
        return a

    @property
    def zyx_spacing(self) -> tuple[float, float, float]:
        """Spacing in array order ``(sz, sy, sx)``."""
        return float(self.spacing[2]), float(self.spacing[1]), float(self.spacing[0])

    @classmethod
    def from_affine(cls, affine: np.ndarray, shape: tuple[int, ...], **kw: Any) -> Geometry:
        """The geometry of a NIfTI affine (RAS, voxel axes ``(i, j, k)``) for an array of ``shape`` ``(Z, Y, X)``."""
        a = np.asarray(affine, dtype=np.float64)
        m = _LPS @ a[:3, :3]
        spacing = np.sqrt((m**2).sum(axis=0))
        spacing = np.where(spacing > 0, spacing, 1.0)
        return cls(tuple(int(s) for s in shape[-3:]), tuple(float(s) for s in spacing),
                   tuple(float(o) for o in _LPS @ a[:3, 3]), m / spacing, **kw)  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON record (shape, spacing, origin, direction, format)."""
        return {"shape": list(self.shape), "spacing": list(self.spacing), "origin": list(self.origin),
                "direction": np.asarray(self.direction).tolist(), "format": self.format}  # fmt: skip


def image_format(path: str | os.PathLike) -> str | None:
    """``"nifti"``, ``"metaimage"``, ``"nrrd"`` from the suffix, ``"dicom"`` for a folder of one series, else ``None``."""
    p = Path(path)
    if p.is_dir():
        return "dicom" if is_dicom_series(p) else None
    name = p.name.lower()
    return next((fmt for suf, fmt in IMAGE_SUFFIXES.items() if name.endswith(suf)), None)


def image_stem(path: str | os.PathLike) -> str:
    """The name without its image suffix (``case01.nii.gz`` → ``case01``; a DICOM folder → its name)."""
    p = Path(path)
    name = p.name
    for suf in IMAGE_SUFFIXES:
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return name


def output_suffix(source: Geometry | str | os.PathLike, output_format: str | None = None) -> str:
    """Suffix of a result written for ``source`` (a geometry or an input path): its own, or ``output_format``'s.

    NIfTI comes back compressed (``.nii.gz``), MetaImage and NRRD as one file (``.mha``, ``.nrrd``) even from a
    header + data pair, a DICOM series as ``.nii.gz``.

    Raises:
        ValueError: ``output_format`` is not one of :data:`OUTPUT_FORMATS`.
    """
    if output_format is not None:
        if output_format not in OUTPUT_FORMATS:
            raise ValueError(f"output format must be one of {', '.join(OUTPUT_FORMATS)}; got {output_format!r}")
        return OUTPUT_FORMATS[output_format]
    if isinstance(source, Geometry):
        fmt, suffix = source.format, source.suffix
    else:
        fmt, suffix = image_format(source), _suffix_of(Path(source))
    return _DEFAULT_SUFFIX.get(fmt or "") or suffix or ".nii.gz"


def _dicom_series(folder: Path) -> list[str]:
    import SimpleITK as sitk

    try:
        return list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) or [])
    except RuntimeError:
        return []


def is_dicom_series(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` directly holds DICOM files of at least one series."""
    folder = Path(folder)
    return folder.is_dir() and bool(_dicom_series(folder))


def find_images(folder: str | os.PathLike) -> tuple[list[Path], list[Path]]:
    """The images in ``folder`` and the entries that are not one (reported by callers, never skipped in silence).

    Images are files with a suffix of :data:`IMAGE_SUFFIXES` and sub-folders holding a DICOM series; a folder that is
    itself a DICOM series is one image. The data files of ``.mhd``/``.nhdr`` headers (``.raw``, ``.zraw``, ``.raw.gz``
    beside them) belong to their header and are neither.

    Returns:
        ``(images, unsupported)``, both sorted.
    """
    folder = Path(folder)
    entries = sorted(p for p in folder.iterdir())
    images = [p for p in entries if p.is_file() and image_format(p) is not None]
    if not images and is_dicom_series(folder):
        return [folder], []
    headers = {image_stem(p) for p in images if p.name.lower().endswith((".mhd", ".nhdr"))}
    unsupported = []
    for p in entries:
        if p in images:
            continue
        if p.is_dir() and is_dicom_series(p):
            images.append(p)
        elif p.is_file() and p.name.split(".")[0] in headers and p.name.lower().endswith((".raw", ".zraw", ".raw.gz")):
            continue
        else:
            unsupported.append(p)
    return sorted(images), unsupported


def _check_volume(path: Path, shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise InputError(f"{path}: expected a 3D image, got shape {tuple(shape)}")
    if min(shape) == 0:
        raise InputError(f"{path}: image has an empty axis, shape {tuple(shape)}")
    return shape  # type: ignore[return-value]


def _read_nifti(path: Path, dtype: Any, intensity: Callable | None, pointwise: bool) -> tuple[np.ndarray, Geometry]:
    import nibabel as nib

    try:
        # keep the (gzip) file open between slab reads: reopening would decompress from the start every time
        img = nib.load(str(path), keep_file_open=True)
    except Exception as err:  # nibabel raises several types for non-NIfTI input
        raise InputError(f"{path}: not a readable NIfTI file ({type(err).__name__}: {err})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(f"{path}: not a NIfTI image (got {type(img).__name__})")
    shape = _check_volume(path, tuple(int(s) for s in img.shape))
    vol = np.empty(shape[::-1], dtype=dtype)
    try:
        for k0 in range(0, shape[2], READ_SLAB):
            k1 = min(shape[2], k0 + READ_SLAB)
            slab = np.asarray(img.dataobj[:, :, k0:k1] if len(img.shape) == 3 else img.dataobj[:, :, k0:k1, 0])
            slab = slab.transpose(2, 1, 0)
            if np.issubdtype(np.dtype(dtype), np.floating):
                slab = slab.astype(dtype, copy=False)
            elif slab.dtype.kind == "f":  # labels stored as floats must be whole numbers
                if not np.isfinite(slab).all() or (slab != np.round(slab)).any():
                    raise InputError(f"{path}: label image holds non-integer values")
            if intensity is not None and pointwise:
                slab = np.asarray(intensity(slab), dtype=dtype)
            vol[k0:k1] = slab
    except InputError:
        raise
    except Exception as err:  # truncated gzip, short file, ...
        raise InputError(f"{path}: corrupt or truncated NIfTI data ({type(err).__name__}: {err})") from None
    geometry = Geometry.from_affine(img.affine, vol.shape, format="nifti",
                                    suffix=".nii.gz" if path.name.lower().endswith(".gz") else ".nii",
                                    nifti_header=img.header.copy())  # fmt: skip
    return vol, geometry


def _sitk_reader(path: Path) -> Any:
    import SimpleITK as sitk

    if path.is_dir():
        ids = _dicom_series(path)
        if not ids:
            raise InputError(f"{path}: folder holds no DICOM series")
        if len(ids) > 1:
            raise InputError(f"{path}: folder holds {len(ids)} DICOM series ({', '.join(ids[:3])}...); "
                             "give a folder with one series")  # fmt: skip
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), ids[0]))
        return reader
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    return reader


def _geometry_of_sitk(img: Any, path: Path, fmt: str) -> Geometry:
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(img.GetDimension(), img.GetDimension())[:3, :3]
    size = img.GetSize()[:3]
    return Geometry((int(size[2]), int(size[1]), int(size[0])), tuple(float(s) for s in img.GetSpacing()[:3]),
                    tuple(float(o) for o in img.GetOrigin()[:3]), direction, format=fmt,
                    suffix="" if fmt == "dicom" else _suffix_of(path))  # fmt: skip


def _suffix_of(path: Path) -> str:
    name = path.name.lower()
    return next((suf for suf in IMAGE_SUFFIXES if name.endswith(suf)), path.suffix)


def _read_sitk(path: Path, fmt: str, dtype: Any, intensity: Callable | None) -> tuple[np.ndarray, Geometry]:
    import SimpleITK as sitk

    try:
        img = _sitk_reader(path).Execute()
    except InputError:
        raise
    except RuntimeError as err:  # ITK's exceptions carry several lines; the first meaningful one is enough
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip() and not ln.startswith("/")]
        raise InputError(f"{path}: not a readable {fmt} image ({lines[-1] if lines else err})") from None
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: {img.GetNumberOfComponentsPerPixel()}-component pixels; only scalar images are supported")
    if img.GetDimension() == 4 and img.GetSize()[3] == 1:
        img = sitk.Extract(img, list(img.GetSize()[:3]) + [0], [0, 0, 0, 0])
    _check_volume(path, tuple(img.GetSize()))
    geometry = _geometry_of_sitk(img, path, fmt)
    view = sitk.GetArrayViewFromImage(img)
    if not np.issubdtype(np.dtype(dtype), np.floating) and view.dtype.kind == "f":
        if not np.isfinite(view).all() or (view != np.round(view)).any():
            raise InputError(f"{path}: label image holds non-integer values")
    vol = np.array(view, dtype=dtype)
    del view, img
    if intensity is not None:
        vol = np.asarray(intensity(vol), dtype=dtype)
    return vol, geometry


def read_image(
    path: str | os.PathLike,
    *,
    dtype: Any = np.float32,
    intensity: Callable[[np.ndarray], np.ndarray] | None = None,
    pointwise: bool = False,
) -> tuple[np.ndarray, Geometry]:
    """Read a 3D image or label volume as a ``(Z, Y, X)`` array and its :class:`Geometry`.

    Args:
        path: a ``.nii``/``.nii.gz``/``.mha``/``.mhd``/``.nrrd``/``.nhdr`` file or a folder of one DICOM series.
            A 4D image with a last axis of size 1 is accepted as 3D.
        dtype: dtype of the returned array (``np.float32`` for images; an integer dtype for labels, checked to hold
            whole numbers).
        intensity: optional intensity transform applied while reading (from the checkpoint's spec).
        pointwise: the transform acts voxel by voxel (CT windowing) and may be applied per NIfTI slab; otherwise it
            is applied to the whole volume afterwards.

    Returns:
        ``(array, geometry)``.

    Raises:
        InputError: naming ``path`` — missing, an unsupported kind, unreadable/truncated, not 3D, an empty axis,
            several DICOM series, or NaN/inf voxels.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file")
    fmt = image_format(p)
    if fmt is None:
        kinds = ", ".join(IMAGE_SUFFIXES)
        raise InputError(f"{p}: unsupported {'folder (no DICOM series)' if p.is_dir() else 'file type'}; "
                         f"expected {kinds} or a folder of one DICOM series")  # fmt: skip
    if fmt == "nifti":
        vol, geometry = _read_nifti(p, dtype, intensity if pointwise else None, pointwise)
    else:
        vol, geometry = _read_sitk(p, fmt, dtype, intensity if pointwise else None)
    if vol.dtype.kind == "f" and not np.isfinite(vol).all():
        raise InputError(f"{p}: {int((~np.isfinite(vol)).sum())} voxel(s) are NaN or infinite")
    if intensity is not None and not pointwise:
        vol = np.asarray(intensity(vol), dtype=dtype)
    return vol, geometry


def _write_nifti(path: Path, arr: np.ndarray, geometry: Geometry) -> None:
    import nibabel as nib

    data = arr.transpose(2, 1, 0) if arr.ndim == 3 else arr.transpose(3, 2, 1, 0)
    header = geometry.nifti_header
    if header is not None:  # the source header: qform/sform matrices and codes, units, description
        header = header.copy()
        header["cal_min"], header["cal_max"] = 0, 0  # the input's display window (e.g. HU) means nothing for labels
        out = nib.Nifti1Image(data, header.get_best_affine(), header)
        out.set_qform(header.get_qform(), code=int(header["qform_code"]))
        out.set_sform(header.get_sform(), code=int(header["sform_code"]))
    else:  # from another format: its LPS geometry as a scanner-anchored NIfTI affine
        out = nib.Nifti1Image(data, geometry.affine)
        out.set_qform(geometry.affine, code=1)
        out.set_sform(geometry.affine, code=1)
        out.header.set_xyzt_units("mm", "sec")
    out.set_data_dtype(arr.dtype)
    out.header.set_slope_inter(1.0, 0.0)
    # streamed (no in-memory copy of the file); gzip with a zero timestamp and no file name: equal results, equal bytes
    with atomic_path(path, suffix=".nii.gz" if path.name.endswith(".gz") else ".nii") as tmp, open(tmp, "wb") as fh:
        if path.name.endswith(".gz"):
            with gzip.GzipFile(filename="", mode="wb", fileobj=fh, compresslevel=6, mtime=0) as gz:
                out.to_stream(gz)
        else:
            out.to_stream(fh)


def _write_sitk(path: Path, arr: np.ndarray, geometry: Geometry) -> None:
    import SimpleITK as sitk

    # (C, Z, Y, X) probabilities → a vector image (Z, Y, X) with C components
    img = sitk.GetImageFromArray(np.moveaxis(arr, 0, -1) if arr.ndim == 4 else arr, isVector=arr.ndim == 4)
    img.SetSpacing([float(s) for s in geometry.spacing])
    img.SetOrigin([float(o) for o in geometry.origin])
    try:
        img.SetDirection([float(v) for v in np.asarray(geometry.direction, dtype=np.float64).ravel()])
    except RuntimeError:
        raise InputError(f"{path}: the source geometry has a sheared (non-orthonormal) direction, which "
                         f"{path.suffix} cannot store; write NIfTI (--output-format nii.gz)") from None
    with atomic_path(path, suffix=path.suffix) as tmp:
        sitk.WriteImage(img, str(tmp), useCompression=True)


def write_image(path: str | os.PathLike, array: np.ndarray, geometry: Geometry, *, dtype: Any = None) -> Path:
    """Write a ``(Z, Y, X)`` (or ``(C, Z, Y, X)`` probability) array in ``geometry``, atomically.

    The format comes from ``path``'s suffix (``.nii``, ``.nii.gz``, ``.mha``, ``.nrrd``). A NIfTI source keeps its
    header (qform/sform matrices and codes, units, description; only data type, dimensions and scaling change); any
    other source's spacing, origin and direction are written exactly (as a NIfTI affine with qform/sform code 1 when
    the output is NIfTI).

    Args:
        path: destination file.
        array: ``(Z, Y, X)`` labels or ``(C, Z, Y, X)`` per-class values.
        geometry: the source's geometry (from :func:`read_image`).
        dtype: stored dtype (default: the array's).

    Returns:
        ``path``.

    Raises:
        ValueError: the array's spatial shape differs from ``geometry.shape``, or an unsupported suffix.
        InputError: a geometry the output format cannot store.
    """
    path = Path(path)
    arr = np.ascontiguousarray(array, dtype=dtype) if dtype is not None else np.ascontiguousarray(array)
    if tuple(arr.shape[-3:]) != tuple(geometry.shape) or arr.ndim not in (3, 4):
        raise ValueError(f"array shape {arr.shape} does not match the geometry's (Z, Y, X) {tuple(geometry.shape)}")
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        _write_nifti(path, arr, geometry)
    elif name.endswith((".mha", ".nrrd")):
        _write_sitk(path, arr, geometry)
    else:
        raise ValueError(f"{path}: cannot write this format; use .nii.gz, .nii, .mha or .nrrd")
    return path
