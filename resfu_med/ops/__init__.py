"""Operators of resfu-med: the fused fine-grained neighbour selection (FNS) gather.

``fns_gather(attn, x)`` is the production entry point (C++/CUDA kernels built just in time, reference fallback);
``fns_gather_reference`` is the readable pure-PyTorch definition it is tested against.
"""

from __future__ import annotations

from resfu_med.ops.reference import fns_gather_reference

__all__ = ["fns_gather", "fns_gather_reference"]


def fns_gather(attn, x, *, deterministic: bool = False):  # replaced by the kernel-backed op (issue 3)
    """Placeholder that runs the reference until the fused kernels land."""
    return fns_gather_reference(attn, x)
