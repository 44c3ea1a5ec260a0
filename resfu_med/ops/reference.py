"""Pure-PyTorch reference of the fine-grained neighbour selection (FNS) gather (docs/fns_operator.md).

Readable and differentiable through autograd; the C++/CUDA kernels are tested against it. It is separable: sampling x
bilinearly (trilinearly) at the shifted LR coordinate of every HR pixel is a product of one small interpolation matrix
per axis, so ``V_t = R_a · x · R_bᵀ`` for the neighbour offset ``t = (a, b)``.
"""

from __future__ import annotations

import math

import torch

__all__ = ["fns_gather_reference", "interpolation_matrix"]


def interpolation_matrix(
    out_size: int, in_size: int, offset: int, dtype: torch.dtype, device: torch.device | None = None
) -> torch.Tensor:
    """Linear-interpolation matrix ``R`` of shape ``(out_size, in_size)`` for one axis and one neighbour offset.

    Row ``i`` samples the LR axis at ``u = (i + 0.5) * in_size / out_size - 0.5 + offset``, clamped to
    ``[0, in_size - 1]`` (``align_corners=False`` convention, shifted by ``offset`` whole LR pixels).

    Args:
        out_size: HR length.
        in_size: LR length.
        offset: neighbour shift in LR pixels.
        dtype: dtype of the matrix.
        device: device of the matrix.

    Returns:
        The ``(out_size, in_size)`` matrix whose rows hold the two linear weights.
    """
    i = torch.arange(out_size, dtype=torch.float64, device=device)
    u = ((i + 0.5) * (in_size / out_size) - 0.5 + offset).clamp(0, in_size - 1)
    u0 = u.floor().long().clamp(max=in_size - 1)
    u1 = (u0 + 1).clamp(max=in_size - 1)
    w1 = u - u0.to(u.dtype)
    mat = torch.zeros(out_size, in_size, dtype=torch.float64, device=device)
    rows = torch.arange(out_size, device=device)
    mat.index_put_((rows, u0), 1.0 - w1, accumulate=True)
    mat.index_put_((rows, u1), w1, accumulate=True)
    return mat.to(dtype)


def fns_gather_reference(attn: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """FNS gather by explicit interpolation matrices (2D or 3D).

    ``out[n, c, p] = Σ_t attn[n, t, p] · V(n, c, p, t)`` where ``V`` samples ``x`` (bi/tri)linearly at the LR coordinate of
    HR position ``p`` shifted by the whole-LR-pixel offset ``t`` (docs/fns_operator.md).

    Args:
        attn: ``(N, K^2, H, W)`` or ``(N, K^3, D, H, W)`` neighbour weights, ``K`` odd.
        x: ``(N, C, h, w)`` or ``(N, C, d, h, w)`` low-resolution values.

    Returns:
        ``(N, C, H, W)`` (or ``(N, C, D, H, W)``) in the promoted dtype of the inputs.

    Raises:
        ValueError: if the ranks or the neighbour count do not fit.
    """
    spatial = x.dim() - 2
    if spatial not in (2, 3) or attn.dim() != x.dim():
        raise ValueError(f"fns_gather_reference: expected 4D or 5D attn and x of equal rank, got attn {tuple(attn.shape)}, x {tuple(x.shape)}")
    taps = int(attn.shape[1])  # int(): sizes are tensors while tracing (TorchScript trace, ONNX export)
    k = round(taps ** (1.0 / spatial))
    if k**spatial != taps or k % 2 == 0:
        raise ValueError(f"fns_gather_reference: attn has {attn.shape[1]} channels, not K^{spatial} for an odd K")
    radius = k // 2
    dtype = torch.promote_types(attn.dtype, x.dtype)
    hr, lr = [int(s) for s in attn.shape[2:]], [int(s) for s in x.shape[2:]]
    xs = x.to(dtype)
    # one matrix per axis and offset, shared by every neighbour that uses it
    axis_mats = [[interpolation_matrix(hr[d], lr[d], off, dtype, x.device) for off in range(-radius, radius + 1)] for d in range(spatial)]
    out = None
    for t in range(taps):
        offsets = []
        rem = t
        for _ in range(spatial):
            offsets.append(rem % k)
            rem //= k
        offsets.reverse()  # t = ((a + R) * K + (b + R)) * K + (c + R)
        mats = [axis_mats[d][offsets[d]] for d in range(spatial)]
        # separable: interpolate along the last axis, then the next (matmul broadcasts over the leading dims)
        v = mats[-2] @ (xs @ mats[-1].T)
        if spatial == 3:
            v = torch.einsum("id,ncdhw->ncihw", mats[0], v)
        term = attn[:, t : t + 1].to(dtype) * v
        out = term if out is None else out + term
    return out
