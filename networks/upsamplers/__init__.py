"""Upsampler registry and the peer upsamplers (interpolation, deconv, pixel shuffle, CARAFE, SAPA, DySample, ReSFU)."""

from __future__ import annotations

from .base import match_size, target_size
from .carafe import CARAFE
from .dysample import DySample
from .interpolation import Interpolate
from .learned import Deconv, PixelShuffleUp
from .registry import (
    GUIDED_UPSAMPLERS,
    UPSAMPLERS,
    UpsamplerEntry,
    UpsamplerName,
    get_upsampler,
    guide_source,
    is_guided,
    register_upsampler,
    upsampler_entry,
    upsampler_keyword,
    upsampler_names,
)
from .resfu_adapter import ReSFUUpsampler
from .sapa import SAPA

__all__ = [
    "CARAFE",
    "DySample",
    "Deconv",
    "GUIDED_UPSAMPLERS",
    "Interpolate",
    "PixelShuffleUp",
    "ReSFUUpsampler",
    "SAPA",
    "UPSAMPLERS",
    "UpsamplerEntry",
    "UpsamplerName",
    "get_upsampler",
    "guide_source",
    "is_guided",
    "match_size",
    "register_upsampler",
    "target_size",
    "upsampler_entry",
    "upsampler_keyword",
    "upsampler_names",
]
