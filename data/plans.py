"""Dataset fingerprint and training plans (nnU-Net's experiment planning, written for this package).

``prepare`` records a per-case fingerprint (shape, spacing, class voxel counts, a deterministic sample of foreground
intensities of the stored image) and, from all training cases, writes ``plans.json`` beside the prepared data::

    {"plans_format": 1, "dataset": ..., "fingerprint": {...},
     "configurations": {"2d": {...}, "3d": {...}}}

- ``fingerprint``: per-axis median / min / max spacing and shape (``(Z, Y, X)``, mm), foreground intensity statistics
  per modality (mean, sd, median, 0.5 / 99.5 percentiles of the stored, already-normalised image), voxel counts per
  class;
- ``2d``: in-plane target spacing = the median in-plane spacing; a square patch whose side is the larger median slice
  side at that spacing rounded up to the network's divisibility (16) and capped by a memory budget
  (``max_patch_pixels``); the batch size filling ``batch_pixels`` (at least 2). Square because TransUNet's positional
  embedding and the 90° rotations of the augmentation need it; a slice smaller than the patch is padded, never zoomed;
- ``3d``: target spacing = the median spacing (for a strongly anisotropic dataset, max/min > 3, the out-of-plane
  axis takes the 10th percentile, as nnU-Net does); patch from the median shape at that spacing, shrunk axis by axis
  (the one largest relative to the median shape first) to ``max_patch_voxels``; DynUNet kernels and strides from
  :func:`get_pool_and_conv_props`; the patch is rounded to every divisibility it needs.

The plan a model trained with is stored in its checkpoint (``config["data"]["plan"]``), so evaluation, inference and
bundles apply exactly that plan. A hand-edited ``plans.json`` is validated on read: a bad value is one line naming
the file and the key.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from resfu_med.atomic import atomic_write_json
from resfu_med.errors import InputError

__all__ = [
    "PLANS_FILE",
    "PLANS_FORMAT",
    "case_fingerprint",
    "dataset_fingerprint",
    "get_pool_and_conv_props",
    "plan_2d",
    "plan_3d",
    "make_plans",
    "validate_plans",
    "validate_plan",
    "write_plans",
    "read_plans",
    "dataset_plans",
]

PLANS_FILE = "plans.json"
PLANS_FORMAT = 1
#: Foreground voxels kept per case for the intensity statistics (a deterministic, evenly spaced subsample).
INTENSITY_SAMPLES = 10_000
DIVISOR = 16  # BasicUNet, TransUNet (ViT patch 16), unet3d and DynUNet's default depth all halve their input 4 times
#: CPU-sized memory budgets (pixels / voxels per patch and per batch); nnU-Net sizes these to a GPU's memory.
MAX_PATCH_PIXELS = 224 * 224
BATCH_PIXELS = 8 * 128 * 128
MAX_PATCH_VOXELS = 96 * 160 * 160
BATCH_VOXELS = 2 * 96 * 160 * 160


def case_fingerprint(image: np.ndarray, label: np.ndarray, spacing: Sequence[float], num_classes: int | None = None
                     ) -> dict[str, Any]:
    """The fingerprint of one ``(Z, Y, X)`` case: shape, spacing, voxels per class, a foreground intensity sample.

    Args:
        image: the image (one modality) or ``(M, Z, Y, X)`` for several modalities.
        label: integer labels ``(Z, Y, X)``, 0 = background.
        spacing: ``(sz, sy, sx)`` in mm.
        num_classes: classes including background (counts for absent classes are 0); default ``label.max() + 1``.
    """
    image = np.asarray(image)
    label = np.asarray(label)
    channels = image[None] if image.ndim == label.ndim else image
    n = int(num_classes) if num_classes is not None else int(label.max()) + 1
    counts = np.bincount(label.reshape(-1).astype(np.int64), minlength=n)
    fg = label > 0
    samples = []
    for ch in channels:
        values = np.asarray(ch[fg], dtype=np.float64)
        if values.size > INTENSITY_SAMPLES:  # evenly spaced, so the fingerprint is a pure function of the data
            values = values[np.linspace(0, values.size - 1, INTENSITY_SAMPLES).astype(np.int64)]
        samples.append([round(float(v), 5) for v in values])
    return {"shape": [int(s) for s in label.shape], "spacing": [float(s) for s in spacing],
            "class_voxels": [int(c) for c in counts], "foreground_intensities": samples}


def _stats(values: Sequence[float]) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"mean": 0.0, "sd": 0.0, "median": 0.0, "p00_5": 0.0, "p99_5": 0.0, "min": 0.0, "max": 0.0}
    return {"mean": float(v.mean()), "sd": float(v.std()), "median": float(np.median(v)),
            "p00_5": float(np.percentile(v, 0.5)), "p99_5": float(np.percentile(v, 99.5)),
            "min": float(v.min()), "max": float(v.max())}


def dataset_fingerprint(cases: Iterable[Mapping[str, Any]], modalities: Sequence[str] | None = None) -> dict[str, Any]:
    """Combine case fingerprints (:func:`case_fingerprint`) into the dataset's.

    Raises:
        ValueError: no cases, or cases with a different number of modalities.
    """
    cases = list(cases)
    if not cases:
        raise ValueError("a fingerprint needs at least one case")
    spacings = np.array([c["spacing"] for c in cases], dtype=np.float64)
    shapes = np.array([c["shape"] for c in cases], dtype=np.float64)
    n = max(len(c["class_voxels"]) for c in cases)
    counts = np.zeros(n, dtype=np.int64)
    for c in cases:
        counts[: len(c["class_voxels"])] += np.asarray(c["class_voxels"], dtype=np.int64)
    n_mod = {len(c.get("foreground_intensities") or []) for c in cases}
    if len(n_mod) > 1:
        raise ValueError(f"cases have different numbers of modalities: {sorted(n_mod)}")
    m = n_mod.pop()
    names = list(modalities) if modalities and len(modalities) == m else [str(i) for i in range(m)]
    intensity = {names[i]: _stats([v for c in cases for v in c["foreground_intensities"][i]]) for i in range(m)}
    return {
        "num_cases": len(cases),
        "spacing": {"median": np.median(spacings, 0).tolist(), "min": spacings.min(0).tolist(),
                    "max": spacings.max(0).tolist(), "p10": np.percentile(spacings, 10, axis=0).tolist()},
        "shape": {"median": np.median(shapes, 0).tolist(), "min": shapes.min(0).astype(int).tolist(),
                  "max": shapes.max(0).astype(int).tolist()},
        "shape_at_median_spacing": np.median(shapes * spacings / np.median(spacings, 0), 0).tolist(),
        "class_voxels": counts.tolist(),
        "foreground_intensity": intensity,
    }


def get_pool_and_conv_props(spacing: Sequence[float], patch_size: Sequence[int], min_feature_map_size: int = 4,
                            max_numpool: int = 5) -> tuple[list[int], list[list[int]], list[list[int]], list[int], list[int]]:
    """Pooling and convolution kernels for a U-Net on ``patch_size`` voxels of ``spacing`` (nnU-Net's rule).

    Each stage halves every axis that is still at least ``2 * min_feature_map_size`` long, not more than twice as
    coarse as the finest such axis, and pooled fewer than ``max_numpool`` times (a lone axis pools only while it is at
    least ``3 * min_feature_map_size``). An axis gets 3-wide kernels once its spacing is within a factor 2 of the
    finest spacing (1 before: thick slices are convolved in-plane only). The patch is padded up to a multiple of
    ``2 ** pools`` on each axis.

    Returns:
        ``(pools per axis, strides per stage (first [1, ...]), kernel per stage, padded patch, divisor per axis)``;
        strides and kernels are DynUNet's ``strides`` and ``kernel_size``.
    """
    dim = len(spacing)
    if len(patch_size) != dim:
        raise ValueError(f"spacing {list(spacing)} and patch_size {list(patch_size)} differ in length")
    cur_spacing = [float(s) for s in spacing]
    cur_size = [int(s) for s in patch_size]
    pools = [0] * dim
    strides: list[list[int]] = [[1] * dim]
    kernels: list[list[int]] = []
    kernel = [1] * dim
    while True:
        valid = [i for i in range(dim) if cur_size[i] >= 2 * min_feature_map_size]
        if not valid:
            break
        finest = min(cur_spacing[i] for i in valid)
        valid = [i for i in valid if cur_spacing[i] / finest < 2 and pools[i] < max_numpool]
        if not valid or (len(valid) == 1 and cur_size[valid[0]] < 3 * min_feature_map_size):
            break
        for d in range(dim):
            if kernel[d] != 3 and cur_spacing[d] / min(cur_spacing) < 2:
                kernel[d] = 3
        stride = [1] * dim
        for i in valid:
            stride[i] = 2
            pools[i] += 1
            cur_spacing[i] *= 2
            cur_size[i] = math.ceil(cur_size[i] / 2)
        strides.append(stride)
        kernels.append(list(kernel))
    kernels.append([3] * dim)
    divisor = [2 ** p for p in pools]
    padded = [int(math.ceil(s / d) * d) for s, d in zip(patch_size, divisor)]
    return pools, strides, kernels, padded, divisor


def _round_up(v: float, d: int) -> int:
    return max(d, int(math.ceil(v / d) * d))


def _shrink(patch: list[int], reference: Sequence[float], budget: int, divisor: Sequence[int]) -> list[int]:
    """Reduce the axis largest relative to ``reference`` by its divisor until the patch holds ``budget`` voxels."""
    patch = list(patch)
    while int(np.prod(patch)) > budget:
        ratios = [p / r if p > d else 0.0 for p, r, d in zip(patch, reference, divisor)]
        axis = int(np.argmax(ratios))
        if ratios[axis] == 0.0:
            break
        patch[axis] -= divisor[axis]
    return patch


def plan_2d(fingerprint: Mapping[str, Any], divisor: int = DIVISOR, max_patch_pixels: int = MAX_PATCH_PIXELS,
            batch_pixels: int = BATCH_PIXELS, max_batch: int = 32) -> dict[str, Any]:
    """The 2D plan (see the module doc): in-plane target spacing, square patch, batch size."""
    sp = fingerprint["spacing"]["median"]
    target = [float(sp[1]), float(sp[2])]
    median = fingerprint["shape_at_median_spacing"]
    side = _round_up(max(median[1], median[2]), divisor)
    cap = max(divisor, int(math.isqrt(int(max_patch_pixels))) // divisor * divisor)
    side = min(side, cap)
    batch = int(min(max_batch, max(2, batch_pixels // (side * side))))
    return {"spatial_dims": 2, "target_spacing": target, "patch_size": [side, side], "batch_size": batch,
            "median_shape": [float(median[1]), float(median[2])], "divisor": int(divisor)}


def plan_3d(fingerprint: Mapping[str, Any], divisor: int = DIVISOR, max_patch_voxels: int = MAX_PATCH_VOXELS,
            batch_voxels: int = BATCH_VOXELS, max_batch: int = 8) -> dict[str, Any]:
    """The 3D plan (see the module doc): target spacing, patch, batch size, DynUNet kernels and strides."""
    sp = [float(s) for s in fingerprint["spacing"]["median"]]
    target = list(sp)
    if max(sp) / min(sp) > 3:  # strongly anisotropic: the coarse axis goes to its 10th percentile (nnU-Net)
        axis = int(np.argmax(sp))
        target[axis] = float(fingerprint["spacing"]["p10"][axis])
    shapes = np.asarray(fingerprint["shape_at_median_spacing"], dtype=np.float64)
    median = (shapes * np.asarray(sp) / np.asarray(target)).tolist()
    patch = [_round_up(m, divisor) for m in median]
    patch = _shrink(patch, median, int(max_patch_voxels), [divisor] * 3)
    _, strides, kernels, patch, pool_div = get_pool_and_conv_props(target, patch)
    patch = [_round_up(p, max(divisor, d)) for p, d in zip(patch, pool_div)]
    batch = int(min(max_batch, max(2, batch_voxels // int(np.prod(patch)))))
    return {"spatial_dims": 3, "target_spacing": target, "patch_size": patch, "batch_size": batch,
            "median_shape": [float(m) for m in median], "divisor": int(divisor),
            "dynunet": {"kernel_size": kernels, "strides": strides}}


def make_plans(fingerprint: Mapping[str, Any], dataset: str = "") -> dict[str, Any]:
    """The ``plans.json`` record: fingerprint plus the 2D and 3D plans."""
    return {"plans_format": PLANS_FORMAT, "dataset": dataset, "fingerprint": dict(fingerprint),
            "configurations": {"2d": plan_2d(fingerprint), "3d": plan_3d(fingerprint)}}


def _positive_list(plan: Mapping[str, Any], key: str, n: int, kind: type, where: str) -> None:
    v = plan.get(key)
    if (not isinstance(v, list) or len(v) != n
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0 for x in v)
            or (kind is int and not all(float(x).is_integer() for x in v))):
        what = "integers" if kind is int else "numbers"
        raise InputError(f"{where}.{key}: expected a list of {n} positive {what}, got {v!r}")


def validate_plan(plan: Any, where: str = "plan") -> dict[str, Any]:
    """Check one configuration (``2d`` / ``3d``) of a plan; returns it as a plain dict.

    Raises:
        InputError: one line naming ``where`` and the bad key.
    """
    if not isinstance(plan, Mapping):
        raise InputError(f"{where}: expected an object, got {type(plan).__name__}")
    dims = plan.get("spatial_dims")
    if dims not in (2, 3) or isinstance(dims, bool):
        raise InputError(f"{where}.spatial_dims: expected 2 or 3, got {dims!r}")
    _positive_list(plan, "target_spacing", dims, float, where)
    _positive_list(plan, "patch_size", dims, int, where)
    divisor = plan.get("divisor", 1)
    if not isinstance(divisor, int) or isinstance(divisor, bool) or divisor < 1:
        raise InputError(f"{where}.divisor: expected a positive integer, got {divisor!r}")
    bad = [int(p) for p in plan["patch_size"] if int(p) % divisor]
    if bad:
        raise InputError(f"{where}.patch_size: {plan['patch_size']} must be multiples of {divisor} (the network "
                         f"halves its input {int(math.log2(divisor))} times)")
    if dims == 2 and plan["patch_size"][0] != plan["patch_size"][1]:
        raise InputError(f"{where}.patch_size: a 2D patch must be square, got {plan['patch_size']}")
    b = plan.get("batch_size")
    if not isinstance(b, int) or isinstance(b, bool) or b < 1:
        raise InputError(f"{where}.batch_size: expected a positive integer, got {b!r}")
    if dims == 3 and "dynunet" in plan:
        dyn = plan["dynunet"]
        ok = isinstance(dyn, Mapping) and all(
            isinstance(dyn.get(k), list) and dyn[k] and all(
                isinstance(s, list) and len(s) == 3 and all(isinstance(x, int) and x in (1, 2, 3) for x in s)
                for s in dyn[k]) for k in ("kernel_size", "strides"))
        if not ok or len(dyn["kernel_size"]) != len(dyn["strides"]):
            raise InputError(f"{where}.dynunet: expected kernel_size and strides, equally long lists of [a, b, c] "
                             f"with entries 1, 2 or 3")
    extra = set(plan) - {"spatial_dims", "target_spacing", "patch_size", "batch_size", "median_shape", "divisor",
                         "dynunet", "configuration"}
    if extra:
        raise InputError(f"{where}.{sorted(extra)[0]}: unknown key")
    return json.loads(json.dumps(dict(plan)))


def validate_plans(plans: Any, path: str | os.PathLike = PLANS_FILE) -> dict[str, Any]:
    """Check a whole ``plans.json`` record (format, configurations); returns it.

    Raises:
        InputError: one line naming ``path`` and the bad key.
    """
    if not isinstance(plans, Mapping):
        raise InputError(f"{path}: expected a JSON object")
    if plans.get("plans_format") != PLANS_FORMAT:
        raise InputError(f"{path}: plans_format: expected {PLANS_FORMAT}, got {plans.get('plans_format')!r}")
    confs = plans.get("configurations")
    if not isinstance(confs, Mapping) or not confs:
        raise InputError(f"{path}: configurations: expected an object with '2d' and/or '3d'")
    for name, plan in confs.items():
        if name not in ("2d", "3d"):
            raise InputError(f"{path}: configurations.{name}: unknown configuration (2d or 3d)")
        validate_plan(plan, f"{path}: configurations.{name}")
        if plan["spatial_dims"] != int(name[0]):
            raise InputError(f"{path}: configurations.{name}.spatial_dims: must be {name[0]}")
    return dict(plans)


def write_plans(root: str | os.PathLike, plans: Mapping[str, Any]) -> Path:
    """Validate and write ``plans.json`` into ``root`` (atomically, indented so it reads and edits by hand)."""
    path = Path(root) / PLANS_FILE
    validate_plans(plans, path)
    atomic_write_json(path, dict(plans))
    return path


def read_plans(root: str | os.PathLike) -> dict[str, Any] | None:
    """The validated ``plans.json`` of a prepared root, or ``None`` when it has none.

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
    return validate_plans(plans, path)


def dataset_plans(dataset: str, root: str | os.PathLike) -> dict[str, Any]:
    """The plans of a prepared dataset: its ``plans.json``, or (a folder prepared before plans existed, the demo,
    TransUNet's own release) plans computed in memory from its training cases — the input folder is never written.

    Spacings come from ``dataset.json``'s per-case records; a case without one is taken as 1 mm isotropic.
    """
    plans = read_plans(root)
    if plans is not None:
        return plans
    from resfu_med.data.layout import read_dataset_json
    from resfu_med.data.registry import get_dataset

    meta = read_dataset_json(root) or {}
    cases_meta = meta.get("cases") or {}
    ds = get_dataset(dataset, str(root), "train", volumes=True)
    cases = []
    for i in range(len(ds)):
        item = ds[i]
        spacing = (cases_meta.get(str(item.get("case")), {}) or {}).get("spacing") or item.get("spacing") or (1.0,) * 3
        cases.append(case_fingerprint(np.asarray(item["image"]), np.asarray(item["label"]), spacing))
    return make_plans(dataset_fingerprint(cases, [str(meta.get("modality") or "0")]), dataset)
