"""Autograd and fake (meta) kernels of the compiled ``resfu_med::fns_gather_forward`` op.

Registered from Python with ``torch.library`` once the extension is loaded: the backward calls the compiled
``fns_gather_backward`` (both gradients in one pass over the output, only those that are needed), the fake kernels give
shapes to ``torch.compile``/``FakeTensor`` tracing. Double backward is not implemented by the kernels and raises.
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
    if torch.is_grad_enabled() and (grad_out.requires_grad or attn.requires_grad or x.requires_grad):
        # create_graph=True: the compiled backward is not differentiable; cutting the graph silently would give wrong
        # second derivatives.
        raise RuntimeError(
            "fns_gather: double backward (create_graph=True) is not supported by the compiled kernels; run it with "
            "resfu_med.ops.use_backend('reference')"
        )
    need_attn, need_x = bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1])
    grad_attn, grad_x = torch.ops.resfu_med.fns_gather_backward(
        grad_out, attn, x, ctx.kernel_depth, ctx.deterministic, need_attn, need_x
    )
    return (grad_attn if need_attn else None), (grad_x if need_x else None), None, None


def _forward_fake(attn, x, kernel_depth, deterministic):
    return attn.new_empty((x.shape[0], x.shape[1], *attn.shape[2:]))


def _backward_fake(grad_out, attn, x, kernel_depth, deterministic, need_attn, need_x):
    ga = torch.empty_like(attn, memory_format=torch.contiguous_format) if need_attn else attn.new_empty((0,))
    gx = torch.empty_like(x, memory_format=torch.contiguous_format) if need_x else x.new_empty((0,))
    return ga, gx


def register() -> None:
    """Register autograd and fake kernels (idempotent)."""
    global _registered
    if _registered:
        return
    torch.library.register_autograd("resfu_med::fns_gather_forward", _backward, setup_context=_setup_context)
    torch.library.register_fake("resfu_med::fns_gather_forward", _forward_fake)
    torch.library.register_fake("resfu_med::fns_gather_backward", _backward_fake)
    _registered = True
