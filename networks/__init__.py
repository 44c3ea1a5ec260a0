"""Networks of resfu-med (installed as ``resfu_med.networks``): upsamplers, ReSFU, TransUNet, BasicUNet and MONAI's
DynUNet, SwinUNETR and UNETR with registry upsamplers, and the model registry
(:mod:`resfu_med.networks.model_registry`) that names them for configs, checkpoints and bundles."""

from __future__ import annotations

from resfu_med.networks.blocks import GaussianSmoothing, GuidedFilter, PCDC, PCDCBlock
from resfu_med.networks.resfu import ReSFU, pcdc_parameter_groups
from resfu_med.networks.upsamplers import get_upsampler, upsampler_names
from resfu_med.networks.transunet import TransUNet
from resfu_med.networks.basic_unet import BasicUNet
from resfu_med.networks.dynunet import DynUNet, dynunet_plan
from resfu_med.networks.swin_unetr import SwinUNETR
from resfu_med.networks.unetr import UNETR
from resfu_med.networks.model_registry import (
    ModelSpec,
    build_model,
    get_model_spec,
    model_names,
    register_model,
)

__all__: list[str] = []
__all__ += ["ReSFU", "pcdc_parameter_groups", "GaussianSmoothing", "GuidedFilter", "PCDC", "PCDCBlock"]
__all__ += ["get_upsampler", "upsampler_names"]
__all__ += ["TransUNet"]
__all__ += ["BasicUNet", "DynUNet", "dynunet_plan", "SwinUNETR", "UNETR"]
__all__ += ["ModelSpec", "build_model", "get_model_spec", "model_names", "register_model"]
