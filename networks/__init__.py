"""Networks of resfu-med (installed as ``resfu_med.networks``): upsamplers, ReSFU, TransUNet and U-Nets."""

from __future__ import annotations

from .basic_unet import BasicUNet
from .transunet import TransUNet
from .upsamplers import get_upsampler, upsampler_names

__all__: list[str] = []
__all__ += ["get_upsampler", "upsampler_names"]
__all__ += ["TransUNet"]
__all__ += ["BasicUNet"]
