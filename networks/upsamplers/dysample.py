"""DySample: dynamic point sampling (Liu et al., ICCV 2023), "LP" style, written from the paper.

A 1×1 linear layer predicts 2·g·σ² offsets per LR pixel, scaled by the static scope factor 0.25 (or, with
``dyscope=True``, by 0.5·sigmoid of a second linear layer, the paper's "+" variant); the offsets plus the bilinear
initial positions are pixel-shuffled to (2g, σh, σw) and added to the HR sampling grid (in LR pixel units); x is then
sampled with ``grid_sample`` (bilinear, border), separately for each of the g channel groups. With zero offsets
every sample lands where ``F.interpolate(bilinear, align_corners=False)`` samples — the paper's initialisation.
"""

from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import match_size, target_size

__all__ = ["DySample"]


class DySample(nn.Module):
    """DySample upsampler (2D, integer ratio).

    Args:
        in_channels: channels of x, divisible by ``groups``.
        scale: integer ratio σ.
        groups: g, channel groups that share offsets (paper default 4).
        dyscope: use the dynamic scope factor (DySample+) instead of the static 0.25.

    Example::

        >>> DySample(16, 2)(torch.rand(1, 16, 7, 7)).shape
        torch.Size([1, 16, 14, 14])
    """

    def __init__(self, in_channels: int, scale: int = 2, groups: int = 4, dyscope: bool = False) -> None:
        super().__init__()
        if in_channels % groups != 0:
            raise ValueError(f"in_channels ({in_channels}) must be divisible by groups ({groups}).")
        self.ratio = int(scale)
        self.groups = int(groups)
        self.dyscope = bool(dyscope)
        self.scale = [float(scale), float(scale)]
        out = 2 * groups * self.ratio**2
        self.offset = nn.Conv2d(in_channels, out, 1)
        nn.init.normal_(self.offset.weight, std=0.001)
        nn.init.zeros_(self.offset.bias)
        self.scope = nn.Conv2d(in_channels, out, 1) if dyscope else None
        if self.scope is not None:
            nn.init.zeros_(self.scope.weight)
            nn.init.zeros_(self.scope.bias)
        # Initial position of sub-pixel s inside its LR pixel: (s - (σ-1)/2)/σ, the bilinear (align_corners=False) one.
        r = self.ratio
        h = (torch.arange(r, dtype=torch.float32) - (r - 1) / 2) / r
        pos = torch.stack(torch.meshgrid(h, h, indexing="ij"))  # (2 = (dy, dx), σ, σ)
        pos = pos.flip(0)  # (dx, dy): grid_sample's order
        self.register_buffer("init_pos", pos.reshape(1, 2, 1, r * r, 1, 1).repeat(1, 1, groups, 1, 1, 1).reshape(1, -1, 1, 1))

    def forward(self, x: torch.Tensor, guide: Optional[torch.Tensor] = None, size: Optional[List[int]] = None) -> torch.Tensor:
        n, c, h, w = x.shape
        r, g = self.ratio, self.groups
        offset = self.offset(x)
        if self.scope is not None:
            offset = offset * torch.sigmoid(self.scope(x)) * 0.5
        else:
            offset = offset * 0.25
        offset = F.pixel_shuffle(offset + self.init_pos, r)  # (N, 2g, σh, σw), channel = (xy, g)
        H, W = h * r, w * r
        offset = offset.view(n * 1, 2, g, H, W)
        # Parent LR pixel centre of every HR pixel, in LR pixel units.
        ys = torch.arange(H, device=x.device, dtype=x.dtype).div(r).floor()
        xs = torch.arange(W, device=x.device, dtype=x.dtype).div(r).floor()
        px = xs.view(1, 1, 1, W) + offset[:, 0]
        py = ys.view(1, 1, H, 1) + offset[:, 1]
        # LR pixel units → grid_sample's [-1, 1] with align_corners=False.
        gx = (px + 0.5) * (2.0 / w) - 1.0
        gy = (py + 0.5) * (2.0 / h) - 1.0
        grid = torch.stack([gx, gy], dim=-1).reshape(n * g, H, W, 2)
        out = F.grid_sample(x.reshape(n * g, c // g, h, w), grid, mode="bilinear", padding_mode="border", align_corners=False)
        return match_size(out.reshape(n, c, H, W), target_size(x, guide, size, self.scale))
