"""resfu-med: ReSFU feature upsampling for MONAI medical image segmentation.

Subpackages, each importing only those below it (docs/design.md, kept true by tests/test_layers.py):
``resfu_med.cli`` (argument parsing) → ``resfu_med.bundle`` (MONAI bundle export) → ``resfu_med.engine`` (train /
evaluate / infer) → ``resfu_med.metrics``, ``resfu_med.data``, ``resfu_med.networks`` (models, upsamplers, ReSFU)
→ ``resfu_med.ops`` (the fused FNS operator).
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
