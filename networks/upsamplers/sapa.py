"""SAPA-B: Similarity-Aware Point Affiliation, base version (Lu et al., NeurIPS 2022), written from the paper.

For each HR pixel i with LR parent l = (⌊i/σ⌋, ⌊j/σ⌋): query q_i = W_q·LN(y)_i (HR guide), keys
k = W_k·LN(x) over the K×K LR neighbourhood of l (K = 5), kernel = softmax of the inner products q_i·k_n, output =
Σ_n kernel_n · x_n (the LR values themselves). Neighbours outside x are excluded from the softmax, so a constant key
gives the plain average of the valid LR neighbourhood. Computed per sub-pixel position on the LR grid (queries are
pixel-unshuffled), then pixel-shuffled back — no K²-times HR tensor.
"""

from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import match_size, target_size

__all__ = ["SAPA"]


class SAPA(nn.Module):
    """SAPA-B guided upsampler (2D, integer ratio given by guide / x).

    Args:
        in_channels: channels C of x.
        guide_channels: channels c of the guide y.
        scale: ratio used only to document/validate; the guide fixes the output size.
        kernel_size: K, the LR neighbourhood (default 5, as the ReSFU paper runs SAPA).
        embed_dim: dimension of the query/key projections.

    Raises:
        ValueError: in ``forward``, when no guide is given.

    Example::

        >>> SAPA(16, 8)(torch.rand(1, 16, 7, 7), torch.rand(1, 8, 14, 14)).shape
        torch.Size([1, 16, 14, 14])
    """

    def __init__(self, in_channels: int, guide_channels: int, scale: int = 2, kernel_size: int = 5, embed_dim: int = 64) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}.")
        self.k = int(kernel_size)
        # LayerNorm over channels at each pixel (the transformer-style normalisation SAPA applies to x and y)
        self.norm_x = nn.LayerNorm(in_channels)
        self.norm_y = nn.LayerNorm(guide_channels)
        self.query = nn.Conv2d(guide_channels, embed_dim, 1)
        self.key = nn.Conv2d(in_channels, embed_dim, 1)
        self.scale = [float(scale), float(scale)]

    def forward(self, x: torch.Tensor, guide: Optional[torch.Tensor] = None, size: Optional[List[int]] = None) -> torch.Tensor:
        if guide is None:
            raise ValueError("SAPA needs a guide tensor.")
        out_size = target_size(x, guide, size, self.scale)
        n, c, h, w = x.shape
        # SAPA works on an integer grid: ratio = round(output / x); the guide is resampled to it if needed and the
        # result fitted to ``size`` (replicate pad / crop) like the other fixed-ratio upsamplers.
        r = max(1, (int(out_size[0]) + int(h) // 2) // int(h))
        if guide.shape[2] != r * h or guide.shape[3] != r * w:
            guide = F.interpolate(guide, size=[r * h, r * w], mode="bilinear", align_corners=False)
        k2 = self.k * self.k
        q = self.query(self.norm_y(guide.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
        d = q.shape[1]
        q = F.pixel_unshuffle(q, r).view(n, d, r * r, h, w)
        key = self.key(self.norm_x(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
        key = F.unfold(key, self.k, padding=self.k // 2).view(n, d, k2, h, w)
        scores = torch.einsum("ndshw,ndkhw->nkshw", q, key)
        # Taps that fall outside x: unfold a map of ones; those positions are excluded from the softmax.
        valid = F.unfold(torch.ones(1, 1, h, w, dtype=x.dtype, device=x.device), self.k, padding=self.k // 2)
        invalid = valid.view(1, k2, 1, h, w) < 0.5
        scores = scores.masked_fill(invalid, float("-inf"))  # the centre tap is always valid: no all -inf row
        attn = torch.softmax(scores, dim=1)
        values = F.unfold(x, self.k, padding=self.k // 2).view(n, c, k2, h, w)
        out = torch.einsum("nkshw,nckhw->ncshw", attn, values).reshape(n, c * r * r, h, w)
        return match_size(F.pixel_shuffle(out, r), out_size)
