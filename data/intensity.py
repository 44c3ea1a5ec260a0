"""Intensity normalisation shared by ``prepare`` (training data) and ``infer`` (raw scans).

A spec is a small JSON-able dict stored in each prepared ``dataset.json`` and in checkpoints, so inference reproduces
the training intensities exactly:

- ``{"kind": "ct", "a_min": -125, "a_max": 275}``: clip HU to ``[a_min, a_max]`` and scale to ``[0, 1]``,
  i.e. ``(clip(x) - a_min) / (a_max - a_min)`` (TransUNet Synapse: ``(x + 125) / 400``).
- ``{"kind": "mri", "mode": "minmax"}``: per-volume ``(x - min) / (max - min)`` to ``[0, 1]`` (ACDC default).
- ``{"kind": "mri", "mode": "zscore"}``: per-volume ``(x - mean) / std``.
- ``{"kind": "mri", "mode": "robust", "percentiles": [0.5, 99.5]}`` (the MSD MRI default, nnU-Net's choice): over the
  non-zero (body) voxels only, clip to their 0.5th and 99.5th percentiles, then ``(x - mean) / std`` with the mean and
  standard deviation of the clipped body voxels; zero (background) voxels stay 0. An intensity shift, a different
  scanner scale or a few very bright voxels then no longer move the body's intensities the way per-volume min–max
  does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from monai.transforms import MapTransform, NormalizeIntensity, ScaleIntensity, ScaleIntensityRange
from monai.utils import convert_to_dst_type

__all__ = ["make_intensity_transform", "CT_SPEC", "MRI_SPEC", "MRI_ROBUST_SPEC", "MRI_MODES", "RobustZScored",
           "robust_zscore", "validate_intensity_spec"]

CT_SPEC: dict[str, Any] = {"kind": "ct", "a_min": -125.0, "a_max": 275.0}
MRI_SPEC: dict[str, Any] = {"kind": "mri", "mode": "minmax"}
MRI_ROBUST_SPEC: dict[str, Any] = {"kind": "mri", "mode": "robust", "percentiles": [0.5, 99.5]}
MRI_MODES = ("minmax", "zscore", "robust")


def robust_zscore(volume: np.ndarray, percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """Z-score over the non-zero voxels after clipping them to their ``percentiles`` (zeros stay 0); float32.

    A volume without non-zero voxels comes back as zeros; a constant body becomes 0 (its std is taken as 1).
    """
    x = np.asarray(volume, dtype=np.float32)
    out = np.zeros_like(x)
    body = x != 0
    if not body.any():
        return out
    values = x[body].astype(np.float64)
    lo, hi = np.percentile(values, [float(percentiles[0]), float(percentiles[1])])
    values = np.clip(values, lo, hi)
    std = values.std()
    out[body] = ((values - values.mean()) / (std if std > 0 else 1.0)).astype(np.float32)
    return out


class RobustZScored(MapTransform):
    """MONAI dictionary transform of :func:`robust_zscore` (what exported bundles name for the ``robust`` mode).

    Args:
        keys: keys of the images to normalise (any shape; the whole array is one volume).
        percentiles: lower and upper clipping percentiles of the non-zero voxels.
    """

    def __init__(self, keys: Any, percentiles: tuple[float, float] = (0.5, 99.5), allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.percentiles = (float(percentiles[0]), float(percentiles[1]))

    def __call__(self, data: Mapping[str, Any]) -> dict[str, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            out = robust_zscore(np.asarray(image), self.percentiles)
            # Same container as the input: a MetaTensor keeps its affine, spatial_shape and applied operations, which
            # MONAI's Invertd/SaveImaged need after inference (a bare array made every MRI bundle fail).
            d[key] = convert_to_dst_type(out, image, dtype=torch.float32)[0] if isinstance(image, torch.Tensor) else out
        return d


def validate_intensity_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Check an intensity spec and return it as a plain dict with float bounds.

    Raises:
        ValueError: unknown ``kind``/``mode`` or ``a_max <= a_min``.
    """
    if not isinstance(spec, Mapping) or "kind" not in spec:
        raise ValueError(f"intensity spec must be a dict with a 'kind' key, got {spec!r}")
    kind = spec["kind"]
    if kind == "ct":
        a_min, a_max = float(spec.get("a_min", CT_SPEC["a_min"])), float(spec.get("a_max", CT_SPEC["a_max"]))
        if not a_max > a_min:
            raise ValueError(f"intensity spec needs a_max > a_min, got a_min={a_min}, a_max={a_max}")
        return {"kind": "ct", "a_min": a_min, "a_max": a_max}
    if kind == "mri":
        mode = spec.get("mode", "minmax")
        if mode not in MRI_MODES:
            raise ValueError(f"intensity spec mode must be one of {', '.join(MRI_MODES)}, got {mode!r}")
        if mode != "robust":
            return {"kind": "mri", "mode": mode}
        try:
            lo, hi = (float(v) for v in spec.get("percentiles", MRI_ROBUST_SPEC["percentiles"]))
        except (TypeError, ValueError):
            raise ValueError(f"intensity spec percentiles must be two numbers, got {spec.get('percentiles')!r}") from None
        if not 0.0 <= lo < hi <= 100.0:
            raise ValueError(f"intensity spec percentiles must satisfy 0 <= low < high <= 100, got {[lo, hi]}")
        return {"kind": "mri", "mode": "robust", "percentiles": [lo, hi]}
    raise ValueError(f"intensity spec kind must be 'ct' or 'mri', got {kind!r}")


def make_intensity_transform(spec: Mapping[str, Any]) -> Callable[[np.ndarray], np.ndarray]:
    """Build the normalisation function of ``spec`` (see the module docstring).

    Args:
        spec: an intensity spec dict.

    Returns:
        A function mapping a whole volume (any shape, raw scanner units) to a float32 array of the same shape.
        MRI modes are per volume: call it on the full volume, not slice by slice.

    Raises:
        ValueError: if ``spec`` is invalid.
    """
    spec = validate_intensity_spec(spec)
    if spec["kind"] == "ct":
        xform = ScaleIntensityRange(spec["a_min"], spec["a_max"], 0.0, 1.0, clip=True, dtype=np.float32)
    elif spec["mode"] == "minmax":
        xform = ScaleIntensity(minv=0.0, maxv=1.0, dtype=np.float32)
    elif spec["mode"] == "robust":
        low, high = spec["percentiles"]

        def xform(x: np.ndarray) -> np.ndarray:
            return robust_zscore(x, (low, high))
    else:
        xform = NormalizeIntensity(dtype=np.float32)

    def apply(volume: np.ndarray) -> np.ndarray:
        # MONAI works in float32; compute from float64 input cast once so results do not depend on the source dtype.
        out = xform(np.asarray(volume, dtype=np.float32))
        return np.asarray(out, dtype=np.float32)

    return apply
