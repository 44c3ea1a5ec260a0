"""TransUNet's hybrid encoder CNN: a weight-standardised ResNetV2 (BiT style) root and bottleneck stages.

Root: StdConv 7×7/2 3→w, GroupNorm(32), ReLU → C1 (w ch at S/2); 3×3/2 max-pool (no padding, as the original);
stages of bottleneck units (default [3, 4, 9]) → C2 (4w at S/4), C3 (8w at S/8), C4 (16w at S/16).
As in the original, the S/4 stage runs at ⌊(S/2 − 3)/2⌋ + 1 (55 for 224) and its skip feature is zero-padded at the
bottom/right to S/4 (56) for the decoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["StdConv2d", "Bottleneck", "ResNetV2"]


class StdConv2d(nn.Conv2d):
    """Conv2d with weight standardisation (per output filter: zero mean, unit variance, eps 1e-5), no bias."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var, mean = torch.var_mean(self.weight, dim=[1, 2, 3], keepdim=True, unbiased=False)
        weight = (self.weight - mean) / torch.sqrt(var + 1e-5)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class Bottleneck(nn.Module):
    """Bottleneck unit 1×1 → 3×3 (stride) → 1×1, GroupNorm(32, eps 1e-6) after each conv, residual projection when
    the shape changes (StdConv 1×1 + GroupNorm with one group per channel, as in the official model).

    Args:
        cin: input channels.
        cout: output channels.
        cmid: bottleneck channels.
        stride: stride of the 3×3 conv and of the projection.
    """

    def __init__(self, cin: int, cout: int, cmid: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = StdConv2d(cin, cmid, 1, bias=False)
        self.gn1 = nn.GroupNorm(32, cmid, eps=1e-6)
        self.conv2 = StdConv2d(cmid, cmid, 3, stride=stride, padding=1, bias=False)
        self.gn2 = nn.GroupNorm(32, cmid, eps=1e-6)
        self.conv3 = StdConv2d(cmid, cout, 1, bias=False)
        self.gn3 = nn.GroupNorm(32, cout, eps=1e-6)
        self.relu = nn.ReLU(inplace=True)
        self.has_proj = stride != 1 or cin != cout
        self.conv_proj = StdConv2d(cin, cout, 1, stride=stride, bias=False) if self.has_proj else nn.Identity()
        self.gn_proj = nn.GroupNorm(cout, cout) if self.has_proj else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.gn_proj(self.conv_proj(x))
        y = self.relu(self.gn1(self.conv1(x)))
        y = self.relu(self.gn2(self.conv2(y)))
        y = self.gn3(self.conv3(y))
        return self.relu(residual + y)


class ResNetV2(nn.Module):
    """The R50 part of R50-ViT-B/16 (root + three stages).

    Args:
        layers: bottleneck units per stage (default ``(3, 4, 9)``).
        width: root width w (64 in the paper; channels must stay divisible by 32 for GroupNorm(32)).
        in_channels: image channels (3).

    Example::

        >>> feats, skips = ResNetV2((1, 1, 1), width=32)(torch.rand(1, 3, 64, 64))
        >>> feats.shape, [s.shape[1:] for s in skips]
        (torch.Size([1, 512, 4, 4]), [torch.Size([256, 8, 8]), torch.Size([128, 16, 16]), torch.Size([32, 32, 32])])
    """

    def __init__(self, layers: Sequence[int] = (3, 4, 9), width: int = 64, in_channels: int = 3) -> None:
        super().__init__()
        if len(layers) != 3 or min(layers) < 1:
            raise ValueError(f"layers must be three positive unit counts, got {tuple(layers)}.")
        if width % 32 != 0:
            raise ValueError(f"width must be a multiple of 32 (GroupNorm(32)), got {width}.")
        self.width = width
        self.conv_root = StdConv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
        self.gn_root = nn.GroupNorm(32, width, eps=1e-6)
        self.pool = nn.MaxPool2d(3, stride=2, padding=0)
        specs = [(width, width * 4, width, 1), (width * 4, width * 8, width * 2, 2), (width * 8, width * 16, width * 4, 2)]
        self.stages = nn.ModuleList()
        for (cin, cout, cmid, stride), n in zip(specs, layers):
            units = [Bottleneck(cin, cout, cmid, stride)] + [Bottleneck(cout, cout, cmid) for _ in range(n - 1)]
            self.stages.append(nn.Sequential(*units))

    @property
    def out_channels(self) -> int:
        """Channels of C4, the feature handed to the patch embedding."""
        return self.width * 16

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Return C4 and the skip features ``[C3, C2, C1]`` (deepest first, as the decoder consumes them)."""
        size = x.shape[-1]
        c1 = F.relu(self.gn_root(self.conv_root(x)))
        feats: List[torch.Tensor] = [c1]
        y = self.pool(c1)
        for i, stage in enumerate(self.stages):
            y = stage(y)
            if i < 2:
                right = size // 4 // (i + 1)
                skip = y
                if y.shape[-1] != right or y.shape[-2] != right:
                    # Official behaviour: zero-pad the skip at the bottom/right to S/4 (resp. S/8).
                    skip = F.pad(y, [0, right - y.shape[-1], 0, right - y.shape[-2]])
                feats.append(skip)
        return y, feats[::-1]
