"""Building blocks of ReSFU (installed as ``resfu_med.networks.blocks``), each tested on its own."""

from __future__ import annotations

from resfu_med.networks.blocks.gaussian import GaussianSmoothing, gaussian_kernel
from resfu_med.networks.blocks.guided_filter import GuidedFilter, box_filter, fast_guided_filter, guided_filter
from resfu_med.networks.blocks.inner_product import InnerProductSimilarity
from resfu_med.networks.blocks.lr_gather import lr_neighbour_gather
from resfu_med.networks.blocks.norm import group_count, group_norm
from resfu_med.networks.blocks.padding import replicate_pad
from resfu_med.networks.blocks.pcdc import PCDC, PCDCBlock

__all__ = [
    "GaussianSmoothing",
    "GuidedFilter",
    "InnerProductSimilarity",
    "PCDC",
    "PCDCBlock",
    "box_filter",
    "fast_guided_filter",
    "gaussian_kernel",
    "group_count",
    "group_norm",
    "guided_filter",
    "lr_neighbour_gather",
    "replicate_pad",
]
