"""Operators of resfu-med: the fused fine-grained neighbour selection (FNS) gather (docs/fns_operator.md).

``fns_gather(attn, x)`` is the production entry point (C++/CUDA kernels built just in time, reference fallback);
``fns_gather_reference`` is the readable pure-PyTorch definition it is tested against; ``backend()`` says which runs, ``use_backend(name)`` forces one within a block.
"""

from __future__ import annotations

from resfu_med.ops.fns_gather import backend, fns_gather, use_backend
from resfu_med.ops.reference import fns_gather_reference

__all__ = ["fns_gather", "fns_gather_reference", "backend", "use_backend"]
