"""Networks of resfu-med (installed as ``resfu_med.networks``): upsamplers, ReSFU, TransUNet and U-Nets."""

from __future__ import annotations

__all__: list[str] = []
