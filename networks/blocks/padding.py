"""Replicate padding by clamped indexing, identical in value to ``F.pad(..., mode="replicate")``.

Why not ``F.pad``: under ``torch.compile`` (inductor) the backward of ``replication_pad{1,2,3}d`` on a channels-last
tensor fails inductor's ``assert_size_stride`` (eager returns a different memory format than the op's meta function
declares). ``index_select`` with clamped indices copies the same border values and its backward (``index_add``)
compiles for every memory format, so ReSFU networks compile with the default backend and ``fullgraph=True``.
Only there, though: in eager mode ``index_select`` along the innermost axis is 10-30× slower than ``F.pad``'s own
kernel on CPU (a 2 × 128 × 112² map: 34 against 1.2 ms, 1 thread; docs/resfu_module.md, "Cost"), so eager runs pad
with ``F.pad`` (the same values: both copy border elements), inside a function whose backward is
:func:`replicate_pad_adjoint` and keeps only the shapes (autograd's formula for ``F.pad`` would keep the input).
"""

from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F

__all__ = ["replicate_pad", "replicate_pad_adjoint"]


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
    if len(pad) == 2 * (x.dim() - 2) and x.dim() in (3, 4, 5) and not torch.compiler.is_compiling() and not torch.jit.is_tracing():
        return _ReplicatePad.apply(x, list(pad))
    for i in range(len(pad) // 2):
        before, after = pad[2 * i], pad[2 * i + 1]
        if before == 0 and after == 0:
            continue
        axis = x.dim() - 1 - i
        size = x.shape[axis]
        index = torch.arange(-before, size + after, device=x.device).clamp_(0, size - 1)
        x = x.index_select(axis, index)
    return x


class _ReplicatePad(torch.autograd.Function):
    """``F.pad(x, pad, mode="replicate")``, differentiated by :func:`replicate_pad_adjoint` (keeps no tensor)."""

    @staticmethod
    def forward(ctx, x, pad):
        ctx.pad = pad
        return F.pad(x, pad, mode="replicate")

    @staticmethod
    def backward(ctx, grad):
        return replicate_pad_adjoint(grad, ctx.pad), None


def replicate_pad_adjoint(grad: torch.Tensor, pad: List[int]) -> torch.Tensor:
    """The adjoint of :func:`replicate_pad` (its input gradient): every padded position's gradient is added to the
    border value it copies. ``grad`` is shaped like the padded tensor; the result like the unpadded one."""
    if len(pad) % 2 != 0 or min(pad) < 0:
        raise ValueError(f"replicate_pad_adjoint: pad must be pairs of non-negative amounts, got {pad}")
    for i in reversed(range(len(pad) // 2)):  # undo the axes in the reverse order of replicate_pad
        before, after = pad[2 * i], pad[2 * i + 1]
        if before == 0 and after == 0:
            continue
        axis = grad.dim() - 1 - i
        size = grad.shape[axis] - before - after
        index = torch.arange(-before, size + after, device=grad.device).clamp_(0, size - 1)
        shape = list(grad.shape)
        shape[axis] = size
        grad = grad.new_zeros(shape).index_add_(axis, index, grad)
    return grad
