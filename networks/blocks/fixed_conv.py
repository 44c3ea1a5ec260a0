"""Depthwise convolution with a constant kernel whose backward keeps no activation (ReSFU's Gaussian smoothing and the
linear upsampling of its semantic PCDC scores).

A convolution's autograd node keeps its input for the weight's gradient even when the weight needs none; for a fixed
kernel the map is linear in the input alone, so the input gradient is the adjoint applied to the output gradient
(``conv`` ↔ ``conv_transpose`` with the same kernel, stride and groups) and nothing of the forward pass has to be
kept. In ReSFU's last decoder step those inputs are full-resolution maps of 32–128 channels (docs/benchmarks.md,
"ReSFU cost in the networks").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["fixed_depthwise_conv"]

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _depthwise(x: torch.Tensor, weight: torch.Tensor, stride: tuple[int, ...], transposed: bool) -> torch.Tensor:
    """The plain op: ``conv`` (or ``conv_transpose``) of ``x`` with ``weight``, no padding, ``groups = channels``."""
    op = (_CONV_T if transposed else _CONV)[x.dim() - 2]
    return op(x, weight.to(x.dtype), stride=stride, groups=int(x.shape[1]))


class _FixedDepthwiseConv(torch.autograd.Function):
    """:func:`_depthwise` whose backward is the adjoint map."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, stride: tuple[int, ...], transposed: bool) -> torch.Tensor:
        ctx.save_for_backward(weight)  # the (tiny) kernel only
        ctx.stride, ctx.transposed, ctx.dtype = stride, transposed, x.dtype
        return _depthwise(x, weight, stride, transposed)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (weight,) = ctx.saved_tensors
        # conv_transpose is by definition the adjoint of conv (same kernel, stride, groups) and conversely; with no
        # padding the sizes match exactly: (L - 1)·s + k on the way in, ⌊(L' - k) / s⌋ + 1 = L on the way back.
        return _depthwise(grad, weight, ctx.stride, not ctx.transposed).to(ctx.dtype), None, None, None


def fixed_depthwise_conv(x: torch.Tensor, weight: torch.Tensor, stride: int | Sequence[int] = 1, transposed: bool = False) -> torch.Tensor:
    """Depthwise ``conv`` (or ``conv_transpose``) of ``x`` ``(N, C, *spatial)`` with a constant ``weight``
    ``(C, 1, *kernel)``, no padding, equal to ``F.conv{d}d(x, weight, stride=stride, groups=C)`` (or the transposed
    op); its autograd node keeps only the kernel.

    Raises:
        ValueError: if ``weight`` needs a gradient (the adjoint backward gives none) or does not match ``x``.
    """
    dims = x.dim() - 2
    if weight.requires_grad:
        raise ValueError("fixed_depthwise_conv: weight must be constant (requires_grad=False)")
    if dims not in _CONV or weight.dim() != x.dim() or int(weight.shape[0]) != int(x.shape[1]) or int(weight.shape[1]) != 1:
        raise ValueError(f"fixed_depthwise_conv: weight {tuple(weight.shape)} is not a depthwise kernel for x {tuple(x.shape)}")
    step = (int(stride),) * dims if isinstance(stride, int) else tuple(int(s) for s in stride)
    if not (x.requires_grad and torch.is_grad_enabled()):
        return _depthwise(x, weight, step, bool(transposed))
    return _FixedDepthwiseConv.apply(x, weight, step, bool(transposed))
