"""Paired central difference convolution (PCDC, paper eq. 11–12) and the PCDC block that turns it into similarity scores.

PCDC of a query ``q̄`` (centre) against a key ``k̄`` (neighbours), grouped over ``G`` channel groups:
``v_i = Σ_n W_n · (k̄_{i + s·t_n} − q̄_i) + b = conv(k̄, W, dilation s) − conv1×1(q̄, Σ_n W_n) + b`` (eq. 12). Neighbours
leaving the image are replicate-padded (padding ``s·R`` per axis); ReSFU masks their scores afterwards anyway.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.layers import Conv
from torch import nn

from resfu_med.networks.blocks.padding import replicate_pad

from resfu_med.networks.blocks.norm import group_norm

__all__ = ["PCDC", "PCDCBlock", "as_dilation"]

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def as_dilation(dilation: int | Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    """Per-axis dilation tuple from an int or a sequence; every entry must be a positive integer."""
    dil = (int(dilation),) * spatial_dims if isinstance(dilation, int) else tuple(int(d) for d in dilation)
    if len(dil) != spatial_dims or min(dil) < 1:
        raise ValueError(f"dilation must be a positive int or {spatial_dims} positive ints, got {dilation}")
    return dil


class PCDC(nn.Module):
    """Grouped, dilated paired central difference convolution (eq. 12).

    Args:
        in_channels: channels ``D`` of query and key.
        out_channels: channels ``L`` of the output ``v``.
        kernel_size: odd neighbourhood size ``K``.
        groups: channel groups ``G`` (divides ``in_channels`` and ``out_channels``).
        spatial_dims: 2 or 3.

    Example:
        >>> pcdc = PCDC(32, 128, kernel_size=3, groups=4)
        >>> q, k = torch.randn(1, 32, 16, 16), torch.randn(1, 32, 16, 16)
        >>> pcdc(q, k, dilation=2).shape
        torch.Size([1, 128, 16, 16])
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, groups: int = 4, spatial_dims: int = 2) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}")
        if groups < 1 or in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels} and out_channels={out_channels}")
        if spatial_dims not in _CONV:
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.groups, self.spatial_dims = kernel_size, groups, spatial_dims
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *(kernel_size,) * spatial_dims))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal (fan_out, ReLU gain) weights and zero bias (docs/resfu_module.md)."""
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.bias)

    def forward(self, query: torch.Tensor, key: torch.Tensor, dilation: int | Sequence[int] = 1) -> torch.Tensor:
        """``v = conv(k̄, W, dilation) − conv1×1(q̄, ΣW) + b``.

        Args:
            query: ``(N, D, *spatial)`` centre features ``q̄``.
            key: same shape, neighbour features ``k̄``.
            dilation: neighbour spacing ``s`` (int or one per axis).

        Returns:
            ``(N, L, *spatial)``.
        """
        if query.shape != key.shape or query.dim() != self.spatial_dims + 2 or query.shape[1] != self.in_channels:
            raise ValueError(
                f"PCDC: query and key must both be (N, {self.in_channels}, {self.spatial_dims} spatial dims), "
                f"got query {tuple(query.shape)}, key {tuple(key.shape)}"
            )
        dil = as_dilation(dilation, self.spatial_dims)
        radius = self.kernel_size // 2
        conv = _CONV[self.spatial_dims]
        weight = self.weight
        pad: list[int] = []
        for d in reversed(dil):  # F.pad lists the last axis first
            pad += [d * radius, d * radius]
        neighbours = conv(replicate_pad(key, pad), weight, self.bias, groups=self.groups, dilation=dil)
        centre_weight = weight.sum(dim=tuple(range(2, weight.dim())), keepdim=True)
        centre = conv(query, centre_weight, groups=self.groups)
        return neighbours.sub_(centre)  # in place: a convolution does not save its output, one L-channel map less

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, groups={self.groups}, "
            f"spatial_dims={self.spatial_dims}"
        )


class PCDCBlock(nn.Module):
    """PCDC block (paper Fig. 5): shared GroupNorm → PCDC → channel compressor → ``K^d`` similarity scores.

    Compressor: ReLU → Conv1×1(L→hidden, groups 4) → ReLU → GroupNorm(8, hidden) → Conv1×1(hidden→K^d). The last
    convolution is ungrouped (``K^d`` is not a multiple of 4); this is what gives the 47,570 parameters of docs/resfu_module.md.

    Args:
        embed_dim: channels ``D`` of query and key.
        pcdc_channels: PCDC output channels ``L`` (release 128; the paper's text says 32).
        kernel_size: neighbourhood ``K``.
        groups: PCDC groups ``G``.
        spatial_dims: 2 or 3.
        hidden_channels: compressor width (128).
        compressor_groups: groups of the first compressor convolution (4).
        norm_groups: target groups of both GroupNorms (8, with the divisor fallback).

    Example:
        >>> block = PCDCBlock(32, 128)
        >>> block(torch.randn(1, 32, 8, 8), torch.randn(1, 32, 8, 8), dilation=2).shape
        torch.Size([1, 9, 8, 8])
    """

    def __init__(
        self,
        embed_dim: int = 32,
        pcdc_channels: int = 128,
        kernel_size: int = 3,
        groups: int = 4,
        spatial_dims: int = 2,
        hidden_channels: int = 128,
        compressor_groups: int = 4,
        norm_groups: int = 8,
    ) -> None:
        super().__init__()
        if pcdc_channels % compressor_groups or hidden_channels % compressor_groups:
            raise ValueError(
                f"compressor_groups={compressor_groups} must divide pcdc_channels={pcdc_channels} "
                f"and hidden_channels={hidden_channels}"
            )
        conv = Conv[Conv.CONV, spatial_dims]
        self.norm = group_norm(embed_dim, norm_groups, spatial_dims)
        self.pcdc = PCDC(embed_dim, pcdc_channels, kernel_size, groups, spatial_dims)
        self.compressor = nn.Sequential(
            nn.ReLU(inplace=True),  # in place is safe: v is a fresh tensor that its producer does not save
            conv(pcdc_channels, hidden_channels, kernel_size=1, groups=compressor_groups),
            nn.ReLU(inplace=True),
            group_norm(hidden_channels, norm_groups, spatial_dims),
            conv(hidden_channels, kernel_size**spatial_dims, kernel_size=1),
        )
        for m in self.compressor:
            if isinstance(m, nn.modules.conv._ConvNd):
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, query: torch.Tensor, key: torch.Tensor, dilation: int | Sequence[int] = 1) -> torch.Tensor:
        """Scores ``(N, K^d, *spatial)`` of every centre ``query`` against its ``K^d`` dilated ``key`` neighbours."""
        return self.compressor(self.pcdc(self.norm(query), self.norm(key), dilation))
