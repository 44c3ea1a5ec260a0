"""1×1 (pointwise) convolutions as matrix products, for ReSFU's full-resolution 1×1 layers.

ReSFU's query projection, the PCDC central-difference term and both compressor convolutions are 1×1 convolutions at
the output resolution, three of them grouped. A 1×1 convolution is one matrix product per group. On CPU, oneDNN's
grouped 1×1 convolution and its backward ran 1.2× (1 thread) to 3× (2 threads) slower than the same products through
``torch.matmul`` (docs/resfu_module.md, "Cost", the bullet on 1×1 convolutions as matrix products). The values equal the convolution's up to float
rounding (another summation order). On other devices the convolution itself runs: cuDNN's 1×1 kernels are fast, and
the product form takes three kernel launches (weight copy, product, bias) where the convolution takes one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from resfu_med.networks.blocks.graph_grads import grads_with_graph

__all__ = ["is_pointwise", "pointwise_conv", "pointwise_conv_backward"]


def is_pointwise(weight: torch.Tensor, pad: Sequence[int] | None = None) -> bool:
    """True for a 1×1(×1) kernel with no padding (a dilation then changes nothing)."""
    return all(int(k) == 1 for k in weight.shape[2:]) and not pad


def _as_groups(t: torch.Tensor, groups: int) -> torch.Tensor:
    """``(N, C, *spatial)`` viewed as ``(N, groups, C / groups, P)`` (a copy only when ``t`` is not contiguous)."""
    return t.reshape(int(t.shape[0]), groups, int(t.shape[1]) // groups, -1)


def _group_weight(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """``(out, in / groups, 1, …)`` as ``(groups, out / groups, in / groups)``."""
    return weight.reshape(groups, int(weight.shape[0]) // groups, int(weight.shape[1]))


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
#: Device types on which 1×1 convolutions run as matrix products (measured faster only there).
PRODUCT_DEVICES = ("cpu",)


def _product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, groups: int) -> torch.Tensor:
    """The forward pass: one matrix product per group, batched over samples and groups."""
    n, out = int(x.shape[0]), int(weight.shape[0])
    # Written into the output's own storage (out=): a view of the product would be a view made inside an autograd
    # Function, which autograd forbids modifying in place (ReSFU's ReLUs and sums are in place).
    y = x.new_empty((n, out, *x.shape[2:]))
    torch.matmul(_group_weight(weight, groups).to(x.dtype), _as_groups(x, groups), out=_as_groups(y, groups))
    if bias is not None:
        y.add_(bias.to(y.dtype).view(1, out, *(1,) * (x.dim() - 2)))
    return y


class _PointwiseConv(torch.autograd.Function):
    """:func:`_product` keeping ``x`` and ``weight`` for its backward: autograd's own matmul node would also keep the
    weight expanded over the samples (a copy per call)."""

    @staticmethod
    def forward(ctx, x, weight, bias, groups: int):
        ctx.save_for_backward(x, weight, bias)
        ctx.groups = groups
        return _product(x, weight, bias, groups)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, bias = ctx.saved_tensors
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2] and bias is not None)
        if torch.is_grad_enabled():  # create_graph=True (double backward): differentiate the convolution itself
            out = _CONV[x.dim() - 2](x, weight, bias, groups=ctx.groups)
            return (*grads_with_graph(out, (x, weight, bias), needs, grad_out), None)
        return (*pointwise_conv_backward(grad_out, x, weight, ctx.groups, needs), None)


def pointwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, groups: int = 1) -> torch.Tensor:
    """``F.conv{d}d(x, weight, bias, groups=groups)`` for a 1×1 kernel, computed as one batched matrix product.

    Its backward (:func:`pointwise_conv_backward`) is matrix products too and keeps only ``x`` and the weights. Off
    the CPU, under autocast and while tracing the convolution itself runs (its kernels and dtype rules). Any number
    of spatial dims.

    Args:
        x: ``(N, C, *spatial)``.
        weight: ``(out, C / groups, 1, …)``.
        bias: ``(out,)`` or ``None``.
        groups: convolution groups (divides ``C`` and ``out``).

    Raises:
        ValueError: if the kernel is not 1×1 or the channels do not match.
    """
    n, c, out = int(x.shape[0]), int(x.shape[1]), int(weight.shape[0])
    if not is_pointwise(weight) or weight.dim() != x.dim() or c % groups or out % groups or int(weight.shape[1]) * groups != c:
        raise ValueError(f"pointwise_conv: weight {tuple(weight.shape)} with groups={groups} is not a 1x1 kernel for x {tuple(x.shape)}")
    if x.device.type not in PRODUCT_DEVICES or torch.is_autocast_enabled(x.device.type) or torch.jit.is_tracing():
        return _CONV[x.dim() - 2](x, weight, bias, groups=groups)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))
    if not needs_grad:
        return _product(x, weight, bias, groups)
    return _PointwiseConv.apply(x, weight, bias, int(groups))


def pointwise_conv_backward(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, groups: int,
                            needs: Sequence[bool]) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients ``(x, weight, bias)`` of :func:`pointwise_conv` for ``grad_out``, as matrix products (for the
    hand-written backward passes that call the convolution themselves); ``needs`` says which of the three are wanted.
    Off the CPU, the convolution's own backward (as :func:`pointwise_conv` runs the convolution there).
    """
    if grad_out.device.type not in PRODUCT_DEVICES:
        dims = x.dim() - 2
        return torch.ops.aten.convolution_backward(grad_out, x, weight, [int(weight.shape[0])] if needs[2] else None,
                                                   [1] * dims, [0] * dims, [1] * dims, False, [0] * dims, groups,
                                                   [bool(n) for n in needs])
    need_x, need_w, need_b = needs
    g = _as_groups(grad_out, groups)
    grad_x = grad_w = grad_b = None
    if need_x:
        grad_x = torch.matmul(_group_weight(weight, groups).to(g.dtype).transpose(1, 2), g).view(x.shape)
    if need_w:
        grad_w = torch.matmul(g, _as_groups(x, groups).transpose(2, 3)).sum(0).view(weight.shape).to(weight.dtype)
    if need_b:
        grad_b = grad_out.sum(dim=[0] + list(range(2, grad_out.dim())))
    return grad_x, grad_w, grad_b
