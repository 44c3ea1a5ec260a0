"""Frozen float64 reference: ReSFU and its blocks exactly as on main at edcdbb6 (before issue #27's exact rewrites).

Test-only (never shipped). Every exact rewrite of ``resfu_med.networks.ReSFU`` is checked against :class:`ReSFUv1` with the
same state dict (tests/networks/test_resfu_exact_v1.py); ``scripts/benchmark_resfu_module.py --old`` times it side by
side with the current module. The value gathers (``fns_gather``, ``lr_neighbour_gather``) are imported: the C++ op is
the one gather both modules share and is tested on its own (tests/ops/). Do not edit the maths below.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import List

import torch
import torch.nn.functional as F
from monai.networks.layers import Conv, Norm
from monai.networks.layers.convutils import gaussian_1d
from monai.utils import look_up_option
from torch import nn
from torch.utils.checkpoint import checkpoint

from resfu_med.networks.blocks.lr_gather import lr_neighbour_gather
from resfu_med.ops import fns_gather

__all__ = ["ReSFUv1"]



# ---- networks/blocks/norm.py ----------------------------------------

def group_count(channels: int, max_groups: int) -> int:
    """Largest divisor of ``channels`` that is ``<= max_groups`` (e.g. 32 for 256 channels, 16 for 48, 1 for 7).

    Raises:
        ValueError: if ``channels`` or ``max_groups`` is not positive.
    """
    if channels < 1 or max_groups < 1:
        raise ValueError(f"group_count: channels and max_groups must be positive, got {channels}, {max_groups}")
    return max(g for g in range(1, min(channels, max_groups) + 1) if channels % g == 0)


def group_norm(channels: int, max_groups: int, spatial_dims: int = 2) -> nn.GroupNorm:
    """``GroupNorm(group_count(channels, max_groups), channels)`` built with MONAI's ``Norm`` factory."""
    return Norm[Norm.GROUP, spatial_dims](num_groups=group_count(channels, max_groups), num_channels=channels)


# ---- networks/blocks/padding.py ----------------------------------------

def replicate_pad(x: torch.Tensor, pad: List[int]) -> torch.Tensor:
    """Pad the trailing ``len(pad) // 2`` axes of ``x`` by repeating their border values.

    Args:
        x: tensor ``(N, C, *spatial)``.
        pad: non-negative amounts in ``F.pad`` order (last axis first: ``[left, right, top, bottom, ...]``).

    Returns:
        the padded tensor, equal to ``F.pad(x, pad, mode="replicate")``.
    """
    if len(pad) % 2 != 0 or min(pad) < 0:
        raise ValueError(f"replicate_pad: pad must be pairs of non-negative amounts, got {pad}")
    for i in range(len(pad) // 2):
        before, after = pad[2 * i], pad[2 * i + 1]
        if before == 0 and after == 0:
            continue
        axis = x.dim() - 1 - i
        size = x.shape[axis]
        index = torch.arange(-before, size + after, device=x.device).clamp_(0, size - 1)
        x = x.index_select(axis, index)
    return x


# ---- networks/blocks/pcdc.py ----------------------------------------

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


# ---- networks/blocks/inner_product.py ----------------------------------------

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


# ---- networks/blocks/gaussian.py ----------------------------------------

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def gaussian_kernel(spatial_dims: int, sigma: float = 1.0, kernel_size: int = 3) -> torch.Tensor:
    """Normalised, sampled Gaussian kernel of shape ``(kernel_size,) * spatial_dims``.

    The N-D kernel is the outer product of normalised 1-D kernels, which is itself normalised (sums to 1).

    Args:
        spatial_dims: 1, 2 or 3.
        sigma: standard deviation in pixels.
        kernel_size: odd number of taps per axis.

    Returns:
        A float32 tensor whose entries sum to 1.

    Raises:
        ValueError: if ``kernel_size`` is not a positive odd number, ``sigma`` is not positive or ``spatial_dims`` is not 1–3.
    """
    if spatial_dims not in _CONV:
        raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}")
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    radius = kernel_size // 2
    # MONAI's sampled kernel has 2 * int(sigma * truncated + 0.5) + 1 taps; choose `truncated` to get exactly `radius`.
    k1 = gaussian_1d(torch.tensor(float(sigma)), truncated=radius / sigma, approx="sampled", normalize=True)
    if k1.numel() != kernel_size:  # pragma: no cover - guards against a change of MONAI's tap rule
        idx = torch.arange(-radius, radius + 1, dtype=torch.float32)
        k1 = torch.exp(-0.5 * (idx / sigma) ** 2)
        k1 = k1 / k1.sum()
    kernel = k1.float()
    for _ in range(spatial_dims - 1):
        kernel = kernel.unsqueeze(-1) * k1.float()
    return kernel


