"""Gradients with a graph for the hand-written backward passes of ReSFU's blocks (``create_graph=True``).

A hand-written backward computes first derivatives only; when autograd asks for a graph (double backward), those
functions run their plain operations again and differentiate them, so second derivatives are the plain layers'.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["grads_with_graph"]


def grads_with_graph(out: torch.Tensor, inputs: Sequence[torch.Tensor | None], needs: Sequence[bool],
                     grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    """``d out / d inputs`` applied to ``grad_out``, with a graph: one entry per input, ``None`` where ``needs`` says
    no or the input is ``None``.

    Args:
        out: the plain operations' output, computed from ``inputs`` with gradients enabled.
        inputs: the tensors to differentiate for (``None`` entries allowed).
        needs: ``ctx.needs_input_grad`` for those inputs.
        grad_out: the incoming gradient.
    """
    wanted = [t for t, need in zip(inputs, needs) if need and t is not None]
    grads = iter(torch.autograd.grad(out, wanted, grad_out, create_graph=True))
    return tuple(next(grads) if need and t is not None else None for t, need in zip(inputs, needs))
