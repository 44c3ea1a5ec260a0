"""Linear upsampling (``align_corners=False``) with a fast adjoint for the ×2 steps of ReSFU's decoders.

ReSFU upsamples its key to the output size and the fast guided filter upsamples its coefficients, almost always by
exactly 2 per axis. ATen's CPU backward of ``upsample_{bi,tri}linear`` scatters every output gradient into its
``2^d`` sources one element at a time; for a ×2 step the same adjoint is, per axis, a fixed stencil over the even and
odd output samples: LR ``i`` receives ``¾`` of outputs ``2i`` and ``2i + 1`` and ``¼`` of outputs ``2i − 1`` and
``2i + 2``, with the clamped border samples (outputs ``0`` and ``2n − 1`` read only LR ``0`` / ``n − 1``) folding
their other quarter back onto the border. Written as slices, that runs 4-5× faster than ATen's backward on CPU
(docs/resfu_module.md, "Cost"). Values equal ATen's up to float rounding (another summation order).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["linear_mode", "upsample_linear", "linear_upsample_adjoint"]

_MODE = {1: "linear", 2: "bilinear", 3: "trilinear"}
_ATEN_ADJOINT = {
    1: torch.ops.aten.upsample_linear1d_backward,
    2: torch.ops.aten.upsample_bilinear2d_backward,
    3: torch.ops.aten.upsample_trilinear3d_backward,
}
#: Device types on which the stencil adjoint runs (measured faster only there; elsewhere ATen's backward).
STENCIL_DEVICES = ("cpu",)


def linear_mode(spatial_dims: int) -> str:
    """``"linear" | "bilinear" | "trilinear"`` (``F.interpolate``'s linear mode) for 1, 2, 3 spatial dimensions."""
    if spatial_dims not in _MODE:
        raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}.")
    return _MODE[spatial_dims]


def _double_adjoint(grad: torch.Tensor, axis: int) -> torch.Tensor:
    """Adjoint of ×2 linear upsampling along ``axis`` (``grad`` has ``2n`` samples there, the result ``n``)."""
    n = int(grad.shape[axis]) // 2
    pairs = grad.unflatten(axis, (n, 2))
    even, odd = pairs.select(axis + 1, 0), pairs.select(axis + 1, 1)
    out = (even + odd).mul_(0.75)
    if n > 1:
        out.narrow(axis, 1, n - 1).add_(odd.narrow(axis, 0, n - 1), alpha=0.25)
        out.narrow(axis, 0, n - 1).add_(even.narrow(axis, 1, n - 1), alpha=0.25)
    out.select(axis, 0).add_(even.select(axis, 0), alpha=0.25)
    out.select(axis, n - 1).add_(odd.select(axis, n - 1), alpha=0.25)
    return out


def linear_upsample_adjoint(grad: torch.Tensor, in_size: Sequence[int]) -> torch.Tensor:
    """The input gradient of ``F.interpolate(x, size=grad.shape[2:], mode=linear, align_corners=False)`` for ``x`` of
    spatial size ``in_size``: the stencil of this module where every axis is ×1 or ×2 (on CPU), ATen's backward
    otherwise."""
    dims = grad.dim() - 2
    out_size = [int(n) for n in grad.shape[2:]]
    in_size = [int(n) for n in in_size]
    exact = all(o in (i, 2 * i) for o, i in zip(out_size, in_size))
    if not exact or grad.device.type not in STENCIL_DEVICES or torch.compiler.is_compiling():
        return _ATEN_ADJOINT[dims](grad, out_size, [*grad.shape[:2], *in_size], False)
    for axis, (o, i) in enumerate(zip(out_size, in_size)):
        if o == 2 * i:
            grad = _double_adjoint(grad, 2 + axis)
    return grad


class _UpsampleLinear(torch.autograd.Function):
    """``F.interpolate`` forward, :func:`linear_upsample_adjoint` backward (keeps only the input size)."""

    @staticmethod
    def forward(ctx, x, size):
        ctx.in_size = [int(n) for n in x.shape[2:]]
        return F.interpolate(x, size=size, mode=linear_mode(x.dim() - 2), align_corners=False)

    @staticmethod
    def backward(ctx, grad):
        # Linear in grad, so the adjoint's own operations also serve a double backward.
        return linear_upsample_adjoint(grad, ctx.in_size), None


def upsample_linear(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``F.interpolate(x, size=size, mode="(bi/tri)linear", align_corners=False)`` whose backward is
    :func:`linear_upsample_adjoint`; the plain call while compiling or tracing and when no gradient is needed.

    Args:
        x: ``(N, C, *spatial)`` with 1-3 spatial dims.
        size: the output's spatial size.
    """
    if x.dim() - 2 not in _MODE:
        raise ValueError(f"upsample_linear: x must have 1-3 spatial dims, got shape {tuple(x.shape)}")
    size = [int(n) for n in size]
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or not (torch.is_grad_enabled() and x.requires_grad):
        return F.interpolate(x, size=size, mode=linear_mode(x.dim() - 2), align_corners=False)
    return _UpsampleLinear.apply(x, size)
