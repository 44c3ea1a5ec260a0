"""Inner-product similarity (SAPA-style, paper eq. 3): the ablation baseline of the PCDC block (paper Table 6 (a))."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from resfu_med.networks.blocks.padding import replicate_pad

from resfu_med.networks.blocks.norm import group_norm
from resfu_med.networks.blocks.pcdc import as_dilation

__all__ = ["InnerProductSimilarity"]


class InnerProductSimilarity(nn.Module):
    """Scores ``s_t = ⟨q̄_i, k̄_{i + s·t}⟩`` over the ``K^d`` dilated neighbours ``t`` (replicate padding at the border).

    Query and key pass one shared GroupNorm first, as in the PCDC block, so the two similarity variants differ only in
    ``sim(·, ·)``. No scaling (SAPA's form). The neighbours are taken one offset at a time: no ``K^d``-fold unfold.

    Args:
        embed_dim: channels ``D`` of query and key.
        kernel_size: neighbourhood ``K``.
        spatial_dims: 2 or 3.
        norm_groups: target groups of the GroupNorm (8, with the divisor fallback).

    Example:
        >>> sim = InnerProductSimilarity(32)
        >>> sim(torch.randn(1, 32, 8, 8), torch.randn(1, 32, 8, 8), dilation=2).shape
        torch.Size([1, 9, 8, 8])
    """

    def __init__(self, embed_dim: int = 32, kernel_size: int = 3, spatial_dims: int = 2, norm_groups: int = 8) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}")
        self.kernel_size, self.spatial_dims = kernel_size, spatial_dims
        self.norm = group_norm(embed_dim, norm_groups, spatial_dims)

    def forward(self, query: torch.Tensor, key: torch.Tensor, dilation: int | Sequence[int] = 1) -> torch.Tensor:
        """Scores ``(N, K^d, *spatial)``; neighbour index ``t`` is row-major over the per-axis offsets ``−R..R``."""
        if query.shape != key.shape or query.dim() != self.spatial_dims + 2:
            raise ValueError(f"InnerProductSimilarity: query {tuple(query.shape)} and key {tuple(key.shape)} must match")
        dil = as_dilation(dilation, self.spatial_dims)
        radius = self.kernel_size // 2
        q, k = self.norm(query), self.norm(key)
        pad: list[int] = []
        for d in reversed(dil):
            pad += [d * radius, d * radius]
        k = replicate_pad(k, pad)
        size = [int(s) for s in q.shape[2:]]
        scores = []
        for t in range(self.kernel_size**self.spatial_dims):
            index = [slice(None), slice(None)]
            rem = t
            offsets = []
            for _ in range(self.spatial_dims):
                offsets.append(rem % self.kernel_size)
                rem //= self.kernel_size
            for axis, off in enumerate(reversed(offsets)):  # off = a + R, so the window starts at s·(a + R)
                start = dil[axis] * off
                index.append(slice(start, start + size[axis]))
            scores.append((q * k[tuple(index)]).sum(dim=1, keepdim=True))
        return torch.cat(scores, dim=1)
