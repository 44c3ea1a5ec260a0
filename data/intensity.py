"""Intensity normalisation shared by ``prepare`` (training data) and ``infer`` (raw scans).

A spec is a small JSON-able dict stored in each prepared ``dataset.json`` and in checkpoints, so inference reproduces
the training intensities exactly:

- ``{"kind": "ct", "a_min": -125, "a_max": 275}``: clip HU to ``[a_min, a_max]`` and scale to ``[0, 1]``,
  i.e. ``(clip(x) - a_min) / (a_max - a_min)`` (TransUNet Synapse: ``(x + 125) / 400``).
- ``{"kind": "mri", "mode": "minmax"}``: per-volume ``(x - min) / (max - min)`` to ``[0, 1]`` (ACDC default).
- ``{"kind": "mri", "mode": "zscore"}``: per-volume ``(x - mean) / std``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from monai.transforms import NormalizeIntensity, ScaleIntensity, ScaleIntensityRange

__all__ = ["make_intensity_transform", "CT_SPEC", "MRI_SPEC", "validate_intensity_spec"]

CT_SPEC: dict[str, Any] = {"kind": "ct", "a_min": -125.0, "a_max": 275.0}
MRI_SPEC: dict[str, Any] = {"kind": "mri", "mode": "minmax"}


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
        if mode not in ("minmax", "zscore"):
            raise ValueError(f"intensity spec mode must be 'minmax' or 'zscore', got {mode!r}")
        return {"kind": "mri", "mode": mode}
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
    else:
        xform = NormalizeIntensity(dtype=np.float32)

    def apply(volume: np.ndarray) -> np.ndarray:
        # MONAI works in float32; compute from float64 input cast once so results do not depend on the source dtype.
        out = xform(np.asarray(volume, dtype=np.float32))
        return np.asarray(out, dtype=np.float32)

    return apply
