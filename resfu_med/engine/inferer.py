"""``resfu-med infer``: segment NIfTI files with a trained checkpoint, folder in → folder out (SPEC §6).

Each input is read slab by slab into a float32 ``(Z, Y, X)`` array (the NIfTI voxel axes reversed, the layout the
datasets use; no reorientation, so nothing has to be undone), normalised with the checkpoint's intensity transform,
predicted by :func:`resfu_med.engine.predictor.predict_volume` (2D: slice-wise at the training size and zoomed back;
3D: streamed sliding windows), and written as ``<name>_seg.nii.gz`` in the input's voxel grid with its affine and
header (qform/sform and their codes, pixdim, units, description) and integer labels. ``--save-probabilities`` also
writes ``<name>_prob.nii.gz`` (float32, classes on the 4th axis).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from resfu_med.atomic import atomic_path
from resfu_med.engine.predictor import predict_volume
from resfu_med.errors import CheckpointError, InputError, ResfuMedError

__all__ = [
    "InferOptions",
    "InferSummary",
    "collect_inputs",
    "check_output_dir",
    "output_paths",
    "read_nifti_volume",
    "write_like",
    "infer_file",
    "infer_paths",
    "load_for_inference",
]

NIFTI_SUFFIXES = (".nii.gz", ".nii")
#: slices read (and scaled to float32) at a time: never a full-volume float64 copy
READ_SLAB = 32


@dataclass
class InferOptions:
    """Settings of :func:`infer_paths` (the ``resfu-med infer`` flags).

    Attributes:
        roi: sliding-window size; default the checkpoint's ``img_size`` (2D) / ``roi_size`` (3D).
        overlap: window overlap in [0, 1).
        batch_size: slices (2D) or windows (3D) per network call.
        device: torch device string.
        tta: mirror test-time augmentation.
        save_probabilities: also write ``<name>_prob.nii.gz``.
        overwrite: replace existing outputs.
        continue_prediction: skip inputs whose outputs exist.
        resample: 2D models: zoom slices to the training size (as trained); ``False`` = native-grid windows.
        progress: show progress bars.
    """

    roi: int | tuple[int, ...] | None = None
    overlap: float = 0.25
    batch_size: int = 8
    device: str = "cpu"
    tta: bool = False
    save_probabilities: bool = False
    overwrite: bool = False
    continue_prediction: bool = False
    resample: bool = True
    progress: bool = True


@dataclass
class InferSummary:
    """What :func:`infer_paths` did: outputs written, inputs skipped, and ``(input, message)`` failures."""

    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)


def _stem(path: Path) -> str:
    name = path.name
    for suf in NIFTI_SUFFIXES:
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return path.stem


def collect_inputs(path: str | Path) -> list[Path]:
    """The NIfTI files to process: ``path`` itself, or the ``.nii``/``.nii.gz`` files in folder ``path`` (sorted).

    Raises:
        InputError: the path does not exist, or the folder holds no NIfTI file.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"input {p}: no such file or folder")
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.name.lower().endswith(NIFTI_SUFFIXES))
        if not files:
            raise InputError(f"input folder {p}: contains no .nii or .nii.gz file")
        return files
    return [p]


def check_output_dir(path: str | Path) -> Path:
    """Create the output folder if needed and check that files can be written in it.

    Raises:
        InputError: it cannot be created or written to.
    """
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".resfu-med-write-test-{id(out)}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise InputError(f"output folder {out}: not writable ({err.strerror or err})") from None
    return out


def output_paths(input_path: Path, out_dir: Path) -> dict[str, Path]:
    """``{"seg": <out>/<name>_seg.nii.gz, "prob": <out>/<name>_prob.nii.gz}`` for one input."""
    name = _stem(input_path)
    return {"seg": out_dir / f"{name}_seg.nii.gz", "prob": out_dir / f"{name}_prob.nii.gz"}


