"""Autograd and fake (meta) kernels of the compiled ``resfu_med::fns_gather_forward`` op.

Registered from Python with ``torch.library`` once the extension is loaded: the backward calls the compiled
``fns_gather_backward`` (both gradients in one pass over the output), the fake kernel gives shapes to
``torch.compile``/``FakeTensor`` tracing.
"""

from __future__ import annotations

import torch

__all__ = ["register"]

_registered = False


def _setup_context(ctx, inputs, output) -> None:
    attn, x, kernel_depth, deterministic = inputs
    ctx.save_for_backward(attn, x)
    ctx.kernel_depth = kernel_depth
    ctx.deterministic = deterministic


def _backward(ctx, grad_out):
    attn, x = ctx.saved_tensors
    grad_attn, grad_x = torch.ops.resfu_med.fns_gather_backward(grad_out, attn, x, ctx.kernel_depth, ctx.deterministic)
    return grad_attn, grad_x, None, None


def _forward_fake(attn, x, kernel_depth, deterministic):
    return attn.new_empty((x.shape[0], x.shape[1], *attn.shape[2:]))


def _backward_fake(grad_out, attn, x, kernel_depth, deterministic):
    return torch.empty_like(attn), torch.empty_like(x)


def register() -> None:
    """Register autograd and fake kernels (idempotent)."""
    global _registered
    if _registered:
        return
    torch.library.register_autograd("resfu_med::fns_gather_forward", _backward, setup_context=_setup_context)
    torch.library.register_fake("resfu_med::fns_gather_forward", _forward_fake)
    torch.library.register_fake("resfu_med::fns_gather_backward", _backward_fake)
    _registered = True
