"""The 3D patch pipeline for volumetric models (``--model unet3d``) as MONAI dictionary transforms.

Input: a training volume ``{"image": (Z, Y, X), "label": (Z, Y, X), ...}`` (the slices of one case stacked back,
``get_dataset(..., volumes=True)``), already intensity-normalised like the 2D slices. Train: add the channel axis, pad
to at least the patch size, draw ``num_samples`` patches with ``RandCropByPosNegLabeld`` (half centred on a foreground
voxel, half on a body voxel, ``pos = neg = 1``), then the in-plane half of TransUNet's augmentation: with probability
0.5 a random multiple of 90° in the axial plane (square in-plane patches only) followed by a flip of a random in-plane
axis. The small-angle rotation
of the 2D pipeline is left out in 3D: resampling a whole patch per sample costs more than the network step on a CPU,
and the right-angle branch already covers the orientation changes. Patches stay on the volume's own voxel grid, the
grid :func:`resfu_med.engine.predictor.predict_volume_3d` predicts on, so training and inference see the same
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


def get_patch_transforms(
    phase: str, patch_size: Sequence[int] = (96, 96, 96), num_samples: int = 2, seed: int | None = None
) -> Compose:
    """Build the 3D patch pipeline of ``phase`` (see the module doc).

    Args:
        phase: ``"train"`` (patches + augmentation) or ``"val"`` (channel axis + padding).
        patch_size: ``(Z, Y, X)`` patch size in voxels.
        num_samples: patches drawn per volume and call (``train``).
        seed: if given, seeds every random transform (``Compose.set_random_state``).

    Returns:
        A MONAI ``Compose`` over volume dicts.

    Raises:
        ValueError: unknown ``phase``, a bad ``patch_size`` or ``num_samples < 1``.

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
        steps.append(
            RandCropByPosNegLabeld(keys=keys, label_key="label", spatial_size=size, pos=1.0, neg=1.0,
                                   num_samples=int(num_samples), image_key="image", image_threshold=0.0)
        )
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
