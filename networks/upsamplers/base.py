"""Shared size logic of the upsampler registry: every module answers ``forward(x, guide=None, size=None)``.

The output size is, in this order of precedence: ``size`` when given, else the guide's spatial size when a guide is
given, else ``scale`` times x's size. Fixed-ratio learned upsamplers (deconv, pixel shuffle, CARAFE, SAPA's integer
grid) produce ``scale`` times x and are then fitted to the requested size by :func:`match_size` — the same
replicate padding MONAI's ``UpCat`` applies for odd encoder sizes, so ``BasicUNet`` keeps MONAI's behaviour.
"""

from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F

from resfu_med.networks.blocks.linear_upsample import linear_mode
from resfu_med.networks.blocks.padding import replicate_pad

__all__ = ["target_size", "match_size", "linear_mode"]


def target_size(x: torch.Tensor, guide: Optional[torch.Tensor], size: Optional[List[int]], scale: List[float]) -> List[int]:
    """Spatial output size of an upsampler call (see the module docstring for the precedence).

    Args:
        x: the low-resolution input ``(N, C, *spatial)``.
        guide: optional high-resolution guide ``(N, c, *spatial)``.
        size: optional explicit output size, one entry per spatial dimension.
        scale: per-axis ratio used when neither ``size`` nor ``guide`` is given.

    Returns:
        The output size as a list of ints.
    """
    if size is not None:
        return [int(s) for s in size]
    if guide is not None:
        return [int(s) for s in guide.shape[2:]]
    out: List[int] = []
    for i in range(x.dim() - 2):
        out.append(int(x.shape[i + 2] * scale[i]))
    return out


def match_size(y: torch.Tensor, size: List[int]) -> torch.Tensor:
    """Fit ``y`` to ``size`` by replicate-padding at the end of an axis (or cropping there).

    Args:
        y: ``(N, C, *spatial)``.
        size: wanted spatial size.

    Returns:
        ``y`` unchanged when it already has ``size``; otherwise padded/cropped at the trailing border.
    """
    dims = y.dim() - 2
    pad: List[int] = [0] * (2 * dims)
    need = False
    for i in range(dims):
        diff = size[dims - 1 - i] - y.shape[y.dim() - 1 - i]
        if diff != 0:
            need = True
        pad[2 * i + 1] = diff
    if not need:
        return y
    crop = [min(p, 0) for p in pad]
    if min(crop) < 0:
        y = F.pad(y, crop)  # negative padding crops
    grow = [max(p, 0) for p in pad]
    if max(grow) > 0:
        y = replicate_pad(y, grow)
    return y