def read_nifti_volume(path: str | Path, intensity: Callable[[np.ndarray], np.ndarray] | None = None,
                      pointwise: bool = False) -> tuple[np.ndarray, Any]:
    """Read a 3D NIfTI as float32 ``(Z, Y, X)`` (voxel axes reversed), optionally normalised, without float64 copies.

    Args:
        path: ``.nii`` or ``.nii.gz`` file.
        intensity: intensity transform (from the checkpoint's spec) to apply.
        pointwise: the transform acts voxel by voxel (CT windowing) and may be applied per slab while reading;
            otherwise (per-volume statistics, MRI) it is applied to the whole volume afterwards.

    Returns:
        ``(volume, nibabel image)``.

    Raises:
        InputError: missing, not NIfTI, truncated/corrupt, not 3D (a 4th axis of size 1 is accepted), an empty
            axis, or non-finite voxels — the message names the file.
    """
    import nibabel as nib

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such file")
    try:
        # keep the (gzip) file open between slab reads: reopening would decompress from the start every time
        img = nib.load(str(p), keep_file_open=True)
    except Exception as err:  # nibabel raises several types for non-NIfTI input
        raise InputError(f"{p}: not a readable NIfTI file ({type(err).__name__}: {err})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(f"{p}: not a NIfTI image (got {type(img).__name__})")
    shape = tuple(int(s) for s in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise InputError(f"{p}: expected a 3D image, got shape {tuple(img.shape)}")
    if min(shape) == 0:
        raise InputError(f"{p}: image has an empty axis, shape {shape}")
    vol = np.empty(shape[::-1], dtype=np.float32)
    try:
        for k0 in range(0, shape[2], READ_SLAB):
            k1 = min(shape[2], k0 + READ_SLAB)
            slab = np.asarray(img.dataobj[:, :, k0:k1] if len(img.shape) == 3 else img.dataobj[:, :, k0:k1, 0])
            slab = slab.astype(np.float32).transpose(2, 1, 0)
            if intensity is not None and pointwise:
                slab = np.asarray(intensity(slab), dtype=np.float32)
            vol[k0:k1] = slab
    except InputError:
        raise
    except Exception as err:  # truncated gzip, short file, ...
        raise InputError(f"{p}: corrupt or truncated NIfTI data ({type(err).__name__}: {err})") from None
    if not np.isfinite(vol).all():
        raise InputError(f"{p}: image contains NaN or infinite voxels")
    if intensity is not None and not pointwise:
        vol = np.asarray(intensity(vol), dtype=np.float32)
    return vol, img


def write_like(path: str | Path, data_zyx: np.ndarray, ref: Any, dtype: np.dtype | type | None = None) -> Path:
    """Write ``data_zyx`` (``(Z, Y, X)`` or ``(C, Z, Y, X)``) in ``ref``'s voxel grid, affine and header, atomically.

    The header is ``ref``'s with only the data type, dimensions and scaling changed; qform and sform keep their
    matrices and codes. A ``(C, Z, Y, X)`` array becomes a 4D image ``(X, Y, Z, C)``.
    """
    import nibabel as nib

    arr = np.asarray(data_zyx)
    arr = arr.transpose(2, 1, 0) if arr.ndim == 3 else arr.transpose(3, 2, 1, 0)
    header = ref.header.copy()
    header["cal_min"], header["cal_max"] = 0, 0  # the input's display window (e.g. HU) means nothing for labels
    out = nib.Nifti1Image(np.ascontiguousarray(arr, dtype=dtype) if dtype is not None else arr, ref.affine, header)
    out.set_data_dtype(dtype if dtype is not None else arr.dtype)
    out.header.set_slope_inter(1.0, 0.0)
    out.set_qform(ref.header.get_qform(), code=int(ref.header["qform_code"]))
    out.set_sform(ref.header.get_sform(), code=int(ref.header["sform_code"]))
    with atomic_path(path, suffix=".nii.gz") as tmp:
        nib.save(out, str(tmp))
    return Path(path)


def _intensity(config: Mapping[str, Any]) -> tuple[Callable[[np.ndarray], np.ndarray] | None, bool]:
    spec = (config.get("data", {}) or {}).get("intensity")
    if not spec:
        return None, False
    from resfu_med.data import make_intensity_transform  # the data layer owns the one definition of the transform

    return make_intensity_transform(spec), spec.get("kind") == "ct"


def infer_file(
    input_path: str | Path, out_dir: str | Path, model: torch.nn.Module, config: Mapping[str, Any],
    opts: InferOptions | None = None,
) -> list[Path]:
    """Segment one NIfTI file and write ``<name>_seg.nii.gz`` (and ``<name>_prob.nii.gz`` if asked).

    Args:
        input_path: the image.
        out_dir: existing output folder.
        model: network in eval mode on ``opts.device``.
        config: the checkpoint's config (model kind, ``data.img_size``, ``num_classes``, ``intensity``).
        opts: settings; defaults of :class:`InferOptions`.

    Returns:
        The files written.

    Raises:
        InputError: unreadable input, or outputs that exist without ``overwrite``.
        CheckpointError: the model's output does not match its config.
    """
    opts = opts or InferOptions()
    src = Path(input_path)
    outs = output_paths(src, Path(out_dir))
    wanted = [outs["seg"]] + ([outs["prob"]] if opts.save_probabilities else [])
    existing = [o for o in wanted if o.exists()]
    if existing and not opts.overwrite:
        raise InputError(f"{existing[0]} exists; pass --overwrite to replace it or --continue-prediction to skip it")
    fn, pointwise = _intensity(config)
    vol, img = read_nifti_volume(src, fn, pointwise)
    num_classes = int((config.get("data", {}) or {}).get("num_classes", 256))
    bar = tqdm(total=vol.shape[0], desc=src.name, unit="slice", leave=False, disable=not opts.progress)
    try:
        labels, probs = predict_volume(
            model, vol, config, device=opts.device, batch_size=opts.batch_size, roi=opts.roi, overlap=opts.overlap,
            tta=opts.tta, probabilities=opts.save_probabilities, resample=opts.resample, progress=bar.update,
        )
    finally:
        bar.close()
    del vol
    label_dtype = np.uint8 if num_classes <= 256 else np.int16
    written = [write_like(outs["seg"], labels, img, label_dtype)]
    if probs is not None:
        written.append(write_like(outs["prob"], probs, img, np.float32))
    return written


def infer_paths(
    input_path: str | Path, out_dir: str | Path, model: torch.nn.Module, config: Mapping[str, Any],
    opts: InferOptions | None = None, log: Callable[[str], None] | None = None,
) -> InferSummary:
    """Segment a file or every NIfTI file of a folder; a file that fails is reported in one line and skipped.

    Args:
        input_path: a ``.nii``/``.nii.gz`` file or a folder of them.
        out_dir: output folder (created; must be writable).
        model: network in eval mode.
        config: the checkpoint's config.
        opts: settings.
        log: where the per-file lines go (default: stderr).

    Returns:
        An :class:`InferSummary`.

    Raises:
        InputError: missing input, empty folder, unwritable output folder (nothing can be done at all).
        CheckpointError: the model does not match its config (every file would fail the same way).
    """
    opts = opts or InferOptions()
    log = log or (lambda msg: tqdm.write(msg, file=sys.stderr))
    files = collect_inputs(input_path)
    out = check_output_dir(out_dir)
    summary = InferSummary()
    model.eval()
    for f in tqdm(files, desc="infer", unit="file", disable=not opts.progress or len(files) < 2):
        outs = output_paths(f, out)
        wanted = [outs["seg"]] + ([outs["prob"]] if opts.save_probabilities else [])
        if opts.continue_prediction and not opts.overwrite and all(o.exists() for o in wanted):
            summary.skipped.append(f)
            log(f"resfu-med infer: {f.name}: output exists, skipped (--continue-prediction)")
            continue
        try:
            summary.written.extend(infer_file(f, out, model, config, opts))
            log(f"resfu-med infer: {f.name} -> {outs['seg'].name}")
        except CheckpointError:
            raise
        except ResfuMedError as err:
            summary.failed.append((f, str(err)))
            log(f"resfu-med infer: error: {err}")
        except Exception as err:  # one bad file must not stop the others; report it in one line
            msg = f"{f}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            summary.failed.append((f, msg))
            log(f"resfu-med infer: error: {msg}")
    return summary


def load_for_inference(checkpoint: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, dict]:
    """Load a training checkpoint for prediction: ``(model in eval mode on device, config)``.

    Raises:
        CheckpointError: missing, corrupt, or not matching its architecture/class count.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    from resfu_med.engine.checkpoint import load_model  # training layer's loader validates architecture and classes

    model, config = load_model(str(path), device)
    if not isinstance(config, Mapping) or "data" not in config or "num_classes" not in (config["data"] or {}):
        raise CheckpointError(f"checkpoint {path}: its config has no data.num_classes")
    return model.eval(), dict(config)
