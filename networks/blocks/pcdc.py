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

from resfu_med.networks.blocks.fixed_conv import fixed_depthwise_conv
from resfu_med.networks.blocks.graph_grads import grads_with_graph
from resfu_med.networks.blocks.padding import replicate_pad, replicate_pad_adjoint
from resfu_med.networks.blocks.pointwise import is_pointwise, pointwise_conv, pointwise_conv_backward

from resfu_med.networks.blocks.norm import group_norm

__all__ = ["PCDC", "PCDCBlock", "Compressor", "group_norm_then_conv", "as_dilation", "integer_ratios", "group_norm_with_stats_of", "compress_sum"]

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def integer_ratios(hr_size: Sequence[int], lr_size: Sequence[int]) -> tuple[int, ...] | None:
    """``H / h`` per axis when every axis is an integer multiple, else ``None``."""
    if len(hr_size) != len(lr_size) or any(h < 1 or H % h for H, h in zip(hr_size, lr_size)):
        return None
    return tuple(H // h for H, h in zip(hr_size, lr_size))


def _linear_upsample_axis(x: torch.Tensor, axis: int, ratio: int) -> torch.Tensor:
    """Linear upsampling (``align_corners=False``) of spatial ``axis`` by the integer ``ratio`` WITHOUT the border
    clamping, on the padded grid: output ``o`` holds ``Σ_m x[m] · max(0, 1 − |(o + ½)/s − ½ − m|)`` for
    ``o = 0 … s·S − 1``, which equals ``F.interpolate(x, scale s)`` wherever it needs no clamping (all but the
    ``≤ s`` outermost samples at each end, which the caller crops).

    Computed as a depthwise transposed convolution with the ``s``-strided hat kernel (the taps ``u`` with non-zero
    weight ``1 − |u + ½ − s/2| / s``); output ``o`` is transposed-convolution index ``o − u_min``.
    """
    if ratio == 1:
        return x
    dims, channels = x.dim() - 2, int(x.shape[1])
    taps = [u for u in range(-2 * ratio, 2 * ratio) if abs(2 * u + 1 - ratio) < 2 * ratio]
    hat = torch.tensor([1.0 - abs(u + 0.5 - ratio / 2) / ratio for u in taps], dtype=x.dtype, device=x.device)
    shape, stride = [1] * dims, [1] * dims
    shape[axis], stride[axis] = len(taps), ratio
    weight = hat.view(1, 1, *shape).expand(channels, 1, *shape)
    out = fixed_depthwise_conv(x, weight, stride, transposed=True)  # a fixed linear map: backward keeps no input
    size = int(x.shape[2 + axis]) * ratio
    pad = -taps[0]  # out[o - u_min] is position o; position 0 has index -u_min
    return out.narrow(2 + axis, pad, size)


def group_norm_with_stats_of(norm: nn.GroupNorm, x: torch.Tensor, stats_of: torch.Tensor) -> torch.Tensor:
    """``norm`` applied to ``x`` with the per-(sample, group) mean and variance of ``stats_of`` instead of ``x``'s own.

    ``norm(stats_of)`` is a per-channel affine map of ``stats_of``; when ``stats_of`` is a linear upsampling of ``x``
    (weights summing to one), that map commutes with the upsampling: ``norm(U x) = U (this function)``.
    """
    n, c = int(x.shape[0]), int(x.shape[1])
    groups = norm.num_groups
    var, mean = torch.var_mean(stats_of.reshape(n, groups, -1), dim=2, unbiased=False)  # (N, G)
    rstd = torch.rsqrt(var + norm.eps)
    scale, mean = rstd.repeat_interleave(c // groups, dim=1), mean.repeat_interleave(c // groups, dim=1)  # (N, C)
    if norm.affine:
        scale = scale * norm.weight
        shift = norm.bias - mean * scale
    else:
        shift = -mean * scale
    view = (n, c) + (1,) * (x.dim() - 2)
    return x * scale.view(view) + shift.view(view)


def as_dilation(dilation: int | Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    """Per-axis dilation tuple from an int or a sequence; every entry must be a positive integer."""
    dil = (int(dilation),) * spatial_dims if isinstance(dilation, int) else tuple(int(d) for d in dilation)
    if len(dil) != spatial_dims or min(dil) < 1:
        raise ValueError(f"dilation must be a positive int or {spatial_dims} positive ints, got {dilation}")
    return dil


def _negated_centre_weight(weight: torch.Tensor) -> torch.Tensor:
    """``−Σ_n W_n``: the 1×1 kernel of eq. 12's central term, negated so the term is added."""
    return weight.sum(dim=tuple(range(2, weight.dim())), keepdim=True).neg()


class Compressor(nn.Sequential):
    """PCDC block's channel compressor: ReLU → Conv1×1(L→hidden, grouped) → ReLU → GroupNorm → Conv1×1(hidden→K^d).

    An ``nn.Sequential`` (the weights keep their names ``compressor.1`` … ``compressor.4``) whose forward runs the
    GroupNorm and the last convolution as :func:`group_norm_then_conv`: the same values, but autograd keeps the hidden
    map ``h`` (which the ReLU keeps anyway) and not ``GN(h)`` as well, one hidden-width map per block less.
    """

    #: Keep only the first ReLU's output for backward and compute the hidden map again there (one grouped 1×1
    #: convolution per block): one hidden-width map per block less kept, a few percent more time (docs/benchmarks.md).
    recompute_hidden = False

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        relu_in, first, relu_mid, norm, last = self
        a = relu_in(v)
        if self.recompute_hidden and torch.is_grad_enabled() and not torch.jit.is_tracing() and not torch.is_autocast_enabled(a.device.type):
            return _CompressorKeepingInput.apply(a, first.weight, first.bias, norm.weight, norm.bias, last.weight,
                                                 last.bias, first.groups, norm.num_groups, norm.eps)
        h = relu_mid(pointwise_conv(a, first.weight, first.bias, first.groups))
        return group_norm_then_conv(h, norm.num_groups, norm.weight, norm.bias, norm.eps, last.weight, last.bias)


def _conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, groups: int = 1, dilation=None,
          pad: list[int] | None = None) -> torch.Tensor:
    """``conv(replicate_pad(x, pad), weight, bias, groups, dilation)``; a 1×1 kernel runs as a matrix product
    (:mod:`~resfu_med.networks.blocks.pointwise`)."""
    if is_pointwise(weight, pad):
        return pointwise_conv(x, weight, bias, groups)
    return _CONV[x.dim() - 2](replicate_pad(x, pad) if pad else x, weight, bias, groups=groups, dilation=dilation or 1)


def _group_norm_layout(t: torch.Tensor, like: torch.Tensor | None = None) -> torch.Tensor:
    """``t`` dense in the layout the GroupNorm kernels read (``like``'s suggested memory format on CPU, contiguous
    elsewhere), as ``torch.group_norm`` and its autograd formula arrange before calling them: the kernels index
    their input as dense."""
    ref = t if like is None else like
    fmt = {4: torch.channels_last, 5: torch.channels_last_3d}.get(ref.dim())
    if ref.device.type == "cpu" and fmt is not None and not ref.is_contiguous() and ref.is_contiguous(memory_format=fmt):
        return t.contiguous(memory_format=fmt)
    return t.contiguous()


def _native_group_norm(h: torch.Tensor, gamma, beta, groups: int, eps: float):
    """``(h, GN(h), mean, rstd)``: ``h`` dense in the GroupNorm kernels' layout, the normalised map and the per-group
    statistics its backward needs."""
    h = _group_norm_layout(h)
    y, mean, rstd = torch.ops.aten.native_group_norm(h, gamma, beta, int(h.shape[0]), int(h.shape[1]), h[0, 0].numel(),
                                                     groups, eps)
    return h, y, mean, rstd


class _GroupNormConv(torch.autograd.Function):
    """GroupNorm (then optional replicate padding) then a convolution, keeping ``h`` and the group statistics instead
    of the normalised map."""

    @staticmethod
    def forward(ctx, h, gamma, beta, weight, bias, groups: int, eps: float, conv_groups: int, dilation, pad):
        h, y, mean, rstd = _native_group_norm(h, gamma, beta, groups, eps)
        ctx.save_for_backward(h, gamma, beta, weight, bias, mean, rstd)
        ctx.groups, ctx.eps, ctx.has_bias, ctx.conv_groups = groups, eps, bias is not None, conv_groups
        ctx.dilation, ctx.pad = dilation, pad
        return _conv(y, weight, bias, conv_groups, dilation, pad)

    @staticmethod
    def backward(ctx, grad_out):
        h, gamma, beta, weight, bias, mean, rstd = ctx.saved_tensors
        needs = ctx.needs_input_grad[:5]
        if torch.is_grad_enabled():  # create_graph=True (double backward): differentiate the layers themselves
            out = _plain_group_norm_then_conv(h, ctx.groups, gamma, beta, ctx.eps, weight, bias, ctx.conv_groups,
                                              ctx.dilation, ctx.pad)
            grads = grads_with_graph(out, (h, gamma, beta, weight, bias), needs, grad_out)
        else:
            grads = _group_norm_conv_grads(grad_out, h, gamma, beta, weight, mean, rstd, ctx.groups, ctx.conv_groups,
                                           ctx.has_bias, needs, ctx.dilation, ctx.pad)
        return (*grads, None, None, None, None, None)


def _group_norm_conv_grads(grad_out, h, gamma, beta, weight, mean, rstd, groups: int, conv_groups: int,
                           has_bias: bool, needs, dilation=None, pad=None):
    """Gradients ``(h, gamma, beta, weight, bias)`` of ``conv(replicate_pad(group_norm(h), pad), dilation)`` from
    ``h`` and the saved group statistics (``needs``: which of the five are wanted)."""
    need_h, need_g, need_b, need_w, need_bias = needs
    n, c, dims = int(h.shape[0]), int(h.shape[1]), h.dim() - 2
    # GN(h) again from the saved statistics: one elementwise pass instead of a kept hidden-width map.
    view = (n, c) + (1,) * dims
    scale = rstd.repeat_interleave(c // groups, dim=1)
    shift = -mean.repeat_interleave(c // groups, dim=1) * scale
    if gamma is not None:
        scale, shift = scale * gamma, shift * gamma
    if beta is not None:
        shift = shift + beta
    y = torch.addcmul(shift.view(view), h, scale.view(view))
    wanted = [need_h or need_g or need_b, need_w, need_bias and has_bias]
    if is_pointwise(weight, pad):
        grad_y, grad_w, grad_bias = pointwise_conv_backward(grad_out, y, weight, conv_groups, wanted)
    else:
        grad_y, grad_w, grad_bias = torch.ops.aten.convolution_backward(
            grad_out, replicate_pad(y, pad) if pad else y, weight, [int(weight.shape[0])] if has_bias else None,
            [1] * dims, [0] * dims, list(dilation) if dilation else [1] * dims, False, [0] * dims, conv_groups, wanted,
        )
    del y
    if pad and grad_y is not None:
        grad_y = replicate_pad_adjoint(grad_y, pad)
    grad_h = grad_g = grad_b = None
    if need_h or need_g or need_b:
        grad_h, grad_g, grad_b = torch.ops.aten.native_group_norm_backward(
            _group_norm_layout(grad_y, like=h), h, mean, rstd, gamma, n, c, h[0, 0].numel(), groups,
            [need_h, need_g and gamma is not None, need_b and beta is not None],
        )
    return grad_h, grad_g, grad_b, grad_w, grad_bias


class _CompressorKeepingInput(torch.autograd.Function):
    """Compressor after its first ReLU: ``conv1×1(GN(relu(conv1×1(a, W1, b1))), W2, b2)``, keeping only its input
    ``a`` (which the first ReLU keeps anyway) and the group statistics; the backward computes the hidden map ``h``
    again (one grouped 1×1 convolution) instead of keeping it. Opt-in (:class:`Compressor` ``recompute_hidden``)."""

    @staticmethod
    def forward(ctx, a, w1, b1, gamma, beta, w2, b2, first_groups: int, groups: int, eps: float):
        h = torch.relu_(pointwise_conv(a, w1, b1, first_groups))
        h, y, mean, rstd = _native_group_norm(h, gamma, beta, groups, eps)
        del h  # not kept: the backward computes it again
        ctx.save_for_backward(a, w1, b1, gamma, beta, w2, b2, mean, rstd)
        ctx.first_groups, ctx.groups, ctx.eps = first_groups, groups, eps
        return pointwise_conv(y, w2, b2)

    @staticmethod
    def backward(ctx, grad_out):
        a, w1, b1, gamma, beta, w2, b2, mean, rstd = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True (double backward): differentiate the plain layers
            h = torch.relu(pointwise_conv(a, w1, b1, ctx.first_groups))
            out = _plain_group_norm_then_conv(h, ctx.groups, gamma, beta, ctx.eps, w2, b2)
            grads = grads_with_graph(out, (a, w1, b1, gamma, beta, w2, b2), ctx.needs_input_grad[:7], grad_out)
            return (*grads, None, None, None)
        need_a, need_w1, need_b1, need_g, need_b, need_w2, need_b2 = ctx.needs_input_grad[:7]
        h = _group_norm_layout(torch.relu_(pointwise_conv(a, w1, b1, ctx.first_groups)))  # the same kernels: the same h
        need_h = need_a or need_w1 or need_b1
        grad_h, grad_g, grad_b, grad_w2, grad_b2 = _group_norm_conv_grads(
            grad_out, h, gamma, beta, w2, mean, rstd, ctx.groups, 1, True, (need_h, need_g, need_b, need_w2, need_b2))
        grad_a = grad_w1 = grad_b1 = None
        if need_h:
            grad_pre = torch.ops.aten.threshold_backward(grad_h, h, 0)
            del h, grad_h
            grad_a, grad_w1, grad_b1 = pointwise_conv_backward(grad_pre, a, w1, ctx.first_groups, (need_a, need_w1, need_b1))
        return grad_a, grad_w1, grad_b1, grad_g, grad_b, grad_w2, grad_b2, None, None, None


def _plain_group_norm_then_conv(h, groups, gamma, beta, eps, weight, bias, conv_groups: int = 1, dilation=None,
                                pad=None) -> torch.Tensor:
    """The layers as they are (autograd keeps the normalised map)."""
    return _conv(F.group_norm(h, groups, gamma, beta, eps), weight, bias, conv_groups, dilation, pad)


def group_norm_then_conv(h: torch.Tensor, groups: int, gamma: torch.Tensor | None, beta: torch.Tensor | None, eps: float,
                         weight: torch.Tensor, bias: torch.Tensor | None, conv_groups: int = 1,
                         dilation: Sequence[int] | None = None, pad: list[int] | None = None) -> torch.Tensor:
    """``conv(replicate_pad(group_norm(h, groups, gamma, beta, eps), pad), weight, bias)`` (a 1×1 convolution when
    ``pad`` and ``dilation`` are not given) whose autograd keeps ``h``, not the normalised map.

    The forward is exactly the two layers' (the same kernels); the backward recomputes the normalised map from ``h``
    and the saved per-group statistics (one elementwise pass) for the convolution's weight gradient. While not
    training (no gradient needed), or in half precision under autocast, the layers run as they are.

    Args:
        h: ``(N, C, *spatial)``.
        groups: GroupNorm groups (divides ``C``).
        gamma, beta: GroupNorm's affine ``(C,)`` (``None``: no affine).
        eps: GroupNorm's eps.
        weight: convolution weight ``(out, C / conv_groups, *kernel)`` (1×1 unless ``pad`` makes room for more).
        bias: its bias ``(out,)`` or ``None``.
        conv_groups: groups of the convolution.
        dilation: the convolution's dilation per axis (``None``: 1).
        pad: replicate padding of the normalised map before the convolution (``F.pad`` order; ``None``: none); the
            backward pads the rebuilt map again.

    Returns:
        ``(N, out, *spatial')`` (the spatial size the padding and kernel give; ``spatial`` for a 1×1 kernel).
    """
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (h, gamma, beta, weight, bias)
    )
    if not needs_grad or torch.is_autocast_enabled(h.device.type) or torch.jit.is_tracing():
        return _plain_group_norm_then_conv(h, groups, gamma, beta, eps, weight, bias, conv_groups, dilation, pad)
    dil = tuple(int(d) for d in dilation) if dilation is not None else None
    return _GroupNormConv.apply(h, gamma, beta, weight, bias, int(groups), float(eps), int(conv_groups), dil,
                                list(pad) if pad else None)


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

    def _centre(self, query: torch.Tensor, query_norm: nn.GroupNorm | None) -> torch.Tensor:
        """``conv1×1(q̄, −ΣW)`` (grouped), with ``q̄ = query_norm(query)`` when a GroupNorm is given: then as
        :func:`group_norm_then_conv`, whose autograd keeps ``query`` (which its producer keeps anyway) instead of the
        normalised map."""
        weight = _negated_centre_weight(self.weight)
        if query_norm is None:
            return pointwise_conv(query, weight, None, self.groups)
        n = query_norm
        return group_norm_then_conv(query, n.num_groups, n.weight, n.bias, n.eps, weight, None, self.groups)

    def forward(self, query: torch.Tensor, key: torch.Tensor, dilation: int | Sequence[int] = 1,
                query_norm: nn.GroupNorm | None = None, key_norm: nn.GroupNorm | None = None) -> torch.Tensor:
        """``v = conv(k̄, W, dilation) − conv1×1(q̄, ΣW) + b``.

        Args:
            query: ``(N, D, *spatial)`` centre features ``q̄`` (or, with ``query_norm``, the features it normalises).
            key: same shape, neighbour features ``k̄``.
            dilation: neighbour spacing ``s`` (int or one per axis).
            query_norm: GroupNorm giving ``q̄ = query_norm(query)``; ``None``: ``query`` is ``q̄``.
            key_norm: GroupNorm giving ``k̄ = key_norm(key)`` (then normalised, padded and convolved as one function
                that keeps ``key``, not the padded normalised map); ``None``: ``key`` is ``k̄``.

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
        if key_norm is None:
            neighbours = conv(replicate_pad(key, pad), weight, self.bias, groups=self.groups, dilation=dil)
        else:
            n = key_norm
            neighbours = group_norm_then_conv(key, n.num_groups, n.weight, n.bias, n.eps, weight, self.bias, self.groups,
                                              dil, pad)
        # − conv(q̄, ΣW) as + conv(q̄, −ΣW): bit-identical, and the backward negates the small kernel, not an
        # L-channel map. In place: a convolution does not save its output, one L-channel map less.
        return neighbours.add_(self._centre(query, query_norm))

    def forward_upsampled_key(self, query: torch.Tensor, key_lr: torch.Tensor, ratios: Sequence[int],
                              query_norm: nn.GroupNorm | None = None) -> torch.Tensor:
        """``forward(query, U(key_lr), dilation=ratios)`` without building the key at HR: exact for integer ratios.

        ``U`` is linear upsampling with ``align_corners=False`` by the integer ``ratios`` (``H = s·h`` per axis). Why it
        is exact: with ``src(i) = (i + ½)/s − ½``, ``U(k)(i) = lerp(k_ext, src(i))`` at every ``i``, where ``k_ext`` is
        ``k`` replicate-extended (PyTorch's clamping of ``src`` and of the upper index gives exactly that). The HR
        neighbour ``i + s·a`` has ``src(i) + a``, and the HR replicate padding repeats ``U(k)(0) = k(0)`` and
        ``U(k)(H−1) = k(h−1)``, which is ``lerp(k_ext, ·)`` beyond the ends too. So
        ``Σ_a W_a · pad(U k)(i + s·a) = lerp(F, src(i))`` with ``F = conv(k_ext, W)`` at LR, dilation 1, over
        ``j = −1 … h`` (replicate padding ``R + 1``). ``F`` has ``h + 2`` samples; ``lerp(F, src(i))`` is the linear
        upsampling of ``F`` to ``s·(h + 2)`` cropped by ``s`` at each end (``src'(i + s) = src(i) + 1``, no clamping).
        The central-difference term and the bias are per HR pixel and stay as in :meth:`forward`.

        Cost: the ``L·(D/G)·K^d`` multiply-adds per pixel run at LR (``∏s`` times fewer); the ``L``-channel result is
        upsampled instead of the ``D``-channel key (one depthwise transposed convolution per axis, which measured faster
        than ``F.interpolate`` on CPU).

        Args:
            query: ``(N, D, *HR)`` centre features ``q̄``.
            key_lr: ``(N, D, *LR)`` neighbour features before upsampling.
            ratios: integer ``H / h`` per axis (also the dilation).
            query_norm: as in :meth:`forward`.

        Returns:
            ``(N, L, *HR)``.
        """
        dims = self.spatial_dims
        ratios = as_dilation(ratios, dims)
        hr = [int(h) * s for h, s in zip(key_lr.shape[2:], ratios)]
        if key_lr.dim() != dims + 2 or query.shape[1] != self.in_channels or list(query.shape[2:]) != hr:
            raise ValueError(
                f"PCDC: query {tuple(query.shape)} must be key {tuple(key_lr.shape)} upsampled by {ratios}, with "
                f"{self.in_channels} channels"
            )
        radius = self.kernel_size // 2
        conv = _CONV[dims]
        weight = self.weight
        neighbours = conv(replicate_pad(key_lr, [radius + 1] * (2 * dims)), weight, self.bias, groups=self.groups)
        for axis, (s, length) in enumerate(zip(ratios, hr)):
            neighbours = _linear_upsample_axis(neighbours, axis, s).narrow(2 + axis, s, length)
        return neighbours + self._centre(query, query_norm)

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
        self.compressor = Compressor(
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
        return self.compressor(self.pcdc(query, key, dilation, query_norm=self.norm, key_norm=self.norm))

    def forward_upsampled_key(
        self, query: torch.Tensor, key_lr: torch.Tensor, key_hr: torch.Tensor, ratios: Sequence[int]
    ) -> torch.Tensor:
        """``forward(query, key_hr, ratios)`` where ``key_hr`` is the linear upsampling (``align_corners=False``) of
        ``key_lr`` by integer ``ratios``: the PCDC convolution of the key runs at LR (:meth:`PCDC.forward_upsampled_key`)
        and ``key_hr`` only provides the GroupNorm statistics (the normalisation is a per-channel affine map, which
        commutes with the upsampling). Equal to :meth:`forward` up to rounding."""
        key_n = group_norm_with_stats_of(self.norm, key_lr, key_hr)
        return self.compressor(self.pcdc.forward_upsampled_key(query, key_n, ratios, query_norm=self.norm))


def compress_sum(blocks: Sequence[PCDCBlock], values: Sequence[torch.Tensor]) -> torch.Tensor:
    """``Σ_b blocks[b].compressor(values[b])`` in one pass: the blocks' compressors side by side as grouped layers.

    Exact: each block's first convolution is grouped and its GroupNorm's groups stay within the block, so
    concatenating the blocks' channels with the groups added up computes the same per-block maps; the last
    convolutions (to ``K^d``) become one convolution over the concatenated hidden channels with summed biases, which
    is the sum of the blocks' scores. One ReLU, one grouped convolution, one GroupNorm and one convolution run instead
    of one each per block, and the scores need no separate addition.
    """
    if len({b.pcdc.spatial_dims for b in blocks}) != 1 or len(blocks) != len(values):
        raise ValueError("compress_sum: blocks must share spatial_dims, one value per block")
    first = [b.compressor[1] for b in blocks]
    norms = [b.compressor[3] for b in blocks]
    last = [b.compressor[4] for b in blocks]
    v = torch.relu(torch.cat(list(values), dim=1))
    h = pointwise_conv(v, torch.cat([c.weight for c in first]), torch.cat([c.bias for c in first]), sum(c.groups for c in first))
    h = torch.relu_(h)
    groups, gamma, beta = sum(n.num_groups for n in norms), torch.cat([n.weight for n in norms]), torch.cat([n.bias for n in norms])
    weight, bias = torch.cat([c.weight for c in last], dim=1), sum(c.bias for c in last)
    return group_norm_then_conv(h, groups, gamma, beta, norms[0].eps, weight, bias)
