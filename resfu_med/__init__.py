"""resfu-med: ReSFU feature upsampling for MONAI medical image segmentation.

Subpackages, in the one direction data flows through them:
``resfu_med.ops`` (the fused FNS operator) → ``resfu_med.networks`` (upsamplers, ReSFU, TransUNet, U-Nets)
→ ``resfu_med.data`` (datasets, transforms) → ``resfu_med.engine`` (train / evaluate / infer loops)
→ ``resfu_med.cli`` (argument parsing) → ``resfu_med.bundle`` (MONAI bundle export).
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
