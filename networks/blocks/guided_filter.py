"""Guided filter (He et al.) for ReSFU's semantic-space query ``q_GF`` (paper eq. 4–6, docs/resfu_module.md, step 5).

``q_GF = mean(a) · q + mean(b)`` with ``a = cov(q, k̃) / (var(q) + ε)`` and ``b = mean(k̃) − a · mean(q)`` over square
(cubic) windows of radius ``r``. Windows are clipped at the border and every mean divides by the number of pixels
actually inside the image. The "fast" variant (the release's, the default) computes ``a`` and ``b`` at half resolution
and upsamples their window means back. Computation runs in float32 (or float64) whatever the input dtype: the variance
``E[q²] − E[q]²`` cancels catastrophically in half precision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from resfu_med.networks.blocks.graph_grads import grads_with_graph
from resfu_med.networks.blocks.linear_upsample import linear_mode, linear_upsample_adjoint

__all__ = ["GuidedFilter", "box_filter", "box_filter_adjoint", "guided_filter", "fast_guided_filter", "nearest_half"]

_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _window_counts(size: int, r: int, axis: int, like: torch.Tensor) -> torch.Tensor:
    """Pixels inside the image of each clipped window along spatial ``axis``, ``min(i + r, S − 1) − max(i − r, 0) + 1``,
    in ``like``'s dtype, shaped to broadcast over ``like`` ``(N, C, *spatial)``."""
    pos = torch.arange(size, device=like.device)
    count = (pos + r).clamp(max=size - 1) - (pos - r).clamp(min=0) + 1
    return count.to(like.dtype).view([size if a == axis else 1 for a in range(like.dim() - 2)])


def _pool_axis(x: torch.Tensor, axis: int, r: int, mean: bool) -> torch.Tensor:
    """Window mean (``mean``: divided by the pixels inside the image) or zero-padded window sum of radius ``r`` along
    spatial ``axis`` of ``x`` ``(N, C, *spatial)`` (2 or 3 spatial dims), by one 1-D average pooling."""
    dims = x.dim() - 2
    pool = _AVG_POOL[dims]
    kernel, padding = [1] * dims, [0] * dims
    kernel[axis] = 2 * r + 1
    divisor = {} if mean else {"divisor_override": 1}
    if int(x.shape[2 + axis]) >= 2 * r + 1:  # pooling divides by the count of non-padded pixels itself
        padding[axis] = r
        return pool(x, kernel, stride=1, padding=padding, count_include_pad=not mean, **divisor)
    # Pooling refuses an axis shorter than its window even with padding: zero-pad by hand (then, for the mean, rescale
    # the window means of 2r + 1 pixels by the valid count).
    pad = [0] * (2 * dims)
    pad[2 * (dims - 1 - axis)] = pad[2 * (dims - 1 - axis) + 1] = r  # F.pad lists the last axis first
    out = pool(F.pad(x, pad), kernel, stride=1, **divisor)
    return out * ((2 * r + 1) / _window_counts(int(x.shape[2 + axis]), r, axis, x)) if mean else out


def _box_axis(x: torch.Tensor, axis: int, radius: int) -> torch.Tensor:
    """Clipped box mean along spatial ``axis`` of ``x`` ``(N, C, *spatial)`` (2 or 3 spatial dims)."""
    r = min(radius, int(x.shape[2 + axis]) - 1)  # a window reaching past both ends covers the whole axis either way
    return x if r == 0 else _pool_axis(x, axis, r, mean=True)


