"""TransUNet (R50-ViT-B/16) with registry upsamplers, and its pretrained-weight loader."""

from __future__ import annotations

from .decoder import DecoderBlock, DecoderCup
from .model import ImageStem, TransUNet, legacy_transunet_kwargs
from .pretrained import load_npz, npz_key_map, resize_position_embedding
from .resnet_v2 import Bottleneck, ResNetV2, StdConv2d
from .vit import PatchEmbedding, ViTEncoder

__all__ = [
    "Bottleneck",
    "DecoderBlock",
    "DecoderCup",
    "ImageStem",
    "PatchEmbedding",
    "ResNetV2",
    "StdConv2d",
    "TransUNet",
    "ViTEncoder",
    "legacy_transunet_kwargs",
    "load_npz",
    "npz_key_map",
    "resize_position_embedding",
]
