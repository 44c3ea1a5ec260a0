"""Per-volume Dice and HD95 with medpy: the TransUNet protocol and a spacing-aware variant.

Both functions take integer label volumes and score every foreground class ``1 .. num_classes - 1`` one against one.
They differ only in units and in what they say about empty masks:

* :func:`transunet_metrics` reproduces ``calculate_metric_percase`` of TransUNet's ``utils.py`` exactly — medpy ``dc``
  and ``hd95`` *without* voxel spacing (distances in voxels), ``(1, 0)`` when the prediction has the class and the
  ground truth does not, ``(0, 0)`` when the prediction lacks it. Its numbers are comparable with the paper's tables.
* :func:`spacing_metrics` measures HD95 in millimetres with the volume's voxel spacing, and returns NaN instead of a
  made-up value whenever a surface distance is undefined, tagging which mask was empty so reports can count them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from medpy.metric import binary as medpy_binary

__all__ = ["ClassMetric", "transunet_metrics", "transunet_dice", "spacing_metrics", "EMPTY_KINDS", "drop_ignored"]

#: Values of :attr:`ClassMetric.empty`: "" (both masks present), "gt" (class absent from the ground truth, predicted
#: anyway), "pred" (class present but not predicted), "both" (absent and not predicted).
EMPTY_KINDS = ("", "gt", "pred", "both")


class ClassMetric(NamedTuple):
    """One foreground class of one volume in the spacing-aware report.

    Attributes:
        dice: Dice in [0, 1]; NaN when both masks are empty (nothing to score).
        hd95: 95th percentile Hausdorff distance in mm; NaN when either mask is empty.
        empty: which mask was empty, one of :data:`EMPTY_KINDS`.
    """

    dice: float
    hd95: float
    empty: str


def drop_ignored(pred: np.ndarray, gt: np.ndarray, ignore_index: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Leave the voxels labelled ``ignore_index`` out of scoring (nnU-Net's ``"ignore"`` label): both volumes get
    background there, so no class gains or loses a voxel from them. ``None`` returns the inputs unchanged."""
    if ignore_index is None:
        return pred, gt
    ignored = np.asarray(gt) == int(ignore_index)
    if not ignored.any():
        return pred, gt
    return np.where(ignored, 0, pred).astype(np.asarray(pred).dtype), np.where(ignored, 0, gt).astype(np.asarray(gt).dtype)


def _check(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt must have the same shape, got pred {pred.shape} and gt {gt.shape}")
    if pred.ndim < 2:
        raise ValueError(f"pred and gt must be label images with at least 2 dimensions, got shape {pred.shape}")
    if int(num_classes) < 2:
        raise ValueError(f"num_classes must count the background and at least one class, got {num_classes}")
    return pred, gt


def transunet_metrics(pred: np.ndarray, gt: np.ndarray, num_classes: int,
                      hd95: bool = True) -> list[tuple[float, float]]:
    """Dice and HD95 per foreground class by TransUNet's rules (distances in voxels).

    For each class ``c`` in ``1 .. num_classes - 1`` with ``p = pred == c`` and ``g = gt == c``: both non-empty →
    ``(medpy dc(p, g), medpy hd95(p, g))`` without spacing; ``p`` non-empty and ``g`` empty → ``(1, 0)``;
    otherwise (``p`` empty) → ``(0, 0)``.

    Args:
        pred: predicted integer label volume, e.g. ``(Z, H, W)``.
        gt: ground-truth label volume of the same shape.
        num_classes: number of classes including background.
        hd95: ``False`` skips the slow surface distance (NaN where it would be computed), as
            :func:`transunet_dice` does for validation during training.

    Returns:
        ``[(dice, hd95), ...]`` of length ``num_classes - 1`` as Python floats.

    Raises:
        ValueError: shapes differ, fewer than 2 dimensions, or ``num_classes < 2``.

    Example:
        >>> gt = np.zeros((4, 8, 8), np.uint8); gt[1:3, 2:6, 2:6] = 1
        >>> transunet_metrics(gt, gt, 2)
        [(1.0, 0.0)]
    """
    pred, gt = _check(pred, gt, num_classes)
    out = []
    for c in range(1, int(num_classes)):
        p, g = pred == c, gt == c
        if p.any() and g.any():
            out.append((float(medpy_binary.dc(p, g)), float(medpy_binary.hd95(p, g)) if hd95 else float("nan")))
        elif p.any():
            out.append((1.0, 0.0))
        else:
            out.append((0.0, 0.0))
    return out


def transunet_dice(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> list[float]:
    """The Dice half of :func:`transunet_metrics` (same rules, no HD95): training's validation score."""
    return [dice for dice, _ in transunet_metrics(pred, gt, num_classes, hd95=False)]


def spacing_metrics(
    pred: np.ndarray, gt: np.ndarray, num_classes: int, spacing: Sequence[float]
) -> list[ClassMetric]:
    """Dice and HD95 in mm per foreground class, with NaN where a value is undefined.

    For each class: both masks non-empty → medpy ``dc`` and ``hd95(voxelspacing=spacing)``; prediction only →
    ``(0, NaN, "gt")`` (a false positive: Dice is 0 by definition); ground truth only → ``(0, NaN, "pred")``;
    neither → ``(NaN, NaN, "both")``.

    Args:
        pred: predicted integer label volume.
        gt: ground-truth label volume of the same shape.
        num_classes: number of classes including background.
        spacing: voxel size in mm per array axis (same order as the arrays' axes), all positive.

    Returns:
        A list of :class:`ClassMetric` of length ``num_classes - 1``.

    Raises:
        ValueError: shapes differ, ``num_classes < 2``, or ``spacing`` has the wrong length or a non-positive value.
    """
    pred, gt = _check(pred, gt, num_classes)
    sp = tuple(float(s) for s in spacing)
    if len(sp) != pred.ndim or not all(math.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"spacing must give one positive size per axis of shape {pred.shape}, got {tuple(spacing)}")
    nan = float("nan")
    out = []
    for c in range(1, int(num_classes)):
        p, g = pred == c, gt == c
        has_p, has_g = bool(p.any()), bool(g.any())
        if has_p and has_g:
            out.append(ClassMetric(float(medpy_binary.dc(p, g)), float(medpy_binary.hd95(p, g, voxelspacing=sp)), ""))
        elif has_p:
            out.append(ClassMetric(0.0, nan, "gt"))
        elif has_g:
            out.append(ClassMetric(0.0, nan, "pred"))
        else:
            out.append(ClassMetric(nan, nan, "both"))
    return out
