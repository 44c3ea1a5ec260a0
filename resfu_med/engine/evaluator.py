"""Volumetric evaluation of a trained model on an evaluation split (docs/evaluation.md).

Per test volume: predict slice by slice at ``img_size`` and zoom back (:func:`resfu_med.engine.predictor.predict_volume`),
then score every foreground class with medpy in two reports — the TransUNet protocol (voxel units, comparable with
the paper) and the spacing-aware one (HD95 in mm, NaN for empty masks). Training's validation
(:func:`resfu_med.engine.validation.validate`) scores the same predictions with the Dice half of the same metrics.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from resfu_med.engine.predictor import predict_volume
from resfu_med.errors import CheckpointError, InputError, ResfuMedError
from resfu_med.safety import check_case_name, check_inside
from resfu_med.metrics import Report, build_report, drop_ignored, spacing_metrics, transunet_metrics

__all__ = ["EvaluationResult", "evaluate_model", "save_prediction"]


@dataclass
class EvaluationResult:
    """Outcome of :func:`evaluate_model`.

    Attributes:
        transunet: the TransUNet-protocol report (voxel units).
        spacing: the spacing-aware report (mm); cases without a known spacing are not in it.
        failures: ``(case, message)`` for every volume that could not be loaded or evaluated.
        no_spacing: cases left out of the spacing-aware report because their voxel spacing is unknown.
        predictions: prediction files written (``save_dir``).
    """

    transunet: Report
    spacing: Report
    failures: list[tuple[str, str]] = field(default_factory=list)
    no_spacing: list[str] = field(default_factory=list)
    predictions: list[Path] = field(default_factory=list)


def save_prediction(
    path: str | Path, labels: np.ndarray, affine: np.ndarray | None = None, spacing: Sequence[float] | None = None,
    values: list[int] | None = None,
) -> Path:
    """Write a ``(Z, Y, X)`` label volume with the case's geometry through :func:`resfu_med.data.io.write_image`.

    Args:
        path: output file; its suffix picks the format (``.nii.gz``, ``.mha``, ``.nrrd``).
        labels: class indices in the evaluation datasets' ``(Z, Y, X)`` layout.
        affine: the case's 4×4 NIfTI affine (for its X, Y, Z voxel axes); default a diagonal of ``spacing``.
        spacing: ``(sz, sy, sx)`` in mm, used when ``affine`` is missing.
        values: the label value written for each class (:func:`resfu_med.data.labels.output_values`); default the
            class indices.

    Returns:
        The path written.
    """
    from resfu_med.data.io import Geometry, write_image
    from resfu_med.data.labels import apply_label_values

    labels = np.asarray(labels)
    if affine is None:
        sz, sy, sx = spacing if spacing is not None else (1.0, 1.0, 1.0)
        affine = np.diag([float(sx), float(sy), float(sz), 1.0])
    num_classes = int(labels.max()) + 1 if values is None else len(values)
    return write_image(path, apply_label_values(labels, values, max(num_classes, 1)),
                       Geometry.from_affine(np.asarray(affine, dtype=np.float64), labels.shape))


def _as_volume(item: Mapping[str, Any], name: str) -> tuple[np.ndarray, np.ndarray]:
    img = np.asarray(item["image"])
    lab = np.asarray(item["label"])
    img = img.squeeze(0) if img.ndim == 4 and img.shape[0] == 1 else img
    lab = lab.squeeze(0) if lab.ndim == 4 and lab.shape[0] == 1 else lab
    if img.ndim != 3 or img.shape != lab.shape:
        raise InputError(f"case {name}: expected image and label volumes (Z, H, W) of one shape, "
                         f"got image {img.shape} and label {lab.shape}")
    return img, lab


def evaluate_model(
    model: torch.nn.Module,
    dataset: Sequence[Mapping[str, Any]],
    config: Mapping[str, Any],
    device: str | torch.device = "cpu",
    batch_size: int = 8,
    save_dir: str | Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    save_suffix: str = ".nii.gz",
    raw_labels: bool = False,
) -> EvaluationResult:
    """Evaluate ``model`` on every volume of ``dataset`` in both reports.

    Args:
        model: trained network in eval mode (2D or 3D, as ``config`` says).
        dataset: evaluation split yielding volume dicts ``{"image": (Z, H, W), "label": (Z, H, W), "case": str,
            "spacing": (sz, sy, sx) or None, "affine": 4×4 or None}`` (``resfu_med.data.get_dataset(..., "test")``).
        config: the checkpoint's config; ``config["data"]`` gives ``num_classes``, ``label_names``, ``img_size``.
        device: where the network runs.
        batch_size: slices (2D) or windows (3D) per network call.
        save_dir: if given, each prediction is written there as ``<case>_pred<save_suffix>`` with the dataset's own
            label values (:mod:`resfu_med.data.labels`).
        progress: show a tqdm bar over volumes.
        log: where per-case failure lines go (default: stderr).
        save_suffix: ``.nii.gz``, ``.mha`` or ``.nrrd``.
        raw_labels: write the raw release's label values (Synapse: BTCV numbering).

    Returns:
        An :class:`EvaluationResult`; a case that fails is recorded in ``failures`` and the others still run.
    """
    data = config.get("data", {}) or {}
    num_classes = int(data["num_classes"])
    names = list(data.get("label_names") or [f"class{c}" for c in range(1, num_classes)])
    if len(names) != num_classes - 1:
        raise ValueError(f"config data.label_names has {len(names)} names for num_classes={num_classes}")
    log = log or (lambda msg: tqdm.write(msg, file=sys.stderr))
    from resfu_med.data.labels import output_values

    values = output_values(data, raw=raw_labels)
    model.eval()
    tu: dict[str, list] = {}
    sp: dict[str, list] = {}
    result = EvaluationResult(build_report("transunet", names, {}), build_report("spacing", names, {}))
    bar = tqdm(range(len(dataset)), desc="evaluate", unit="vol", disable=not progress)
    for i in bar:
        name = f"#{i}"
        try:
            item = dataset[i]
            name = str(item.get("case", name))
            bar.set_postfix_str(name)
            image, label = _as_volume(item, name)
            pred, _ = predict_volume(model, image, config, device=device, batch_size=batch_size)
            saved, (pred, label) = pred, drop_ignored(pred, label, data.get("ignore_index"))
            tu[name] = transunet_metrics(pred, label, num_classes)
            spacing = item.get("spacing")
            if spacing is not None:
                sp[name] = spacing_metrics(pred, label, num_classes, spacing)
            else:
                result.no_spacing.append(name)
            if save_dir is not None:
                result.predictions.append(
                    save_prediction(check_inside(f"{check_case_name(name, 'case')}_pred{save_suffix}", save_dir,
                                                 f"case {name!r}", "prediction"),
                                    saved, item.get("affine"), spacing, values)
                )
        except CheckpointError:  # the model itself is wrong: every case would fail the same way
            raise
        except (ResfuMedError, OSError, ValueError, RuntimeError, KeyError) as err:
            msg = str(err) if isinstance(err, ResfuMedError) else f"{type(err).__name__}: {err}"
            result.failures.append((name, msg))
            log(f"resfu-med evaluate: error: case {name}: {msg}")
    result.transunet = build_report("transunet", names, tu)
    result.spacing = build_report("spacing", names, sp)
    return result
