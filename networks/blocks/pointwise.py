"""1×1 (pointwise) convolutions as matrix products where PyTorch's CPU convolution is slow for them.

Why: with more than one CPU thread PyTorch runs 1×1 convolutions through oneDNN, which is slow for the shapes ReSFU
uses: grouped 1×1 convolutions (the PCDC central term, the compressor's first layer) and few output channels (the
compressor's last layer, ``K^d`` = 9 or 27 scores). Measured on the 2-core development VM, forward + backward at 2
threads, batch 2 at 80²: 128→9 channels 9.7 ms as a convolution, 4.0 ms as a matrix product; 32→128 in 4 groups
10.7 vs 2.0 ms (docs/resfu_module.md, "Cost"). With one thread PyTorch uses its own GEMM-based path and neither
wins throughout (0.7–1.25× in the same measurement), so the convolution stays; so it does on GPUs (cuDNN), while
compiling (inductor chooses) and for channel counts oneDNN handles well (ungrouped, a multiple of 16 outputs).

The product computes the same sums in another order: equal to the convolution up to float rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["pointwise_conv", "use_matmul", "pointwise_conv_backward"]

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def use_matmul(x: torch.Tensor, weight: torch.Tensor, groups: int = 1) -> bool:
    """Whether :func:`pointwise_conv` runs ``x`` through a matrix product (see the module docstring)."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or x.device.type != "cpu":
        return False
    if not x.is_contiguous() or x.dtype not in (torch.float32, torch.float64):
        return False
    return torch.get_num_threads() > 1 and (groups > 1 or int(weight.shape[0]) % 16 != 0)


def pointwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, groups: int = 1) -> torch.Tensor:
    """``conv(x, weight, bias, groups=groups)`` for a 1×1 (1×1×1) ``weight`` ``(out, in / groups, 1, …)``.

    Args:
        x: ``(N, C, *spatial)``, 1–3 spatial dims.
        weight: the 1×1 kernel.
        bias: ``(out,)`` or ``None``.
        groups: channel groups (divides ``C`` and ``out``).

    Returns:
        ``(N, out, *spatial)``.
    """
    if not use_matmul(x, weight, groups):
        return _CONV[x.dim() - 2](x, weight, bias, groups=groups)
    n, c, out = int(x.shape[0]), int(x.shape[1]), int(weight.shape[0])
    y = torch.matmul(weight.reshape(groups, out // groups, c // groups), x.reshape(n, groups, c // groups, -1))
    y = y.reshape(n, out, *x.shape[2:])
    return y if bias is None else y + bias.view((1, out) + (1,) * (x.dim() - 2))


def pointwise_conv_backward(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                            needs: tuple[bool, bool, bool]) -> tuple[torch.Tensor | None, ...]:
    """Gradients of an ungrouped :func:`pointwise_conv` that ran as a matrix product: ``(grad_x, grad_weight,
    grad_bias)``, each ``None`` unless asked for in ``needs``."""
    n, c, out = int(x.shape[0]), int(x.shape[1]), int(weight.shape[0])
    g = grad_out.contiguous().view(n, out, -1)
    w = weight.reshape(out, c)
    grad_x = torch.matmul(w.t(), g).view(x.shape) if needs[0] else None
    grad_w = torch.matmul(g, x.reshape(n, c, -1).transpose(1, 2)).sum(0).view(weight.shape) if needs[1] else None
    grad_b = g.sum((0, 2)) if needs[2] else None
    return grad_x, grad_w, grad_b
