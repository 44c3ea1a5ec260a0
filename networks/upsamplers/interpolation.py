"""Parameter-free upsamplers: (bi/tri)linear and nearest interpolation, any dimension, any size."""

from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import linear_mode, target_size

__all__ = ["Interpolate"]


class Interpolate(nn.Module):
    """``F.interpolate`` behind the registry interface; the guide only sets the output size.

    Args:
        spatial_dims: 1, 2 or 3.
        scale: ratio per axis used when neither ``size`` nor ``guide`` is passed to ``forward``.
        mode: ``"linear"`` (bilinear/trilinear by dimension) or ``"nearest"``.
        align_corners: for the linear mode (the original TransUNet decoder uses ``True``); ignored for nearest.

    Example::

        >>> up = Interpolate(2, (2.0, 2.0), "linear", align_corners=True)
        >>> up(torch.rand(1, 8, 14, 14)).shape
        torch.Size([1, 8, 28, 28])
    """

    def __init__(self, spatial_dims: int, scale: List[float], mode: str = "linear", align_corners: bool = False) -> None:
        super().__init__()
        if mode not in ("linear", "nearest"):
            raise ValueError(f"mode must be 'linear' or 'nearest', got {mode!r}.")
        self.mode = linear_mode(spatial_dims) if mode == "linear" else "nearest"
        self.align_corners = bool(align_corners) if mode == "linear" else None
        self.scale = [float(s) for s in scale]

    def forward(self, x: torch.Tensor, guide: Optional[torch.Tensor] = None, size: Optional[List[int]] = None) -> torch.Tensor:
        out_size = target_size(x, guide, size, self.scale)
        return F.interpolate(x, size=out_size, mode=self.mode, align_corners=self.align_corners)
