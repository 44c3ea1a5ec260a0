"""File-level prediction, ``resfu-med infer``: images in, label images out (docs/evaluation.md).

The names follow the anchors: this module is nnU-Net's "predictor" (files), :mod:`resfu_med.engine.inferer` is
MONAI's "inferer" (windows over arrays).

Each input (NIfTI, MetaImage, NRRD or a DICOM series folder) is read by :func:`resfu_med.data.io.read_image` into a
float32 ``(Z, Y, X)`` array (NIfTI streamed slab by slab; no reorientation, so nothing has to be undone), normalised
with the checkpoint's intensity transform, predicted by :func:`resfu_med.engine.inferer.predict_volume` (2D:
slice-wise at the training size and zoomed back; 3D: streamed sliding windows), and written by
:func:`resfu_med.data.io.write_image` as ``<name>_seg<suffix>`` in the input's voxel grid, geometry and format (or
``output_format``), with the dataset's own label values (:mod:`resfu_med.data.labels`). ``--save-probabilities`` also
writes ``<name>_prob<suffix>`` (float32, classes on the 4th axis / as vector components).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from resfu_med.engine.inferer import predict_volume
from resfu_med.errors import CheckpointError, InputError, ResfuMedError
from resfu_med.outputs import claim_output, output_folder

__all__ = [
    "InferOptions",
    "run_inference",
    "InferSummary",
    "collect_inputs",
    "check_output_dir",
    "output_paths",
    "infer_file",
    "infer_paths",
    "load_for_inference",
]



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
        output_format: ``nii.gz``, ``mha`` or ``nrrd``; ``None``: the input's format.
        raw_labels: write the raw release's label values (Synapse: BTCV numbering) instead of the dataset's default.
        shard: ``(I, N)``: process only inputs ``I, I+N, ...`` of the sorted list (``--shard I/N``, or the
            ``torchrun`` rank); finished outputs are then skipped, so a re-run shard resumes.
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
    output_format: str | None = None
    raw_labels: bool = False
    shard: tuple[int, int] | None = None


@dataclass
class InferSummary:
    """What :func:`infer_paths` did: outputs written, inputs skipped, ``(input, message)`` failures, and the entries
    of an input folder that are not a supported image (each reported in one line)."""

    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    unsupported: list[Path] = field(default_factory=list)


def collect_inputs(path: str | Path, unsupported: list[Path] | None = None) -> list[Path]:
    """The images to process: ``path`` itself, or the images in folder ``path`` (see :func:`~resfu_med.data.io.find_images`).

    Args:
        path: an image file, a folder of images, or a folder of one DICOM series.
        unsupported: if given, the folder's entries that are not a supported image are appended to it.

    Raises:
        InputError: the path does not exist, or the folder holds no supported image.
    """
    from resfu_med.data.io import IMAGE_SUFFIXES, find_images

    p = Path(path)
    if not p.exists():
        raise InputError(f"input {p}: no such file or folder")
    if p.is_dir():
        files, other = find_images(p)
        if unsupported is not None:
            unsupported.extend(other)
        if not files:
            raise InputError(f"input folder {p}: contains no {', '.join(IMAGE_SUFFIXES)} image or DICOM series"
                             + (f"; {len(other)} unsupported entr{'y' if len(other) == 1 else 'ies'}" if other else ""))
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


def output_paths(input_path: Path, out_dir: Path, output_format: str | None = None) -> dict[str, Path]:
    """``{"seg": <out>/<name>_seg<suffix>, "prob": <out>/<name>_prob<suffix>}`` for one input (suffix: the input's
    format, or ``output_format``'s; see :func:`~resfu_med.data.io.output_suffix`)."""
    from resfu_med.data.io import image_stem, output_suffix

    name, suffix = image_stem(input_path), output_suffix(input_path, output_format)
    return {"seg": out_dir / f"{name}_seg{suffix}", "prob": out_dir / f"{name}_prob{suffix}"}


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
    """Segment one image and write ``<name>_seg<suffix>`` (and ``<name>_prob<suffix>`` if asked).

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
    outs = output_paths(src, Path(out_dir), opts.output_format)
    wanted = [outs["seg"]] + ([outs["prob"]] if opts.save_probabilities else [])
    existing = [o for o in wanted if o.exists()]
    if existing and not opts.overwrite:
        raise InputError(f"{existing[0]} exists; pass --overwrite to replace it or --continue-prediction to skip it")
    fn, pointwise = _intensity(config)
    from resfu_med.data.io import read_image, write_image
    from resfu_med.data.labels import apply_label_values, output_values

    vol, geometry = read_image(src, intensity=fn, pointwise=pointwise)
    data_cfg = config.get("data", {}) or {}
    num_classes = int(data_cfg.get("num_classes", 256))
    try:
        values = output_values(data_cfg, raw=opts.raw_labels)
    except ValueError as err:
        raise CheckpointError(f"checkpoint config: {err}") from None
    bar = tqdm(total=vol.shape[0], desc=src.name, unit="slice", leave=False, disable=not opts.progress)
    try:
        labels, probs = predict_volume(
            model, vol, config, device=opts.device, batch_size=opts.batch_size, roi=opts.roi, overlap=opts.overlap,
            tta=opts.tta, probabilities=opts.save_probabilities, resample=opts.resample, progress=bar.update,
            spacing=tuple(geometry.spacing)[::-1],
        )
    finally:
        bar.close()
    del vol
    written = [write_image(outs["seg"], apply_label_values(labels, values, num_classes), geometry)]
    if probs is not None:
        written.append(write_image(outs["prob"], probs, geometry, dtype=np.float32))
    return written


def infer_paths(
    input_path: str | Path, out_dir: str | Path, model: torch.nn.Module, config: Mapping[str, Any],
    opts: InferOptions | None = None, log: Callable[[str], None] | None = None,
) -> InferSummary:
    """Segment an image or every image of a folder; a file that fails is reported in one line and skipped, and so is
    every entry of the folder that is not a supported image (counted in ``unsupported``).

    Args:
        input_path: an image file, a folder of them, or a folder of one DICOM series.
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
    summary = InferSummary()
    from resfu_med.engine.distributed import shard_items

    files = shard_items(collect_inputs(input_path, summary.unsupported), opts.shard)
    out = check_output_dir(out_dir)
    if opts.shard is not None:
        summary.unsupported = summary.unsupported if opts.shard[0] == 0 else []  # reported once, by shard 0
    for f in summary.unsupported:
        log(f"resfu-med infer: {f.name}: not a supported image (.nii, .nii.gz, .mha, .mhd, .nrrd, .nhdr or a DICOM "
            "series folder), skipped")
    model.eval()
    for f in tqdm(files, desc="infer", unit="file", disable=not opts.progress or len(files) < 2):
        outs = output_paths(f, out, opts.output_format)
        wanted = [outs["seg"]] + ([outs["prob"]] if opts.save_probabilities else [])
        resume = opts.continue_prediction or opts.shard is not None
        if resume and not opts.overwrite and all(o.exists() for o in wanted):
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
    from resfu_med.engine.checkpoint import load_model  # the one checkpoint→model path

    model, config = load_model(checkpoint, device)
    return model, dict(config)


def run_inference(
    input: str | Path,
    output: str | Path,
    checkpoint: str | Path,
    roi_size: Sequence[int] | None = None,
    device: str | None = "auto",
    shard: str | None = None,
    **options: Any,
) -> tuple[list[Path], InferSummary]:
    """``resfu-med infer``: segment a NIfTI file or folder with a checkpoint.

    Args:
        input: a ``.nii``/``.nii.gz`` file or a folder of them.
        output: the output folder.
        checkpoint: a ``resfu-med train`` checkpoint.
        roi_size: window size: one value, or one per spatial axis of the model; default the model's
            (:meth:`resfu_med.networks.ModelSpec.default_roi`).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (under ``torchrun``, ``cuda`` is the rank's local GPU).
        shard: ``"I/N"``: segment only shard ``I`` of ``N`` of a folder (see
            :func:`resfu_med.engine.distributed.resolve_shard`); ``None``: the ``torchrun`` rank's shard, if any.
        options: the other :class:`InferOptions` fields (``overlap``, ``batch_size``, ``tta``, ...).

    Returns:
        ``(inputs, summary)``.

    Raises:
        InputError: no input, an unwritable output, a window of the wrong length.
        CheckpointError: an unusable checkpoint (before any output is created).
    """
    from resfu_med.engine.device import resolve_device
    from resfu_med.networks.model_registry import spatial_dims_of

    from resfu_med.engine.distributed import resolve_shard, shard_items

    try:
        shard_spec = resolve_shard(shard)
    except ValueError as err:
        raise InputError(str(err)) from None
    local = os.environ.get("LOCAL_RANK")
    dev = resolve_device(device, None if local is None else int(local))
    files = shard_items(collect_inputs(input), shard_spec)  # fail early, before loading the model
    # shards write into one folder at once and resume by skipping finished outputs
    keep = bool(options.get("overwrite") or options.get("continue_prediction") or shard_spec is not None)
    claim_output(output, "infer", inputs=[input], overwrite=keep, owned=_is_infer_output)
    model, config = load_for_inference(checkpoint, dev)  # a refused checkpoint leaves no folder
    dims = spatial_dims_of(config["model"])
    if roi_size is not None and len(roi_size) not in (1, dims):
        raise InputError(f"--roi-size: give 1 or {dims} sizes for this {dims}D model, got {len(roi_size)} "
                         f"({list(roi_size)})")
    roi = None if roi_size is None else (roi_size[0] if len(roi_size) == 1 else tuple(roi_size))
    with output_folder(output, "infer", inputs=[input], overwrite=keep, owned=_is_infer_output):
        summary = infer_paths(input, output, model, config,
                              InferOptions(roi=roi, device=dev, shard=shard_spec, **options))
    return files, summary


def _is_infer_output(path: Path) -> bool:
    """A file ``infer`` writes: ``<name>_seg<suffix>`` / ``<name>_prob<suffix>`` in any format it writes (its folder
    needs no marker), or, while other shards run into the same folder, their temporary files and write probes."""
    from resfu_med.data.io import OUTPUT_FORMATS

    outputs = tuple(f"{kind}{suffix}" for kind in ("_seg", "_prob") for suffix in OUTPUT_FORMATS.values())
    name = path.name
    if name.startswith(".resfu-med-write-test-"):  # another shard's write probe
        return True
    if name.startswith(".") and ".tmp" in name:  # another shard's output being written (resfu_med.atomic)
        name = name[1:name.rindex(".tmp")].rpartition(".")[0]
    return name.endswith(outputs) and not path.is_dir()  # a temp file may vanish meanwhile: not is_file()
