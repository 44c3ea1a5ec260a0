"""Networks of resfu-med (installed as ``resfu_med.networks``): upsamplers, ReSFU, TransUNet and U-Nets."""

from __future__ import annotations

from resfu_med.networks.blocks import GaussianSmoothing, GuidedFilter, PCDC, PCDCBlock
from resfu_med.networks.resfu import ReSFU, pcdc_parameter_groups

__all__: list[str] = []
__all__ += ["ReSFU", "pcdc_parameter_groups", "GaussianSmoothing", "GuidedFilter", "PCDC", "PCDCBlock"]