class GaussianSmoothing(nn.Module):
    """Depthwise Gaussian smoothing with replicate padding and a fixed (non-trainable) kernel.

    The kernel is a non-persistent buffer: it follows ``.to()``/``.half()`` but is neither a parameter (so it does not count
    towards ReSFU's 47,570 parameters) nor stored in state dicts.

    Args:
        channels: number of channels (each smoothed on its own).
        spatial_dims: 2 or 3 (1 also works).
        sigma: Gaussian standard deviation in pixels (default 1, as in the paper).
        kernel_size: taps per axis (default 3).

    Example:
        >>> smooth = GaussianSmoothing(32, spatial_dims=2)
        >>> smooth(torch.randn(1, 32, 16, 16)).shape
        torch.Size([1, 32, 16, 16])
    """

    def __init__(self, channels: int, spatial_dims: int = 2, sigma: float = 1.0, kernel_size: int = 3) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be positive, got {channels}")
        self.channels = channels
        self.spatial_dims = spatial_dims
        self.radius = kernel_size // 2
        kernel = gaussian_kernel(spatial_dims, sigma, kernel_size)
        weight = kernel.expand(channels, 1, *kernel.shape).contiguous()
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Smooth ``x`` of shape ``(N, channels, *spatial)``; the output has the same shape and dtype."""
        if x.dim() != self.spatial_dims + 2 or x.shape[1] != self.channels:
            raise ValueError(
                f"GaussianSmoothing: x must be (N, {self.channels}, {self.spatial_dims} spatial dims), got {tuple(x.shape)}"
            )
        padded = replicate_pad(x, [self.radius] * (2 * self.spatial_dims))
        return _CONV[self.spatial_dims](padded, self.weight.to(x.dtype), groups=self.channels)


# ---- networks/blocks/guided_filter.py ----------------------------------------

_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}
_LINEAR_MODE = {1: "linear", 2: "bilinear", 3: "trilinear"}


def box_filter(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over the ``(2r+1)^d`` window around every pixel, clipped at the border (divides by the valid count).

    The clipped box mean is separable (sum and count both factor per axis), so it runs as one 1-D average pooling per
    axis with ``count_include_pad=False``: ``O(d · (2r+1))`` work per pixel instead of ``O((2r+1)^d)``. Pooling refuses
    an axis shorter than its window even with padding, so such an axis is zero-padded by hand and its window sums are
    divided by the per-axis count of pixels inside the image, ``min(i + r, S − 1) − max(i − r, 0) + 1``.

    Args:
        x: ``(N, C, *spatial)`` with 1–3 spatial dims.
        radius: window radius ``r >= 0``.

    Returns:
        Tensor of the same shape and dtype.
    """
    dims = x.dim() - 2
    if dims not in _AVG_POOL:
        raise ValueError(f"box_filter: x must have 1-3 spatial dims, got shape {tuple(x.shape)}")
    if radius < 0:
        raise ValueError(f"box_filter: radius must be >= 0, got {radius}")
    out = x
    for axis in range(dims):
        size = int(x.shape[2 + axis])
        r = min(radius, size - 1)  # a window reaching past both ends covers the whole axis either way
        if r == 0:
            continue
        kernel = [1] * dims
        kernel[axis] = 2 * r + 1
        if size >= 2 * r + 1:  # pooling divides by the count of non-padded pixels itself
            padding = [0] * dims
            padding[axis] = r
            out = _AVG_POOL[dims](out, kernel, stride=1, padding=padding, count_include_pad=False)
            continue
        pad = [0] * (2 * dims)
        pad[2 * (dims - 1 - axis)] = pad[2 * (dims - 1 - axis) + 1] = r  # F.pad lists the last axis first
        pos = torch.arange(size, device=x.device)
        count = (pos + r).clamp(max=size - 1) - (pos - r).clamp(min=0) + 1
        scale = ((2 * r + 1) / count.to(x.dtype)).view([size if a == axis else 1 for a in range(dims)])
        out = _AVG_POOL[dims](F.pad(out, pad), kernel, stride=1) * scale
    return out


