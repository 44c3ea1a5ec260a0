"""The TransUNet 2D training pipeline (docs/datasets.md) as MONAI dictionary transforms.

Train: with probability 0.5 a random multiple of 90° rotation (k ∈ {0, 1, 2, 3} uniformly) followed by a flip of a
random in-plane axis, otherwise with probability 0.5 a random rotation in [−20°, 20°] (bilinear image, nearest label,
zero padding), which is TransUNet's ``RandomGenerator``; then a resize to ``img_size`` (bicubic image, nearest label).
Val: only the resize. Labels are never interpolated other than by nearest neighbour.

The output is ``{"image": float32 tensor (1, S, S), "label": int64 tensor (1, S, S), ...}``. The image keeps one
channel: the 1→3 repeat that TransUNet's ImageNet-pretrained R50 expects is done inside the network
(``resfu_med.networks.TransUNet`` accepts 1 or 3 channels), so 1-channel models (U-Net) use the same pipeline.

Seeding: ``get_transforms(..., seed=s)`` calls MONAI's ``set_random_state(seed=s)``; ``monai.utils.set_determinism``
plus MONAI's ``DataLoader`` (which reseeds each worker) make whole runs reproducible.
"""

from __future__ import annotations

import math

import torch
from monai.transforms import (
    CastToTyped,
    Compose,
    EnsureTyped,
    OneOf,
    RandFlipd,
    RandRotate90d,
    RandRotated,
    Resized,
)

from .registry import DatasetInfo

__all__ = ["get_transforms"]

KEYS = ("image", "label")


def get_transforms(dataset: str | DatasetInfo, phase: str, img_size: int = 224, seed: int | None = None) -> Compose:
    """Build the 2D slice pipeline of ``phase`` for ``dataset``.

    Args:
        dataset: a dataset name (``synapse acdc msd demo``) or a :class:`DatasetInfo`; all 2D datasets share the
            TransUNet pipeline, the argument is kept so per-dataset choices can be added without changing callers.
        phase: ``"train"`` (augmentation + resize) or ``"val"`` (resize only).
        img_size: output side length ``S``.
        seed: if given, seeds every random transform (``Compose.set_random_state``).

    Returns:
        A MONAI ``Compose`` over slice dicts ``{"image": (1, H, W), "label": (1, H, W)}``.

    Raises:
        ValueError: unknown ``phase`` or ``img_size < 1``.
    """
    if phase not in ("train", "val"):
        raise ValueError(f"phase must be 'train' or 'val', got {phase!r}")
    if int(img_size) < 1:
        raise ValueError(f"img_size must be positive, got {img_size}")
    keys = list(KEYS)
    steps: list = [EnsureTyped(keys=keys, track_meta=False), CastToTyped(keys=keys, dtype=(torch.float32, torch.float32))]
    if phase == "train":
        rot_flip = Compose(
            [
                RandRotate90d(keys=keys, prob=0.75, max_k=3, spatial_axes=(0, 1)),  # k=0 w.p. 1/4, else 1..3: uniform
                OneOf([RandFlipd(keys=keys, prob=1.0, spatial_axis=0), RandFlipd(keys=keys, prob=1.0, spatial_axis=1)]),
            ]
        )
        rotate = RandRotated(
            keys=keys, range_x=math.radians(20.0), prob=0.5, mode=("bilinear", "nearest"), padding_mode="zeros"
        )
        steps.append(OneOf([rot_flip, rotate], weights=[0.5, 0.5]))
    steps += [
        Resized(keys=keys, spatial_size=(int(img_size), int(img_size)), mode=("bicubic", "nearest")),
        CastToTyped(keys=keys, dtype=(torch.float32, torch.int64)),
        EnsureTyped(keys=keys, track_meta=False),
    ]
    xform = Compose(steps)
    if seed is not None:
        xform.set_random_state(seed=int(seed))
    return xform

