"""CARAFE: Content-Aware ReAssembly of FEatures (Wang et al., ICCV 2019), written from the paper.

For ratio σ and reassembly kernel k_up:
1. kernel prediction from x alone: channel compressor (1×1 conv C→C_m), content encoder (k_enc×k_enc conv
   C_m→σ²·k_up²), pixel shuffle to (k_up², σh, σw), softmax over the k_up² taps;
2. reassembly: output pixel l' = (i', j') is the kernel-weighted sum of the k_up×k_up LR neighbourhood centred at
   l = (⌊i'/σ⌋, ⌊j'/σ⌋) (zero outside x).
The reassembly is computed on the LR grid, once per sub-pixel position, and pixel-shuffled at the end; this is the
same sum without materialising the k_up²-times unfolded HR tensor.
"""

from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import match_size, target_size

__all__ = ["CARAFE"]


class CARAFE(nn.Module):
    """CARAFE upsampler (2D, integer ratio).

    Args:
        in_channels: channels of x (kept in the output).
        scale: integer ratio σ.
        k_up: reassembly kernel size (paper default 5).
        k_enc: content-encoder kernel size (paper default 3).
        compressed_channels: C_m of the channel compressor (paper default 64).

    Example::

        >>> CARAFE(16, 4)(torch.rand(1, 16, 7, 7)).shape
        torch.Size([1, 16, 28, 28])
    """

    def __init__(self, in_channels: int, scale: int = 2, k_up: int = 5, k_enc: int = 3, compressed_channels: int = 64) -> None:
        super().__init__()
        if k_up % 2 == 0 or k_enc % 2 == 0:
            raise ValueError(f"k_up and k_enc must be odd, got k_up={k_up}, k_enc={k_enc}.")
        self.ratio = int(scale)
        self.k_up = int(k_up)
        self.scale = [float(scale), float(scale)]
        self.compressor = nn.Conv2d(in_channels, compressed_channels, 1)
        self.encoder = nn.Conv2d(compressed_channels, self.ratio**2 * k_up**2, k_enc, padding=k_enc // 2)
        nn.init.normal_(self.encoder.weight, std=0.001)  # near-uniform kernels at start: a smooth upsampler
        nn.init.zeros_(self.encoder.bias)

    def forward(self, x: torch.Tensor, guide: Optional[torch.Tensor] = None, size: Optional[List[int]] = None) -> torch.Tensor:
        n, c, h, w = x.shape
        r, k2 = self.ratio, self.k_up * self.k_up
        logits = self.encoder(self.compressor(x))  # (N, k²·r², h, w); pixel-shuffle order: channel = tap·r² + sub
        kernels = torch.softmax(logits.view(n, k2, r * r, h, w), dim=1)
        patches = F.unfold(x, self.k_up, padding=self.k_up // 2).view(n, c, k2, h, w)
        out = torch.einsum("nkshw,nckhw->ncshw", kernels, patches).reshape(n, c * r * r, h, w)
        return match_size(F.pixel_shuffle(out, r), target_size(x, guide, size, self.scale))
