"""Dataset fingerprint and training plans, nnU-Net's idea at CPU scale: ``plans.json`` beside the prepared data.

``resfu-med prepare`` measures every case as it writes it (:func:`case_fingerprint`: shape, spacing, class voxel
counts, foreground intensity statistics) and, once the dataset is complete, writes ``<prepared>/plans.json``::

    {"resfu_med_plans": 1,
     "fingerprint": {"num_cases", "spacing": {"median", "min", "max"}, "shape": {"median", "min", "max"},
                     "intensity": {"modality", "voxels", "mean", "std", "min", "max", "median",
                                   "percentile_00_5", "percentile_99_5"},
                     "class_voxels": {name: voxels}},
     "plans": {"2d": {"spacing", "median_shape", "patch_size", "batch_size", "divisor"},
               "3d": {"spacing", "median_shape", "patch_size", "batch_size", "divisor"}}}

Arrays are ``(Z, Y, X)``, spacings ``(sz, sy, sx)`` mm. Intensities are those of the prepared volumes (after the
dataset's CT window or MRI normalisation: what the network sees), counted over the foreground (label > 0, the
ignore label excluded); mean, std, min and max are exact over all cases, the median and percentiles are the median
of the per-case values. The plans:

* target spacing: the median spacing of each axis (2D: the in-plane axes ``(sy, sx)``);
* median shape: the median over cases of each case's shape resampled to the target spacing;
* patch: the median shape rounded **up** to a multiple of ``divisor`` (the networks' total downsampling, 16 for the
  U-Nets, DynUNet and TransUNet) and at least ``min_side``, then, while it holds more than
  :data:`PATCH_VOXELS` voxels, the side that spans the most millimetres loses one ``divisor`` (the first such axis
  on ties);
* batch: :data:`BATCH_VOXELS` divided by the patch's voxels, clamped to :data:`BATCH_RANGE`.

The file is plain JSON meant to be read and edited; :func:`read_plans` checks every key and names the file and the
key of the first bad one.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from resfu_med.atomic import atomic_write_json
from resfu_med.errors import InputError

__all__ = ["PLANS_FILE", "PLANS_FORMAT", "PATCH_VOXELS", "BATCH_VOXELS", "BATCH_RANGE", "case_fingerprint",
           "dataset_fingerprint", "make_plan", "make_plans", "write_plans", "read_plans", "check_plans"]

PLANS_FILE = "plans.json"
PLANS_FORMAT = 1
#: Most voxels of one training patch (the memory budget of one sample on a CPU), per plan.
PATCH_VOXELS = {"2d": 256 * 256, "3d": 64 * 128 * 128}
#: Voxels of one batch: the batch size is this divided by the patch's voxels.
BATCH_VOXELS = {"2d": 4 * 128 * 128, "3d": 2 * 64 * 128 * 128}
#: Smallest and largest batch size, per plan.
BATCH_RANGE = {"2d": (2, 32), "3d": (2, 8)}
#: The networks' total downsampling (U-Net, DynUNet, TransUNet: 16) and the smallest patch side (BasicUNet 2D: 32).
DIVISOR = {"2d": 16, "3d": 16}
MIN_SIDE = {"2d": 32, "3d": 16}
IGNORE_VALUE = 255


def case_fingerprint(image: np.ndarray, label: np.ndarray, spacing: Sequence[float]) -> dict[str, Any]:
    """One prepared case's contribution to the fingerprint.

    Args:
        image: the prepared volume ``(Z, Y, X)``.
        label: its labels (0 background, 255 nnU-Net's ignore label).
        spacing: ``(sz, sy, sx)`` mm.

    Returns:
        ``{"shape", "spacing", "class_voxels" {value: count}, "intensity" {"voxels", "sum", "sum_sq", "min", "max",
        "median", "percentile_00_5", "percentile_99_5"}}`` (plain JSON; the intensity block is empty without
        foreground).
    """
    label = np.asarray(label)
    values, counts = np.unique(label, return_counts=True)
    fg = np.asarray(image, dtype=np.float64)[(label > 0) & (label != IGNORE_VALUE)]
    intensity: dict[str, float] = {}
    if fg.size:
        p005, p50, p995 = np.percentile(fg, [0.5, 50.0, 99.5])
        intensity = {"voxels": int(fg.size), "sum": float(fg.sum()), "sum_sq": float(np.square(fg).sum()),
                     "min": float(fg.min()), "max": float(fg.max()), "median": float(p50),
                     "percentile_00_5": float(p005), "percentile_99_5": float(p995)}
    return {"shape": [int(s) for s in label.shape], "spacing": [float(s) for s in spacing],
            "class_voxels": {str(int(v)): int(c) for v, c in zip(values, counts)}, "intensity": intensity}


def _stats(rows: np.ndarray) -> dict[str, list[float]]:
    return {"median": np.median(rows, axis=0).tolist(), "min": rows.min(axis=0).tolist(),
            "max": rows.max(axis=0).tolist()}


def dataset_fingerprint(cases: Sequence[dict[str, Any]], label_names: Sequence[str] | None = None,
                        modality: str | None = None) -> dict[str, Any]:
    """Pool :func:`case_fingerprint` records into the dataset fingerprint (see the module docstring)."""
    if not cases:
        raise ValueError("no cases to fingerprint")
    spacing = np.array([c["spacing"] for c in cases], dtype=np.float64)
    shape = np.array([c["shape"] for c in cases], dtype=np.float64)
    counts: dict[int, int] = {}
    for c in cases:
        for v, n in c["class_voxels"].items():
            counts[int(v)] = counts.get(int(v), 0) + int(n)
    names = list(label_names or [])
    class_voxels = {(names[v - 1] if 0 < v <= len(names) else str(v)): n
                    for v, n in sorted(counts.items()) if v not in (0, IGNORE_VALUE)}
    for name in names:  # a class absent from every case is reported with 0 voxels, not left out
        class_voxels.setdefault(name, 0)
    parts = [c["intensity"] for c in cases if c.get("intensity")]
    intensity: dict[str, Any] = {"modality": modality, "voxels": sum(p["voxels"] for p in parts)}
    if parts:
        n = float(intensity["voxels"])
        mean = sum(p["sum"] for p in parts) / n
        var = max(0.0, sum(p["sum_sq"] for p in parts) / n - mean * mean)
        intensity.update(mean=mean, std=math.sqrt(var), min=min(p["min"] for p in parts),
                         max=max(p["max"] for p in parts),
                         **{k: float(np.median([p[k] for p in parts]))
                            for k in ("median", "percentile_00_5", "percentile_99_5")})
    return {"num_cases": len(cases), "spacing": _stats(spacing), "shape": _stats(shape),
            "intensity": intensity, "class_voxels": class_voxels}


def make_plan(shapes: np.ndarray, spacings: np.ndarray, kind: str) -> dict[str, Any]:
    """One plan from per-case shapes and spacings (rows, the plan's axes only); see the module docstring."""
    target = np.median(spacings, axis=0)
    resampled = np.rint(shapes * spacings / target)
    median_shape = [int(v) for v in np.rint(np.median(resampled, axis=0))]
    div, min_side = DIVISOR[kind], MIN_SIDE[kind]
    patch = [max(min_side, -(-s // div) * div) for s in median_shape]
    floor = max(div, min_side)
    while math.prod(patch) > PATCH_VOXELS[kind]:
        extents = [p * float(sp) if p - div >= floor else -1.0 for p, sp in zip(patch, target)]
        axis = int(np.argmax(extents))
        if extents[axis] < 0:
            break
        patch[axis] -= div
    low, high = BATCH_RANGE[kind]
    batch = int(min(high, max(low, BATCH_VOXELS[kind] // math.prod(patch))))
    return {"spacing": [float(s) for s in target], "median_shape": median_shape, "patch_size": patch,
            "batch_size": batch, "divisor": div}


def make_plans(cases: Sequence[dict[str, Any]], label_names: Sequence[str] | None = None,
               modality: str | None = None) -> dict[str, Any]:
    """The whole ``plans.json`` record from the cases' :func:`case_fingerprint` records."""
    fingerprint = dataset_fingerprint(cases, label_names, modality)
    shapes = np.array([c["shape"] for c in cases], dtype=np.float64)
    spacings = np.array([c["spacing"] for c in cases], dtype=np.float64)
    return {"resfu_med_plans": PLANS_FORMAT, "fingerprint": fingerprint,
            "plans": {"2d": make_plan(shapes[:, 1:], spacings[:, 1:], "2d"),
                      "3d": make_plan(shapes, spacings, "3d")}}


def write_plans(root: str | os.PathLike, plans: dict[str, Any]) -> Path:
    """Check ``plans`` and write ``<root>/plans.json`` atomically; returns its path."""
    path = Path(root) / PLANS_FILE
    check_plans(plans, str(path))
    atomic_write_json(path, plans)
    return path


def _positive_ints(value: Any, n: int) -> bool:
    return (isinstance(value, list) and len(value) == n
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value))


def _positive_floats(value: Any, n: int) -> bool:
    return (isinstance(value, list) and len(value) == n
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
                    for v in value))


def check_plans(plans: Any, source: str) -> dict[str, Any]:
    """Check the plans a run uses (the ``plans`` block; the fingerprint is information only).

    Raises:
        InputError: one line naming ``source`` and the first bad key, e.g. ``plans.json: plans.2d.patch_size must
            be 2 positive integers, each a multiple of 16 (got [100, 96])``.
    """
    if not isinstance(plans, dict) or plans.get("resfu_med_plans") != PLANS_FORMAT:
        raise InputError(f"{source}: resfu_med_plans must be {PLANS_FORMAT} (not a resfu-med plans file?)")
    block = plans.get("plans")
    if not isinstance(block, dict):
        raise InputError(f"{source}: plans must be an object with '2d' and '3d' plans")
    for kind, dims in (("2d", 2), ("3d", 3)):
        plan = block.get(kind)
        key = f"plans.{kind}"
        if not isinstance(plan, dict):
            raise InputError(f"{source}: {key} is missing or not an object")
        unknown = sorted(set(plan) - {"spacing", "median_shape", "patch_size", "batch_size", "divisor"})
        if unknown:
            raise InputError(f"{source}: {key}.{unknown[0]} is not a plan key (spacing, median_shape, patch_size, "
                             "batch_size, divisor)")
        div = plan.get("divisor", DIVISOR[kind])
        if not isinstance(div, int) or isinstance(div, bool) or div <= 0:
            raise InputError(f"{source}: {key}.divisor must be a positive integer (got {div!r})")
        if not _positive_floats(plan.get("spacing"), dims):
            raise InputError(f"{source}: {key}.spacing must be {dims} positive numbers in mm (got {plan.get('spacing')!r})")
        if not _positive_ints(plan.get("median_shape"), dims):
            raise InputError(f"{source}: {key}.median_shape must be {dims} positive integers "
                             f"(got {plan.get('median_shape')!r})")
        patch = plan.get("patch_size")
        if not _positive_ints(patch, dims) or any(p % div for p in patch):
            raise InputError(f"{source}: {key}.patch_size must be {dims} positive integers, each a multiple of "
                             f"{div} (got {patch!r})")
        batch = plan.get("batch_size")
        if not isinstance(batch, int) or isinstance(batch, bool) or batch <= 0:
            raise InputError(f"{source}: {key}.batch_size must be a positive integer (got {batch!r})")
    return plans


def read_plans(root: str | os.PathLike) -> dict[str, Any] | None:
    """``<root>/plans.json`` checked (:func:`check_plans`), or ``None`` when the prepared folder has none.

    Raises:
        InputError: not JSON, or a bad key (one line naming the file and the key).
    """
    path = Path(root) / PLANS_FILE
    if not path.is_file():
        return None
    try:
        plans = json.loads(path.read_text())
    except ValueError as err:
        raise InputError(f"{path}: not valid JSON ({err})") from None
    return check_plans(plans, str(path))
