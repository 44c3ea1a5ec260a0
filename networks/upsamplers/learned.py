"""Learned fixed-ratio upsamplers from MONAI blocks: transposed convolution and sub-pixel convolution."""

from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn as nn
from monai.networks.blocks import SubpixelUpsample, UpSample

from .base import match_size, target_size

__all__ = ["Deconv", "PixelShuffleUp"]


class Deconv(nn.Module):
    """Transposed convolution with kernel = stride = scale (MONAI ``UpSample(mode="deconv")``).

    Args:
        spatial_dims: 1, 2 or 3.
        in_channels: channels of x.
        out_channels: output channels (default ``in_channels``).
        scale: integer ratio per axis.

    Example::

        >>> Deconv(3, 8, 4, [2, 2, 2])(torch.rand(1, 8, 4, 4, 4)).shape
        torch.Size([1, 4, 8, 8, 8])
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: Optional[int], scale: List[int]) -> None:
        super().__init__()
        self.scale = [float(s) for s in scale]
        self.up = UpSample(spatial_dims, in_channels, out_channels or in_channels, tuple(int(s) for s in scale), mode="deconv")

    def forward(self, x: torch.Tensor, guide: Optional[torch.Tensor] = None, size: Optional[List[int]] = None) -> torch.Tensor:
        return match_size(self.up(x), target_size(x, guide, size, self.scale))


class PixelShuffleUp(nn.Module):
    """Sub-pixel convolution (Shi et al. 2016): 3×3 conv to ``out·r^d`` channels, then periodic shuffle.

    MONAI's ``SubpixelUpsample`` (ICNR-initialised) without its optional blur, i.e. the plain "PixelShuffle" peer.

    Args:
        spatial_dims: 1, 2 or 3.
        in_channels: channels of x.
        out_channels: output channels (default ``in_channels``).
        scale: integer ratio, the same on every axis.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: Optional[int], scale: int) -> None:
        super().__init__()
        self.scale = [float(scale)] * spatial_dims
        self.up = SubpixelUpsample(spatial_dims, in_channels, out_channels or in_channels, int(scale), apply_pad_pool=False)

    def forward(self, x: torch.Tensor, guide: Optional[torch.Tensor] = None, size: Optional[List[int]] = None) -> torch.Tensor:
        return match_size(self.up(x), target_size(x, guide, size, self.scale))
