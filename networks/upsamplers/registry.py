"""The upsampler registry: one name → one module with ``forward(x, guide=None, size=None)``.

Names (MONAI ``look_up_option``; a typo raises ``ValueError`` listing them): ``resfu``, ``bilinear``, ``nearest``,
``deconv``, ``pixelshuffle``, ``carafe``, ``sapa``, ``dysample``. Guided ones (``resfu``, ``sapa``) need the guide.
Dimensions: ``bilinear``/``nearest``/``deconv``/``pixelshuffle``/``resfu`` work in 2D and 3D (``resfu`` in 3D once
the volumetric ReSFU exists); ``carafe``/``sapa``/``dysample`` are 2D.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn as nn
from monai.utils import StrEnum, ensure_tuple_rep, look_up_option

from .carafe import CARAFE
from .dysample import DySample
from .interpolation import Interpolate
from .learned import Deconv, PixelShuffleUp
from .resfu_adapter import ReSFUUpsampler
from .sapa import SAPA

__all__ = ["UpsamplerName", "GUIDED_UPSAMPLERS", "get_upsampler", "upsampler_names", "is_guided"]


class UpsamplerName(StrEnum):
    """The registry's names."""

    RESFU = "resfu"
    BILINEAR = "bilinear"
    NEAREST = "nearest"
    DECONV = "deconv"
    PIXELSHUFFLE = "pixelshuffle"
    CARAFE = "carafe"
    SAPA = "sapa"
    DYSAMPLE = "dysample"


GUIDED_UPSAMPLERS = frozenset({"resfu", "sapa"})
_TWO_D_ONLY = frozenset({"carafe", "sapa", "dysample"})


def upsampler_names() -> tuple[str, ...]:
    """All registry names, in declaration order."""
    return tuple(m.value for m in UpsamplerName)


def is_guided(name: str) -> bool:
    """Whether the named upsampler uses a high-resolution guide (validates the name)."""
    return str(look_up_option(name, UpsamplerName)) in GUIDED_UPSAMPLERS


def _int_scale(name: str, scale: Sequence[float]) -> int:
    if len(set(scale)) != 1 or int(scale[0]) != scale[0] or scale[0] < 1:
        raise ValueError(f"upsampler {name!r} needs one integer scale for all axes, got scale={tuple(scale)}.")
    return int(scale[0])


def get_upsampler(
    name: str,
    in_channels: int,
    guide_channels: int | None = None,
    scale: float | Sequence[float] = 2,
    spatial_dims: int = 2,
    **kw: Any,
) -> nn.Module:
    """Build an upsampler by name.

    Args:
        name: one of :func:`upsampler_names`.
        in_channels: channels of the low-resolution input x.
        guide_channels: channels of the guide (required by ``resfu`` and ``sapa``; ignored by the others).
        scale: default ratio (per axis or one number) used when ``forward`` gets neither ``size`` nor a guide.
        spatial_dims: 2 or 3 (1 for the interpolation/deconv modes).
        kw: module options: ``align_corners`` (bilinear, default False), ``out_channels`` (deconv, pixelshuffle),
            ``k_up``/``k_enc``/``compressed_channels`` (carafe), ``kernel_size``/``embed_dim`` (sapa),
            ``groups``/``dyscope`` (dysample), and ReSFU's constructor options (resfu).

    Returns:
        An ``nn.Module`` whose ``forward(x, guide=None, size=None)`` returns x upsampled to ``size`` (if given), else
        the guide's spatial size (if given), else ``scale`` × x's size. Channels are kept, except ``out_channels``.

    Raises:
        ValueError: unknown name (the message lists the valid ones), a 2D-only upsampler with ``spatial_dims=3``,
            a guided upsampler without ``guide_channels``, a non-integer scale for a fixed-ratio upsampler, or an
            option the upsampler does not take.
    """
    key = str(look_up_option(name, UpsamplerName))
    scales = [float(s) for s in ensure_tuple_rep(scale, spatial_dims)]
    if key in _TWO_D_ONLY and spatial_dims != 2:
        raise ValueError(f"upsampler {key!r} is 2D only, got spatial_dims={spatial_dims}.")
    if key in GUIDED_UPSAMPLERS and guide_channels is None:
        raise ValueError(f"upsampler {key!r} is guided: guide_channels is required.")
    allowed = {
        "bilinear": {"align_corners"},
        "nearest": set(),
        "deconv": {"out_channels"},
        "pixelshuffle": {"out_channels"},
        "carafe": {"k_up", "k_enc", "compressed_channels"},
        "sapa": {"kernel_size", "embed_dim"},
        "dysample": {"groups", "dyscope"},
    }
    if key != "resfu" and set(kw) - allowed[key]:
        raise ValueError(f"upsampler {key!r} takes options {sorted(allowed[key])}, got unexpected {sorted(set(kw) - allowed[key])}.")
    if key == "bilinear":
        return Interpolate(spatial_dims, scales, "linear", align_corners=bool(kw.get("align_corners", False)))
    if key == "nearest":
        return Interpolate(spatial_dims, scales, "nearest")
    if key == "deconv":
        for s in scales:
            if s != int(s) or s < 1:
                raise ValueError(f"upsampler 'deconv' needs integer scales, got scale={tuple(scales)}.")
        return Deconv(spatial_dims, in_channels, kw.get("out_channels"), [int(s) for s in scales])
    if key == "pixelshuffle":
        return PixelShuffleUp(spatial_dims, in_channels, kw.get("out_channels"), _int_scale(key, scales))
    if key == "carafe":
        return CARAFE(in_channels, _int_scale(key, scales), **kw)
    if key == "sapa":
        return SAPA(in_channels, int(guide_channels), _int_scale(key, scales), **kw)  # type: ignore[arg-type]
    if key == "dysample":
        return DySample(in_channels, _int_scale(key, scales), **kw)
    return ReSFUUpsampler(in_channels, int(guide_channels), spatial_dims=spatial_dims, **kw)  # type: ignore[arg-type]