def nearest_half(x: torch.Tensor) -> torch.Tensor:
    """Nearest downsampling to ``⌊S/2⌋`` per spatial axis (keeps pixel ``2i``; an axis of length 1 stays 1).

    For axes of length >= 2 this equals ``F.interpolate(x, scale_factor=0.5, mode="nearest")``; written as strided
    slicing so odd sizes are explicit.
    """
    index = [slice(None)] * x.dim()
    for axis in range(2, x.dim()):
        keep = max(1, int(x.shape[axis]) // 2)
        index[axis] = slice(0, 2 * keep - 1, 2)
    out = x[tuple(index)]
    return out


def _coefficients(guide: torch.Tensor, src: torch.Tensor, radius: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Window means of the linear coefficients, ``(mean(a), mean(b))`` (eq. 5, then the averaging of eq. 6)."""
    mean_g = box_filter(guide, radius)
    mean_s = box_filter(src, radius)
    cov_gs = box_filter(guide * src, radius) - mean_g * mean_s
    var_g = box_filter(guide * guide, radius) - mean_g * mean_g
    a = cov_gs / (var_g + eps)
    b = mean_s - a * mean_g
    return box_filter(a, radius), box_filter(b, radius)


def _check(guide: torch.Tensor, src: torch.Tensor) -> None:
    if guide.shape != src.shape or guide.dim() - 2 not in _AVG_POOL:
        raise ValueError(
            f"guided filter: guide and src must share one (N, C, *spatial) shape with 1-3 spatial dims, "
            f"got guide {tuple(guide.shape)}, src {tuple(src.shape)}"
        )


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def guided_filter(guide: torch.Tensor, src: torch.Tensor, radius: int, eps: float) -> torch.Tensor:
    """Full-resolution guided filter of ``src`` steered by ``guide`` (channel-wise, paper eq. 4–6).

    Args:
        guide: ``(N, C, *spatial)`` guidance (ReSFU: the query ``q``).
        src: same shape, the image to filter (ReSFU: the upsampled key ``k̃``).
        radius: window radius.
        eps: regulariser ``ε`` of ``a``.

    Returns:
        ``mean(a) · guide + mean(b)`` in ``guide``'s dtype.
    """
    _check(guide, src)
    dtype = _compute_dtype(guide)
    with torch.autocast(device_type=guide.device.type, enabled=False):
        g, s = guide.to(dtype), src.to(dtype)
        mean_a, mean_b = _coefficients(g, s, radius, eps)
        return (mean_a * g + mean_b).to(guide.dtype)


def fast_guided_filter(guide: torch.Tensor, src: torch.Tensor, radius: int, eps: float) -> torch.Tensor:
    """Fast guided filter (docs/resfu_module.md, step 5): coefficients at half resolution, applied to the full-resolution guide.

    ``guide`` and ``src`` are nearest-downsampled to ``⌊S/2⌋`` (:func:`nearest_half`), ``mean(a)`` and ``mean(b)`` are
    computed there with radius ``max(1, radius // 2)``, linearly upsampled (``align_corners=False``) to the full size and
    combined with the full-resolution guide.

    Args:
        guide: ``(N, C, *spatial)``.
        src: same shape.
        radius: full-resolution radius ``r`` (halved internally).
        eps: regulariser ``ε``.

    Returns:
        Tensor shaped like ``guide`` in ``guide``'s dtype.
    """
    _check(guide, src)
    dtype = _compute_dtype(guide)
    with torch.autocast(device_type=guide.device.type, enabled=False):
        g, s = guide.to(dtype), src.to(dtype)
        mean_a, mean_b = _coefficients(nearest_half(g), nearest_half(s), max(1, radius // 2), eps)
        size = [int(s) for s in g.shape[2:]]
        mode = _LINEAR_MODE[g.dim() - 2]
        mean_a = F.interpolate(mean_a, size=size, mode=mode, align_corners=False)
        mean_b = F.interpolate(mean_b, size=size, mode=mode, align_corners=False)
        return (mean_a * g + mean_b).to(guide.dtype)


class GuidedFilter(nn.Module):
    """Module wrapper of :func:`fast_guided_filter` / :func:`guided_filter` (no parameters).

    Args:
        radius: window radius at full resolution (paper: 8).
        eps: regulariser (paper: 1e-3).
        fast: compute the coefficients at half resolution (the default, as in the authors' release).

    Example:
        >>> gf = GuidedFilter(radius=8, eps=1e-3)
        >>> gf(torch.randn(1, 4, 32, 32), torch.randn(1, 4, 32, 32)).shape
        torch.Size([1, 4, 32, 32])
    """

    def __init__(self, radius: int = 8, eps: float = 1e-3, fast: bool = True) -> None:
        super().__init__()
        if radius < 1:
            raise ValueError(f"radius must be >= 1, got {radius}")
        if eps <= 0:
            raise ValueError(f"eps must be positive, got {eps}")
        self.radius = int(radius)
        self.eps = float(eps)
        self.fast = bool(fast)

    def forward(self, guide: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
        """Filter ``src`` with ``guide``; both ``(N, C, *spatial)``."""
        if self.fast:
            return fast_guided_filter(guide, src, self.radius, self.eps)
        return guided_filter(guide, src, self.radius, self.eps)

    def extra_repr(self) -> str:
        return f"radius={self.radius}, eps={self.eps}, fast={self.fast}"


# ---- networks/resfu.py ----------------------------------------

SIMILARITIES = ("pcdc", "inner_product")
_LINEAR_MODE = {1: "linear", 2: "bilinear", 3: "trilinear"}


def upsampling_dilation(hr_size: Sequence[int], lr_size: Sequence[int]) -> tuple[int, ...]:
    """Per-axis neighbour spacing ``s`` at HR: the ratio ``H / h`` when integer, else ``⌊H / h + 0.5⌋`` (half up).

    Raises:
        ValueError: if an HR axis is shorter than its LR axis (downsampling is not upsampling).
    """
    if len(hr_size) != len(lr_size) or any(H < h or h < 1 for H, h in zip(hr_size, lr_size)):
        raise ValueError(f"ReSFU needs HR size >= LR size >= 1 per axis, got HR {tuple(hr_size)}, LR {tuple(lr_size)}")
    return tuple(H // h if H % h == 0 else int(H / h + 0.5) for H, h in zip(hr_size, lr_size))


def _prescale(t: torch.Tensor) -> torch.Tensor:
    """``t`` scaled per sample by a power of two bringing its largest magnitude under 2**16; ``t`` itself (no copy) when
    no sample needs it.

    GroupNorm sums squares: in float32 it overflows (NaN output) from magnitudes ~1e19 and in bfloat16 near its maximum.
    It is scale invariant (up to its eps, negligible at such magnitudes), and a power of two only changes exponents, so
    the normalised result is the same while huge inputs stay finite. One pass finds the extremes (``aminmax``: no
    ``abs`` copy); on CPU the common case (nothing to scale) then returns ``t`` unchanged, skipping a guide-sized copy
    that autograd would also keep. Elsewhere (and while compiling) the multiply stays, so there is no host sync and no
    data-dependent branch.
    """
    lo, hi = t.detach().flatten(1).aminmax(dim=1)
    amax = torch.maximum(hi, -lo).float().clamp_min(1.0)
    shift = torch.clamp(torch.ceil(torch.log2(amax)) - 16, min=0)
    if t.device.type == "cpu" and not torch.compiler.is_compiling() and not torch.jit.is_tracing():
        if not bool(shift.any()):
            return t
    return t * torch.exp2(-shift).to(t.dtype).view((-1,) + (1,) * (t.dim() - 1))


def border_mask(hr_size: Sequence[int], dilation: Sequence[int], kernel_size: int, device: torch.device | None = None) -> torch.Tensor:
    """Boolean ``(1, K^d, *HR)``: True where the neighbour's HR position ``i + s·a`` (per axis) lies inside the image.

    Neighbour index ``t`` is row-major over the per-axis offsets ``a ∈ −R..R`` (first axis slowest), as in FNS (docs/fns_operator.md).
    """
    dims, radius = len(hr_size), kernel_size // 2
    mask = None
    for axis, (size, s) in enumerate(zip(hr_size, dilation)):
        offsets = torch.arange(-radius, radius + 1, device=device) * s
        pos = torch.arange(size, device=device).unsqueeze(0) + offsets.unsqueeze(1)  # (K, size)
        valid = (pos >= 0) & (pos < size)
        shape = [1] * (2 * dims)
        shape[axis], shape[dims + axis] = kernel_size, size
        valid = valid.view(shape)
        mask = valid if mask is None else mask & valid
    return mask.reshape(1, kernel_size**dims, *hr_size)


class ReSFUv1(nn.Module):
    """Refreshed Similarity-based Feature Upsampler (paper §4, docs/resfu_module.md), dimension-generic (2D / 3D).

    Forward: GroupNorm both inputs; project the guide to the HR query ``q`` and ``x`` to the LR key ``k`` (1×1 convs,
    ``D`` channels); ``k̃`` = linear upsampling of ``k``; semantic query ``q_GF`` = fast guided filter of ``k̃`` guided by
    ``q``; detail key ``q_GS`` = Gaussian-smoothed ``q``; scores = PCDC block(``q_GF`` vs ``k̃``) + PCDC block(``q`` vs
    ``q_GS``) with neighbours at dilation ``s`` (the ratio); out-of-image neighbours masked; softmax over ``K^d``; the
    output is the fused FNS gather of the raw ``x`` (docs/fns_operator.md).

    Args:
        in_channels: channels ``C`` of the LR feature ``x`` (and of the output).
        guide_channels: channels ``c`` of the HR guidance.
        kernel_size: neighbourhood ``K`` (odd).
        embed_dim: projection channels ``D``.
        groups: PCDC groups ``G`` (divides ``D`` and ``pcdc_channels``).
        pcdc_channels: PCDC output channels ``L`` (release: 128; the paper's text says 32).
        gf_radius: guided-filter radius at HR (halved by the fast filter).
        gf_eps: guided-filter regulariser.
        spatial_dims: 2 or 3.
        use_guided_filter: ablation switch; False uses ``q`` as the semantic query (paper Table 5 (b)).
        use_gaussian: ablation switch; False uses ``q`` as the detail key (paper Table 5 (d)).
        similarity: ``"pcdc"`` (paper Fig. 5) or ``"inner_product"`` (paper eq. 3, Table 6 (a)).
        fine_grained: FNS; False selects grid-wise LR neighbours for the semantic key (nearest-upsampled ``k``) and for
            the value (:func:`~resfu_med.networks.blocks.lr_gather.lr_neighbour_gather`), paper Table 7 "w/o FNS".
        fast_guided_filter: compute the guided filter at half resolution (the default) or at full resolution.
        gaussian_sigma: standard deviation of the 3-tap Gaussian.
        compressor_channels: hidden width of the PCDC compressor (128).
        use_checkpoint: recompute each similarity block in the backward pass (saves the ``L``-channel HR activations;
            useful for 3D training).
        deterministic: forwarded to ``fns_gather`` (CUDA backward without atomics).

    Example:
        >>> up = ReSFU(in_channels=256, guide_channels=64)
        >>> up(torch.randn(2, 256, 14, 14), torch.randn(2, 64, 56, 56)).shape
        torch.Size([2, 256, 56, 56])
    """

    def __init__(
        self,
        in_channels: int,
        guide_channels: int,
        kernel_size: int = 3,
        embed_dim: int = 32,
        groups: int = 4,
        pcdc_channels: int = 128,
        gf_radius: int = 8,
        gf_eps: float = 1e-3,
        spatial_dims: int = 2,
        use_guided_filter: bool = True,
        use_gaussian: bool = True,
        similarity: str = "pcdc",
        fine_grained: bool = True,
        fast_guided_filter: bool = True,
        gaussian_sigma: float = 1.0,
        compressor_channels: int = 128,
        use_checkpoint: bool = False,
        deterministic: bool = False,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if in_channels < 1 or guide_channels < 1 or embed_dim < 1:
            raise ValueError(f"channels must be positive, got in={in_channels}, guide={guide_channels}, embed={embed_dim}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}")
        self.in_channels, self.guide_channels = in_channels, guide_channels
        self.kernel_size, self.embed_dim, self.spatial_dims = kernel_size, embed_dim, spatial_dims
        self.similarity = look_up_option(similarity, SIMILARITIES)
        self.use_guided_filter, self.use_gaussian = bool(use_guided_filter), bool(use_gaussian)
        self.fine_grained, self.use_checkpoint, self.deterministic = bool(fine_grained), bool(use_checkpoint), bool(deterministic)

        conv = Conv[Conv.CONV, spatial_dims]
        self.norm_x = group_norm(in_channels, 32, spatial_dims)
        self.norm_guide = group_norm(guide_channels, 32, spatial_dims)
        self.proj_q = conv(guide_channels, embed_dim, kernel_size=1)
        self.proj_k = conv(in_channels, embed_dim, kernel_size=1)
        for proj in (self.proj_q, self.proj_k):
            nn.init.normal_(proj.weight, std=0.02)
            nn.init.zeros_(proj.bias)
        self.guided_filter = GuidedFilter(gf_radius, gf_eps, fast=fast_guided_filter) if use_guided_filter else None
        self.gaussian = GaussianSmoothing(embed_dim, spatial_dims, sigma=gaussian_sigma) if use_gaussian else None
        if self.similarity == "pcdc":
            block_args = (embed_dim, pcdc_channels, kernel_size, groups, spatial_dims, compressor_channels)
            self.semantic_block: nn.Module = PCDCBlock(*block_args)
            self.detail_block: nn.Module = PCDCBlock(*block_args)
        else:
            self.semantic_block = InnerProductSimilarity(embed_dim, kernel_size, spatial_dims)
            self.detail_block = InnerProductSimilarity(embed_dim, kernel_size, spatial_dims)

    def _check(self, x: torch.Tensor, guide: torch.Tensor) -> None:
        rank = self.spatial_dims + 2
        if x.dim() != rank or guide.dim() != rank:
            raise ValueError(f"ReSFU(spatial_dims={self.spatial_dims}): x and guide must be {rank}D, got x {tuple(x.shape)}, guide {tuple(guide.shape)}")
        if x.shape[1] != self.in_channels or guide.shape[1] != self.guide_channels:
            raise ValueError(
                f"ReSFU: expected x with {self.in_channels} and guide with {self.guide_channels} channels, "
                f"got x {tuple(x.shape)}, guide {tuple(guide.shape)}"
            )
        if x.shape[0] != guide.shape[0]:
            raise ValueError(f"ReSFU: batch sizes differ, x {tuple(x.shape)}, guide {tuple(guide.shape)}")
        if x.numel() == 0 or guide.numel() == 0:
            raise ValueError(f"ReSFU: empty input, x {tuple(x.shape)}, guide {tuple(guide.shape)}")

    def _block(self, block: nn.Module, query: torch.Tensor, key: torch.Tensor, dilation: tuple[int, ...]) -> torch.Tensor:
        if self.use_checkpoint and torch.is_grad_enabled() and not torch.jit.is_tracing():
            return checkpoint(block, query, key, dilation, use_reentrant=False)
        return block(query, key, dilation)

    def attention(self, x: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        """Upsampling kernels ``(N, K^d, *HR)`` (float32, or float64 for a float64 model), softmax-normalised over the neighbours, ~0 outside the image.

        Raises:
            ValueError: on wrong ranks, channels, batch sizes, empty tensors or an HR size smaller than the LR size.
        """
        self._check(x, guide)
        hr, lr = tuple(int(s) for s in guide.shape[2:]), tuple(int(s) for s in x.shape[2:])  # ints even when tracing
        dilation = upsampling_dilation(hr, lr)
        q = self.proj_q(self.norm_guide(_prescale(guide)))  # (N, D, *HR)
        k = self.proj_k(self.norm_x(_prescale(x)))  # (N, D, *LR)
        k_up = F.interpolate(k, size=hr, mode=_LINEAR_MODE[self.spatial_dims], align_corners=False)
        semantic_query = self.guided_filter(q, k_up) if self.guided_filter is not None else q
        detail_key = self.gaussian(q) if self.gaussian is not None else q
        # Without FNS, the semantic key's neighbours are the LR pixels around each HR pixel's nearest LR parent: the
        # nearest-upsampled key read at dilation s (exact for integer ratios).
        semantic_key = k_up if self.fine_grained else F.interpolate(k, size=hr, mode="nearest")
        scores = self._block(self.semantic_block, semantic_query, semantic_key, dilation)
        scores = scores + self._block(self.detail_block, q, detail_key, dilation)
        valid = border_mask(hr, dilation, self.kernel_size, scores.device)
        # finfo.min / 2 instead of a fixed -1e7: representable in fp16/bf16 and cannot overflow to -inf when added to.
        scores = scores.masked_fill(~valid, torch.finfo(scores.dtype).min / 2)
        with torch.autocast(device_type=scores.device.type, enabled=False):
            return torch.softmax(scores.float() if scores.dtype in (torch.float16, torch.bfloat16) else scores, dim=1)

    def gather(self, attn: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Weighted neighbour sum of the raw ``x`` with ``attn``: FNS (docs/fns_operator.md) or, without FNS, LR neighbours.

        Runs with float32 accumulation whatever the autocast state; the result has ``x``'s dtype.
        """
        with torch.autocast(device_type=x.device.type, enabled=False):
            value = x if x.dtype in (torch.float32, torch.float64) else x.float()
            weights = attn.to(value.dtype)
            if self.fine_grained:
                out = fns_gather(weights, value, deterministic=self.deterministic)
            else:
                out = lr_neighbour_gather(weights, value)
        return out.to(x.dtype)

    def forward(self, x: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        """Upsample ``x`` ``(N, C, *LR)`` to ``guide``'s spatial size; returns ``(N, C, *HR)`` in ``x``'s dtype."""
        return self.gather(self.attention(x, guide), x)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, guide_channels={self.guide_channels}, kernel_size={self.kernel_size}, "
            f"embed_dim={self.embed_dim}, spatial_dims={self.spatial_dims}, similarity={self.similarity!r}, "
            f"fine_grained={self.fine_grained}"
        )