def box_filter(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over the ``(2r+1)^d`` window around every pixel, clipped at the border (divides by the valid count).

    The clipped box mean is separable (sum and count both factor per axis), so it runs as one 1-D average pooling per
    axis with ``count_include_pad=False``: ``O(d · (2r+1))`` work per pixel instead of ``O((2r+1)^d)``. Pooling refuses
    an axis shorter than its window even with padding, so such an axis is zero-padded by hand and its window sums are
    divided by the per-axis count of pixels inside the image, ``min(i + r, S − 1) − max(i − r, 0) + 1``.

    Speed: in 2D every axis is pooled by ``avg_pool2d`` on a channels-last tensor (channels innermost, so the window sums
    are vectorised over all channels at once; on CPU about 10× faster than channels-first pooling), so the result may be
    channels-last. 3D pools channels-first per axis (the layout copies of channels-last 3D pooling cost more than
    they save); 1D pools ``(N, C, 1, L)``.

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
    cl = torch.channels_last
    if dims == 1:
        return _box_axis(x.unsqueeze(2), 1, radius).squeeze(2)
    if dims == 2:
        y = x.contiguous(memory_format=cl)
        return _box_axis(_box_axis(y, 0, radius), 1, radius)
    out = x  # 3D: channels-first 1-D pooling per axis (the layout copies of a channels-last 3D pooling cost more)
    for axis in range(3):
        out = _box_axis(out, axis, radius)
    return out


def _box_sum_adjoint_axis(y: torch.Tensor, axis: int, radius: int) -> torch.Tensor:
    """Adjoint of the clipped box mean along spatial ``axis`` of ``y`` ``(N, C, *spatial)`` (2 or 3 spatial dims).

    The clipped mean is ``D⁻¹ S`` (``S``: window sums over the zero-padded axis, symmetric; ``D``: the counts), so its
    adjoint is ``S D⁻¹``: divide by the counts, then sum the windows."""
    size = int(y.shape[2 + axis])
    r = min(radius, size - 1)
    return y if r == 0 else _pool_axis(y * (1.0 / _window_counts(size, r, axis, y)), axis, r, mean=False)


def box_filter_adjoint(y: torch.Tensor, radius: int) -> torch.Tensor:
    """The adjoint (transpose) of :func:`box_filter`: ``<box_filter(x), y> = <x, box_filter_adjoint(y)>``.

    The box mean is a fixed linear map, so its gradient is this map applied to the output gradient and its backward
    needs nothing of the forward pass. Per axis in reverse order: divide by the window counts, then sum the windows.

    Args:
        y: ``(N, C, *spatial)`` with 1–3 spatial dims.
        radius: the forward's window radius.

    Returns:
        Tensor of the same shape and dtype (channels-last in 2D, as :func:`box_filter`'s results).
    """
    dims = y.dim() - 2
    if dims not in _AVG_POOL or radius < 0:
        raise ValueError(f"box_filter_adjoint: need 1-3 spatial dims and radius >= 0, got shape {tuple(y.shape)}, radius {radius}")
    if dims == 1:
        return box_filter_adjoint(y.unsqueeze(2), radius).squeeze(2)
    if dims == 2:
        y = y.contiguous(memory_format=torch.channels_last)
    for axis in reversed(range(dims)):
        y = _box_sum_adjoint_axis(y, axis, radius)
    return y


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


def _coefficient_parts(guide: torch.Tensor, src: torch.Tensor, radius: int, eps: float):
    """``(mean_g, mean_s, a, den, means_ab)`` of eq. 5 and the averaging of eq. 6: ``a = num / den``,
    ``means_ab = box([a, b])`` (``mean(a)``, ``mean(b)`` concatenated over channels).

    Batched: the four window means of eq. 5 (``g``, ``s``, ``g·s``, ``g²``) are one box filter over the channel-wise
    concatenation, and so are the two of eq. 6 (the box filter treats every channel alike, so the values are those of
    separate calls).
    """
    c = int(guide.shape[1])
    means = box_filter(torch.cat([guide, src, guide * src, guide * guide], dim=1), radius)
    mean_g, mean_s, mean_gs, mean_gg = means.split(c, dim=1)
    den = mean_gg - mean_g * mean_g + eps
    a = (mean_gs - mean_g * mean_s) / den
    b = mean_s - a * mean_g
    return mean_g, mean_s, a, den, box_filter(torch.cat([a, b], dim=1), radius)


def _apply(g: torch.Tensor, means_ab: torch.Tensor, fast: bool) -> torch.Tensor:
    """``mean(a) · g + mean(b)``; the fast filter first upsamples both coefficient maps (one interpolation) to ``g``'s
    size. Both follow ``g``'s memory format."""
    c = int(g.shape[1])
    coeffs = means_ab.contiguous(memory_format=_memory_format(g))
    if fast:
        size = [int(n) for n in g.shape[2:]]
        coeffs = F.interpolate(coeffs, size=size, mode=linear_mode(g.dim() - 2), align_corners=False)
    mean_a, mean_b = coeffs.split(c, dim=1)
    return mean_a * g + mean_b


def _down(t: torch.Tensor, fast: bool) -> torch.Tensor:
    """The coefficients' grid: :func:`nearest_half` (a strided view) for the fast filter, ``t`` itself otherwise."""
    return nearest_half(t) if fast else t


def _filter_plain(g: torch.Tensor, s: torch.Tensor, radius: int, eps: float, fast: bool) -> torch.Tensor:
    """The filter as plain differentiable operations (autograd keeps every intermediate); ``radius`` is the one used
    at the coefficients' resolution."""
    return _apply(g, _coefficient_parts(_down(g, fast), _down(s, fast), radius, eps)[-1], fast)


class _GuidedFilterFn(torch.autograd.Function):
    """The guided filter with a hand-written backward that keeps four coefficient-resolution maps (the window means of
    ``g`` and ``s``, ``a`` and its denominator) and ``mean(a), mean(b)``, instead of autograd's ~15 intermediates
    (the box filters' inputs, the ``4C``-channel window means, the full-resolution upsampled coefficients). The box
    mean and the linear upsampling are fixed linear maps, so their gradients are their adjoints
    (:func:`box_filter_adjoint`, :func:`~resfu_med.networks.blocks.linear_upsample.linear_upsample_adjoint`) and need no kept input."""

    @staticmethod
    def forward(ctx, g, s, radius: int, eps: float, fast: bool):
        mean_g, mean_s, a, den, means_ab = _coefficient_parts(_down(g, fast), _down(s, fast), radius, eps)
        ctx.save_for_backward(g, s, torch.cat([mean_g, mean_s], dim=1), a, den, means_ab)
        ctx.radius, ctx.eps, ctx.fast = radius, eps, fast
        return _apply(g, means_ab, fast)

    @staticmethod
    def backward(ctx, grad):
        g, s, mean_gs_pair, a, den, means_ab = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: differentiate the plain operations instead
            out = _filter_plain(g, s, ctx.radius, ctx.eps, ctx.fast)
            return (*grads_with_graph(out, (g, s), ctx.needs_input_grad[:2], grad), None, None, None)
        c, dims, r, fast = int(g.shape[1]), g.dim() - 2, ctx.radius, ctx.fast
        mean_g, mean_s = mean_gs_pair.split(c, dim=1)
        coeffs = means_ab.contiguous(memory_format=_memory_format(g))
        hr_size = [int(n) for n in g.shape[2:]]
        mean_a = coeffs[:, :c]
        if fast:  # mean(a) at full resolution again: one interpolation of C channels instead of a kept map
            mean_a = F.interpolate(mean_a, size=hr_size, mode=linear_mode(dims), align_corners=False)
        grad_g = grad * mean_a
        grad_coeffs = torch.cat([grad * g, grad], dim=1)  # d/d mean(a), d/d mean(b) at full resolution
        if fast:
            grad_coeffs = linear_upsample_adjoint(grad_coeffs, coeffs.shape[2:])
        grad_a, grad_b = box_filter_adjoint(grad_coeffs, r).split(c, dim=1)
        # b = mean_s − a·mean_g, a = num / den, num = mean_gs − mean_g·mean_s, den = mean_gg − mean_g² + ε
        grad_a = grad_a - grad_b * mean_g
        grad_num = grad_a / den
        grad_den = -grad_num * a
        grad_mean_g = -grad_b * a - grad_num * mean_s - 2 * grad_den * mean_g
        grad_mean_s = grad_b - grad_num * mean_g
        grads = box_filter_adjoint(torch.cat([grad_mean_g, grad_mean_s, grad_num, grad_den], dim=1), r)
        d_g, d_s, d_gs, d_gg = grads.split(c, dim=1)
        g_lr, s_lr = _down(g, fast), _down(s, fast)
        grad_g_lr = d_g + d_gs * s_lr + 2 * d_gg * g_lr
        grad_s_lr = d_s + d_gs * g_lr
        if not fast:
            return grad_g + grad_g_lr, grad_s_lr, None, None, None
        grad_s = torch.zeros_like(s)
        _down(grad_g, fast).add_(grad_g_lr)  # nearest_half is a strided view: its adjoint adds into the kept pixels
        _down(grad_s, fast).copy_(grad_s_lr)
        return grad_g, grad_s, None, None, None


def _filter(g: torch.Tensor, s: torch.Tensor, radius: int, eps: float, fast: bool) -> torch.Tensor:
    """The guided filter through :class:`_GuidedFilterFn` when a gradient is needed (plain operations while tracing
    or without gradients)."""
    needs_grad = torch.is_grad_enabled() and (g.requires_grad or s.requires_grad)
    if not needs_grad or torch.jit.is_tracing():
        return _filter_plain(g, s, radius, eps, fast)
    return _GuidedFilterFn.apply(g, s, int(radius), float(eps), bool(fast))


def _check(guide: torch.Tensor, src: torch.Tensor) -> None:
    if guide.shape != src.shape or guide.dim() - 2 not in _AVG_POOL:
        raise ValueError(
            f"guided filter: guide and src must share one (N, C, *spatial) shape with 1-3 spatial dims, "
            f"got guide {tuple(guide.shape)}, src {tuple(src.shape)}"
        )


def _memory_format(t: torch.Tensor) -> torch.memory_format:
    """Channels-last when ``t`` is stored so (2D / 3D), else contiguous: results follow the caller's layout."""
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        return torch.channels_last
    if t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d) and not t.is_contiguous():
        return torch.channels_last_3d
    return torch.contiguous_format


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
        return _filter(guide.to(dtype), src.to(dtype), radius, eps, fast=False).to(guide.dtype)


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
        return _filter(guide.to(dtype), src.to(dtype), max(1, radius // 2), eps, fast=True).to(guide.dtype)


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
