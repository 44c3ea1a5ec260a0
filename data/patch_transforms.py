"""The 3D patch pipeline for volumetric models (``--model unet3d``) as MONAI dictionary transforms.

Input: a training volume ``{"image": (Z, Y, X), "label": (Z, Y, X), ...}`` (the slices of one case stacked back,
``get_dataset(..., volumes=True)``), already intensity-normalised like the 2D slices. Train: add the channel axis, pad
to at least the patch size, draw ``num_samples`` patches with ``RandCropByPosNegLabeld`` (half centred on a foreground
voxel, half on a body voxel, ``pos = neg = 1``) or, with ``fg_oversample = p`` (``train.fg_oversample``), class-balanced
with ``RandCropByLabelClassesd`` (a share ``p`` of the patches centred on a voxel of a foreground class drawn
uniformly among the classes present in the volume, ``1 - p`` on a body voxel), then the in-plane half of TransUNet's augmentation: with probability
0.5 a random multiple of 90° in the axial plane (square in-plane patches only) followed by a flip of a random in-plane
axis. The small-angle rotation
of the 2D pipeline is left out in 3D: resampling a whole patch per sample costs more than the network step on a CPU,
and the right-angle branch already covers the orientation changes. Patches stay on the volume's own voxel grid, the
grid :func:`resfu_med.engine.inferer.predict_volume_3d` predicts on, so training and inference see the same
scale. Val: channel axis and padding only.

The output of ``train`` is a list of ``num_samples`` dicts ``{"image": float32 (1, *patch), "label": int64
(1, *patch)}``; MONAI's ``DataLoader`` (``list_data_collate``) flattens it, so a batch of ``B`` volumes gives
``B * num_samples`` patches.
"""

from __future__ import annotations

from collections.abc import Sequence

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
    RandFlipd,
    RandRotate90d,
    SpatialPadd,
)

__all__ = ["get_patch_transforms", "AddChanneld", "check_patch_size"]

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
