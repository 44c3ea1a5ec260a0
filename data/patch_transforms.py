"""Patch pipelines: native-resolution slice patches for 2D models (the plan pipeline) and 3D patches for volumetric
models.

2D (:func:`get_slice_patch_transforms`, ``data.pipeline: plan``): each training slice ``{"image": (1, H, W),
"label": (1, H, W), "case"}`` is resampled in-plane to the plan's target spacing when its case's spacing differs
(image cubic, label nearest: as the inferer resamples, so training and inference see the same scale), padded
to the plan's patch when smaller (never zoomed), and one patch is cropped: with probability ``fg_fraction``
centred on a voxel of a foreground class drawn uniformly among the classes present in the slice, otherwise on a
background voxel (a slice without foreground: always). Augmentation (nnU-Net's, reduced for a CPU): a random multiple of 90° plus a flip of a random axis
(the quarter turn for square patches only; probability 0.5), a small rotation in [−20°, 20°] (0.2), a scaling in [0.7, 1.4] (0.2); labels by nearest
neighbour only. Output ``{"image": float32 (1, P, P), "label": int64 (1, P, P)}``.

The 3D patch pipeline for volumetric models (``--model unet3d``) as MONAI dictionary transforms.

Input: a training volume ``{"image": (Z, Y, X), "label": (Z, Y, X), ...}`` (the slices of one case stacked back,
``get_dataset(..., volumes=True)``), already intensity-normalised like the 2D slices. Train: add the channel axis, pad
to at least the patch size, draw ``num_samples`` patches with ``RandCropByPosNegLabeld`` (half centred on a foreground
voxel, half on a body voxel, ``pos = neg = 1``) or, with ``fg_oversample = p`` (``train.fg_oversample``), class-balanced
with ``RandCropByLabelClassesd`` (a share ``p`` of the patches centred on a voxel of a foreground class drawn
uniformly among the classes present in the volume, ``1 - p`` on a body voxel), then the in-plane half of TransUNet's augmentation: with probability
0.5 a random multiple of 90° in the axial plane (square in-plane patches only) followed by a flip of a random in-plane
axis. The small-angle rotation
of the 2D pipeline is left out in 3D: resampling a whole patch per sample costs more than the network step on a CPU,
and the right-angle branch already covers the orientation changes. With ``target_spacing`` (the plan pipeline,
``data.pipeline: plan``) each volume is first resampled to the 3D plan's spacing (image trilinear, label nearest;
a deterministic step, so MONAI's cache keeps its result), as :func:`resfu_med.engine.inferer.predict_volume`
resamples a scan before its sliding windows; without it patches stay on the volume's own voxel grid, the grid
:func:`resfu_med.engine.inferer.predict_volume_3d` predicts on. Either way training and inference see the same
scale. Val: channel axis and padding only.

The output of ``train`` is a list of ``num_samples`` dicts ``{"image": float32 (1, *patch), "label": int64
(1, *patch)}``; MONAI's ``DataLoader`` (``list_data_collate``) flattens it, so a batch of ``B`` volumes gives
``B * num_samples`` patches.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from monai.transforms import (
    CastToTyped,
    Compose,
    EnsureTyped,
    MapTransform,
    OneOf,
    RandCropByLabelClassesd,
    RandCropByPosNegLabeld,
    Randomizable,
    RandFlipd,
    RandRotate90d,
    RandRotated,
    RandZoomd,
    SpatialPadd,
)
from scipy.ndimage import zoom

__all__ = ["get_patch_transforms", "get_slice_patch_transforms", "ResampleSliced", "ResampleVolumed", "AddChanneld",
           "check_patch_size"]

KEYS = ("image", "label")


class AddChanneld(MapTransform):
    """``(Z, Y, X)`` → ``(1, Z, Y, X)`` for the given keys (a module-level class, so DataLoader workers can pickle it)."""

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = d[key][None]
        return d


def check_patch_size(patch_size: Sequence[int], divisor: int = 1) -> tuple[int, int, int]:
    """Return ``patch_size`` as three positive ints, each a multiple of ``divisor``.

    Raises:
        ValueError: not three positive integers, or one is not a multiple of ``divisor``.
    """
    try:
        size = tuple(int(v) for v in patch_size)
        ok = len(size) == 3 and all(v > 0 and v == float(w) for v, w in zip(size, patch_size))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"patch size must be three positive integers (Z, Y, X), got {patch_size!r}")
    if any(v % divisor for v in size):
        raise ValueError(f"patch size {list(size)}: every side must be a multiple of {divisor} (the network halves "
                         f"its input {int(np.log2(divisor))} times)")
    return size  # type: ignore[return-value]


def _crop(size: tuple[int, int, int], num_samples: int, fg: float | None, num_classes: int | None) -> MapTransform:
    keys = list(KEYS)
    if fg is None:
        return RandCropByPosNegLabeld(keys=keys, label_key="label", spatial_size=size, pos=1.0, neg=1.0,
                                      num_samples=num_samples, image_key="image", image_threshold=0.0)
    if not 0.0 <= float(fg) <= 1.0:
        raise ValueError(f"fg_oversample must be in [0, 1], got {fg}")
    if num_classes is None or int(num_classes) < 2:
        raise ValueError(f"fg_oversample needs num_classes >= 2 (background included), got {num_classes}")
    k = int(num_classes) - 1
    ratios = [1.0 - float(fg)] + [float(fg) / k] * k
    return RandCropByLabelClassesd(keys=keys, label_key="label", spatial_size=size, ratios=ratios,
                                   num_classes=int(num_classes), num_samples=num_samples, image_key="image",
                                   image_threshold=0.0, warn=False)


def get_patch_transforms(
    phase: str, patch_size: Sequence[int] = (96, 96, 96), num_samples: int = 2, seed: int | None = None,
    fg_oversample: float | None = None, num_classes: int | None = None,
    target_spacing: Sequence[float] | None = None, spacings: Mapping[str, Sequence[float]] | None = None,
) -> Compose:
    """Build the 3D patch pipeline of ``phase`` (see the module doc).

    Args:
        phase: ``"train"`` (patches + augmentation) or ``"val"`` (channel axis + padding).
        patch_size: ``(Z, Y, X)`` patch size in voxels.
        num_samples: patches drawn per volume and call (``train``).
        seed: if given, seeds every random transform (``Compose.set_random_state``).
        fg_oversample: ``None``: half foreground, half body patch centres (``RandCropByPosNegLabeld``); a number
            ``p`` in [0, 1]: class-balanced centres (``RandCropByLabelClassesd``), ``p`` spread evenly over the
            foreground classes (a class missing from a volume gives its share to the others), ``1 - p`` on body
            voxels of the background.
        num_classes: classes including background; required with ``fg_oversample``.
        target_spacing: the 3D plan's ``(sz, sy, sx)`` (``data.pipeline: plan``): each volume is first resampled to
            it from its case's spacing (:class:`ResampleVolumed`); ``None``: volumes stay on their own grid.
        spacings: case → ``(sz, sy, sx)`` of the training cases (with ``target_spacing``).

    Returns:
        A MONAI ``Compose`` over volume dicts.

    Raises:
        ValueError: unknown ``phase``, a bad ``patch_size``, ``num_samples < 1``, ``fg_oversample`` outside [0, 1]
            or without ``num_classes >= 2``.

    Example:
        >>> xform = get_patch_transforms("train", (32, 64, 64), num_samples=2)
        >>> patches = xform({"image": np.zeros((40, 128, 128), np.float32), "label": np.zeros((40, 128, 128), np.uint8)})
        >>> [tuple(p["image"].shape) for p in patches]
        [(1, 32, 64, 64), (1, 32, 64, 64)]
    """
    if phase not in ("train", "val"):
        raise ValueError(f"phase must be 'train' or 'val', got {phase!r}")
    size = check_patch_size(patch_size)
    if int(num_samples) < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    keys = list(KEYS)
    steps: list = [
        *([ResampleVolumed(target_spacing, spacings)] if target_spacing is not None else []),
        AddChanneld(keys=keys),
        EnsureTyped(keys=keys, track_meta=False),
        CastToTyped(keys=keys, dtype=(torch.float32, torch.float32)),
        SpatialPadd(keys=keys, spatial_size=size),
    ]
    if phase == "train":
        steps.append(_crop(size, int(num_samples), fg_oversample, num_classes))
        # k uniform in {0..3} in the axial plane; a non-square patch only flips (a quarter turn would change its shape)
        rotate = [RandRotate90d(keys=keys, prob=0.75, max_k=3, spatial_axes=(1, 2))] if size[1] == size[2] else []
        rot_flip = Compose([
            *rotate,
            OneOf([RandFlipd(keys=keys, prob=1.0, spatial_axis=1), RandFlipd(keys=keys, prob=1.0, spatial_axis=2)]),
        ])
        steps.append(OneOf([rot_flip, Compose([])], weights=[0.5, 0.5]))
    steps += [CastToTyped(keys=keys, dtype=(torch.float32, torch.int64)), EnsureTyped(keys=keys, track_meta=False)]
    xform = Compose(steps)
    if seed is not None:
        xform.set_random_state(seed=int(seed))
    return xform


def spacing_factors(spacing: Sequence[float] | None, target: Sequence[float]) -> tuple[float, ...] | None:
    """Zoom factors taking an array of ``spacing`` to ``target``, over the last ``len(target)`` axes of ``spacing``
    (a slice: ``(fy, fx)`` of ``(sz, sy, sx)``); ``None`` when they are all within 0.1 % of 1 or ``spacing`` is
    unknown."""
    if spacing is None:
        return None
    own = list(spacing)[-len(target):]
    f = tuple(float(s) / float(t) for s, t in zip(own, target))
    return None if all(abs(v - 1.0) < 1e-3 for v in f) else f


def resample_array(a: np.ndarray, factors: Sequence[float], order: int) -> np.ndarray:
    """Zoom an array by ``factors`` (output size ``round(n * f)``, at least 1) with spline ``order``."""
    shape = [max(1, int(round(n * f))) for n, f in zip(a.shape, factors)]
    return zoom(a, [t / n for t, n in zip(shape, a.shape)], order=order)  # as the inferer resamples (_zoom_to)


class ResampleSliced(MapTransform):
    """Resample a ``(1, H, W)`` slice item to ``target_spacing`` using its case's in-plane spacing.

    Args:
        target_spacing: ``(sy, sx)`` mm.
        spacings: case name → ``(sy, sx)``; a case not listed (or ``None``) is taken to be at the target spacing.
    """

    def __init__(self, target_spacing: Sequence[float], spacings: Mapping[str, Sequence[float]] | None = None) -> None:
        super().__init__(keys=list(KEYS))
        self.target = (float(target_spacing[0]), float(target_spacing[1]))
        self.spacings = {str(k): (float(v[-2]), float(v[-1])) for k, v in (spacings or {}).items() if v is not None}

    def __call__(self, data: dict) -> dict:
        factors = spacing_factors(self.spacings.get(str(data.get("case"))), self.target)
        if factors is None:
            return data
        d = dict(data)
        d["image"] = resample_array(np.asarray(d["image"], dtype=np.float32)[0], factors, 3)[None]
        d["label"] = resample_array(np.asarray(d["label"])[0], factors, 0)[None]
        return d


class ResampleVolumed(MapTransform):
    """Resample a ``(Z, Y, X)`` volume item to ``target_spacing`` ``(sz, sy, sx)`` using its case's spacing: image
    trilinear, label nearest (as :func:`resfu_med.engine.inferer.predict_volume` resamples a 3D plan's input).

    Args:
        target_spacing: ``(sz, sy, sx)`` mm.
        spacings: case name → ``(sz, sy, sx)``; a case not listed (or ``None``) is taken to be at the target spacing.
    """

    def __init__(self, target_spacing: Sequence[float], spacings: Mapping[str, Sequence[float]] | None = None) -> None:
        super().__init__(keys=list(KEYS))
        if len(target_spacing) != 3:
            raise ValueError(f"target_spacing must be (sz, sy, sx), got {target_spacing!r}")
        self.target = tuple(float(v) for v in target_spacing)
        self.spacings = {str(k): tuple(float(x) for x in v) for k, v in (spacings or {}).items() if v is not None}

    def __call__(self, data: dict) -> dict:
        factors = spacing_factors(self.spacings.get(str(data.get("case"))), self.target)
        if factors is None:
            return data
        d = dict(data)
        d["image"] = resample_array(np.asarray(d["image"], dtype=np.float32), factors, 1)
        d["label"] = resample_array(np.asarray(d["label"]), factors, 0)
        return d


class _OneCrop(Randomizable, MapTransform):
    """A one-sample MONAI crop returning its dict rather than a one-element list (slices stay one item each)."""

    def __init__(self, crop: RandCropByLabelClassesd) -> None:
        MapTransform.__init__(self, keys=list(KEYS))
        self.crop = crop

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> _OneCrop:
        self.crop.set_random_state(seed, state)
        return self

    def randomize(self, data: object = None) -> None:
        pass

    def __call__(self, data: dict) -> dict:
        return self.crop(data)[0]


def get_slice_patch_transforms(
    phase: str, patch_size: int | Sequence[int], target_spacing: Sequence[float] = (1.0, 1.0),
    spacings: Mapping[str, Sequence[float]] | None = None, num_classes: int = 2, fg_fraction: float = 0.5,
    seed: int | None = None,
) -> Compose:
    """Build the native-resolution 2D patch pipeline of ``phase`` (see the module doc).

    Args:
        phase: ``"train"`` (resample, pad, crop, augment) or ``"val"`` (resample and pad only).
        patch_size: the plan's patch ``(py, px)`` (or one int: square).
        target_spacing: the plan's in-plane spacing ``(sy, sx)``.
        spacings: case → in-plane spacing ``(sy, sx)`` (or ``(sz, sy, sx)``) of the training cases.
        num_classes: classes including background.
        fg_fraction: share of patches centred on a foreground class drawn uniformly among those present.
        seed: if given, seeds every random transform.

    Raises:
        ValueError: unknown ``phase``, a bad patch size, ``fg_fraction`` outside [0, 1] or ``num_classes < 2``.
    """
    if phase not in ("train", "val"):
        raise ValueError(f"phase must be 'train' or 'val', got {phase!r}")
    side = [int(patch_size)] * 2 if isinstance(patch_size, (int, np.integer)) else [int(v) for v in patch_size]
    if len(side) != 2 or min(side) < 1:
        raise ValueError(f"patch_size must be one positive int or two, got {patch_size!r}")
    if not 0.0 <= float(fg_fraction) <= 1.0:
        raise ValueError(f"fg_fraction must be in [0, 1], got {fg_fraction}")
    if int(num_classes) < 2:
        raise ValueError(f"num_classes must be >= 2 (background included), got {num_classes}")
    keys = list(KEYS)
    steps: list = [
        ResampleSliced(target_spacing, spacings),
        EnsureTyped(keys=keys, track_meta=False),
        CastToTyped(keys=keys, dtype=(torch.float32, torch.float32)),
        SpatialPadd(keys=keys, spatial_size=side),
    ]
    if phase == "train":
        k = int(num_classes) - 1
        # a quarter turn only for a square patch (it would change a rectangle's shape); flips always
        rotate = [RandRotate90d(keys=keys, prob=0.75, max_k=3, spatial_axes=(0, 1))] if side[0] == side[1] else []
        ratios = [1.0 - float(fg_fraction)] + [float(fg_fraction) / k] * k
        steps += [
            _OneCrop(RandCropByLabelClassesd(keys=keys, label_key="label", spatial_size=side, ratios=ratios,
                                             num_classes=int(num_classes), num_samples=1, warn=False)),
            OneOf([Compose([*rotate,
                            OneOf([RandFlipd(keys=keys, prob=1.0, spatial_axis=0),
                                   RandFlipd(keys=keys, prob=1.0, spatial_axis=1)])]),
                   Compose([])], weights=[0.5, 0.5]),
            RandRotated(keys=keys, range_x=math.radians(20.0), prob=0.2, mode=("bilinear", "nearest"),
                        padding_mode="zeros"),
            RandZoomd(keys=keys, prob=0.2, min_zoom=0.7, max_zoom=1.4, mode=("bilinear", "nearest"),
                      padding_mode="constant", keep_size=True),
        ]
    steps += [CastToTyped(keys=keys, dtype=(torch.float32, torch.int64)), EnsureTyped(keys=keys, track_meta=False)]
    xform = Compose(steps)
    if seed is not None:
        xform.set_random_state(seed=int(seed))
    return xform
