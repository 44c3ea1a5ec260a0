"""Grid-wise LR neighbour gather: the "w/o FNS" ablation of ReSFU (paper Table 7), SAPA's value selection.

``out[n, c, i] = Σ_t attn[n, t, i] · x[n, c, clamp(p(i) + t)]`` where ``p(i) = ⌊i · h / H⌋`` per axis is the LR pixel that
nearest upsampling (``F.interpolate(mode="nearest")``) assigns to HR pixel ``i`` and ``t`` runs over the ``K^d`` whole-pixel
offsets in FNS order. All HR pixels inside one LR cell share the same neighbours (the "mosaic" the paper's FNS removes).
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

__all__ = ["lr_neighbour_gather", "parent_index"]


def parent_index(hr_size: int, lr_size: int, device: torch.device | None = None) -> torch.Tensor:
    """``⌊i · lr / hr⌋`` for ``i < hr`` — PyTorch's ``nearest`` source index (exact integer arithmetic)."""
    return torch.div(torch.arange(hr_size, device=device) * lr_size, hr_size, rounding_mode="floor")


def _term(weight: torch.Tensor, x: torch.Tensor, indices: list[torch.Tensor]) -> torch.Tensor:
    v = x
    for axis, idx in enumerate(indices):
        v = v.index_select(2 + axis, idx)
    return weight * v


def lr_neighbour_gather(attn: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Weighted sum of the ``K^d`` LR neighbours of every HR pixel's nearest LR parent (borders clamped).

    Memory: each term is recomputed in the backward pass (activation checkpointing) when gradients are needed, so the
    ``K^d`` gathered HR copies of ``x`` are never stored together.

    Args:
        attn: ``(N, K^d, *HR)`` neighbour weights.
        x: ``(N, C, *LR)`` values.

    Returns:
        ``(N, C, *HR)`` in the promoted dtype of ``attn`` and ``x``.

    Raises:
        ValueError: on mismatched ranks or batch, a neighbour count that is not ``K^d`` for odd ``K``, or HR < LR.
    """
    dims = x.dim() - 2
    if dims not in (1, 2, 3) or attn.dim() != x.dim() or attn.shape[0] != x.shape[0]:
        raise ValueError(f"lr_neighbour_gather: attn {tuple(attn.shape)} and x {tuple(x.shape)} must be (N, ·, *spatial) alike")
    taps = int(attn.shape[1])  # int(): sizes are tensors while tracing
    k = round(taps ** (1.0 / dims))
    if k**dims != taps or k % 2 == 0:
        raise ValueError(f"lr_neighbour_gather: attn has {attn.shape[1]} channels, not K^{dims} for an odd K")
    hr, lr = [int(s) for s in attn.shape[2:]], [int(s) for s in x.shape[2:]]
    if any(H < h for H, h in zip(hr, lr)):
        raise ValueError(f"lr_neighbour_gather: HR size {tuple(hr)} is smaller than LR size {tuple(lr)}")
    radius = k // 2
    dtype = torch.promote_types(attn.dtype, x.dtype)
    xs = x.to(dtype)
    parents = [parent_index(H, h, x.device) for H, h in zip(hr, lr)]
    use_ckpt = torch.is_grad_enabled() and (attn.requires_grad or x.requires_grad) and not torch.jit.is_tracing()
    out = None
    for t in range(taps):
        offsets, rem = [], t
        for _ in range(dims):
            offsets.append(rem % k - radius)
            rem //= k
        offsets.reverse()  # t = (a + R) · K + (b + R): the first axis varies slowest, as in FNS
        indices = [(p + a).clamp(0, h - 1) for p, a, h in zip(parents, offsets, lr)]
        weight = attn[:, t : t + 1].to(dtype)
        term = checkpoint(_term, weight, xs, indices, use_reentrant=False) if use_ckpt else _term(weight, xs, indices)
        out = term if out is None else out + term
    return out
