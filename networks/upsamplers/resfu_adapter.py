"""Registry adapter for ReSFU (``resfu_med.networks.resfu.ReSFU``, imported lazily so this package loads alone)."""

from __future__ import annotations

from typing import Any, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import linear_mode, target_size

__all__ = ["ReSFUUpsampler"]


class ReSFUUpsampler(nn.Module):
    """ReSFU behind the registry interface: output at ``size`` if given, else at the guide's size.

    When ``size`` differs from the guide's size, the guide is first resampled to ``size`` (area pooling when
    shrinking, linear interpolation when growing) so that ReSFU's output, which always has the guide's size, lands
    at ``size``.

    Args:
        in_channels: channels of x.
        guide_channels: channels of the guide.
        spatial_dims: 2 or 3.
        kwargs: passed to ``ReSFU`` (``kernel_size``, ``embed_dim``, ``groups``, ``pcdc_channels``, ...).
    """

    def __init__(self, in_channels: int, guide_channels: int, spatial_dims: int = 2, **kwargs: Any) -> None:
        super().__init__()
        from resfu_med.networks.resfu import ReSFU  # lazy: the operator layer may be built later

        self.spatial_dims = int(spatial_dims)
        self.interp = linear_mode(spatial_dims)
        self.resfu = ReSFU(in_channels, guide_channels, spatial_dims=spatial_dims, **kwargs)

    def forward(self, x: torch.Tensor, guide: Optional[torch.Tensor] = None, size: Optional[List[int]] = None) -> torch.Tensor:
        if guide is None:
            raise ValueError("ReSFU needs a guide tensor (the high-resolution feature).")
        out_size = target_size(x, guide, size, [1.0] * self.spatial_dims)
        if out_size != [int(s) for s in guide.shape[2:]]:
            shrink = all(o <= int(g) for o, g in zip(out_size, guide.shape[2:]))
            if shrink:
                guide = F.adaptive_avg_pool2d(guide, out_size) if self.spatial_dims == 2 else F.adaptive_avg_pool3d(guide, out_size)
            else:
                guide = F.interpolate(guide, size=out_size, mode=self.interp, align_corners=False)
        return self.resfu(x, guide)
