"""The upsampler registry: one name → one factory of a module with ``forward(x, guide=None, size=None)``.

Each entry is registered with :func:`register_upsampler` beside its factory and says, in one place, what the rest of
resfu-med needs to know: a one-line description (shown by ``resfu-med train --help``), the dimensions it supports,
the options it takes and its **guide policy** — which feature guides it inside a U-Net decoder:

- ``"c1"``: the network's highest-resolution encoder feature C1, area-pooled to each step's output size
  (:class:`~resfu_med.networks.upsamplers.ReSFUUpsampler` does the pooling) — ReSFU;
- ``"skip"``: the encoder feature of the same step (iterative guidance) — SAPA;
- ``"none"``: unguided.

Built-in names: ``resfu``, ``bilinear``, ``nearest``, ``deconv``, ``pixelshuffle``, ``carafe``, ``sapa``, ``dysample``.
An unknown name raises ``ValueError`` (an :class:`~resfu_med.errors.InputError`) with a did-you-mean and the valid
names. Add an upsampler with :func:`register_upsampler`; every network, ``--upsampler`` and the help then accept it.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch.nn as nn
from monai.utils import StrEnum, ensure_tuple_rep

from resfu_med.errors import look_up

from .carafe import CARAFE
from .dysample import DySample
from .interpolation import Interpolate
from .learned import Deconv, PixelShuffleUp
from .resfu_adapter import ReSFUUpsampler
from .sapa import SAPA

__all__ = [
    "UpsamplerEntry",
    "UPSAMPLERS",
    "register_upsampler",
    "upsampler_entry",
    "UpsamplerName",
    "GUIDED_UPSAMPLERS",
    "get_upsampler",
    "upsampler_names",
    "is_guided",
    "guide_source",
    "upsampler_keyword",
]

#: Factory signature: ``(in_channels, guide_channels, scales, spatial_dims, **options) -> nn.Module``.
Factory = Callable[..., nn.Module]


@dataclasses.dataclass(frozen=True)
class UpsamplerEntry:
    """One registered upsampler.

    Attributes:
        name: the registry name (``--upsampler``, ``upsampler=``).
        factory: ``(in_channels, guide_channels, scales, spatial_dims, **options) -> nn.Module``; ``scales`` is one
            float per axis.
        description: one line for ``--help``.
        guide: ``"c1"``, ``"skip"`` or ``"none"`` (the guide policy, see the module docstring).
        dims: the spatial dimensionalities it supports.
        options: the keyword options it takes, or ``None`` for any (checked by the factory itself).
    """

    name: str
    factory: Factory
    description: str
    guide: str = "none"
    dims: tuple[int, ...] = (1, 2, 3)
    options: frozenset[str] | None = frozenset()

    def __post_init__(self) -> None:
        if self.guide not in ("c1", "skip", "none"):
            raise ValueError(f"upsampler {self.name!r}: guide must be 'c1', 'skip' or 'none', got {self.guide!r}")


#: name → entry, in registration order. Use :func:`register_upsampler` to add to it.
UPSAMPLERS: dict[str, UpsamplerEntry] = {}


def register_upsampler(name: str, description: str, *, guide: str = "none", dims: Sequence[int] = (1, 2, 3),
                       options: Sequence[str] | None = ()) -> Callable[[Factory], Factory]:
    """Decorator registering ``factory`` under ``name`` (replacing an entry of that name).

    Example:
        >>> @register_upsampler("my_up", "my learned upsampler", dims=(2,))
        ... def _my_up(in_channels, guide_channels, scales, spatial_dims):
        ...     return MyUp(in_channels, int(scales[0]))
    """

    def decorate(factory: Factory) -> Factory:
        UPSAMPLERS[name] = UpsamplerEntry(name, factory, description, guide, tuple(dims),
                                          None if options is None else frozenset(options))
        return factory

    return decorate


def upsampler_entry(name: Any) -> UpsamplerEntry:
    """The entry of ``name``.

    Raises:
        InputError (a ``ValueError``): unknown name, with a did-you-mean and the valid names.
    """
    return look_up(name, UPSAMPLERS, "upsampler")


def upsampler_names() -> tuple[str, ...]:
    """All registry names, in registration order."""
    return tuple(UPSAMPLERS)


def is_guided(name: str) -> bool:
    """Whether the named upsampler uses a high-resolution guide (validates the name)."""
    return upsampler_entry(name).guide != "none"


def guide_source(name: str) -> str:
    """Which feature guides the named upsampler in a decoder step: ``"c1"``, ``"skip"`` or ``"none"``."""
    return upsampler_entry(name).guide


def upsampler_keyword(upsampler: str, upsample: str | None, owner: str) -> str:
    """The registry name a network was given: ``upsampler=``, or the deprecated ``upsample=`` (one release; warns).

    Args:
        upsampler: the value of the ``upsampler`` argument.
        upsample: the value of the deprecated ``upsample`` argument, ``None`` when not given.
        owner: the network's class name, for the warning.

    Returns:
        The validated registry name.
    """
    if upsample is not None:
        warnings.warn(f"{owner}(upsample=...) is deprecated and will be removed in the next release; use "
                      f"upsampler=", DeprecationWarning, stacklevel=3)
        upsampler = upsample
    return upsampler_entry(upsampler).name


def _int_scale(name: str, scale: Sequence[float]) -> int:
    if len(set(scale)) != 1 or int(scale[0]) != scale[0] or scale[0] < 1:
        raise ValueError(f"upsampler {name!r} needs one integer scale for all axes, got scale={tuple(scale)}.")
    return int(scale[0])


@register_upsampler("resfu", "ReSFU, the similarity-based feature upsampler guided by C1 (this package's method)",
                    guide="c1", dims=(2, 3), options=None)
def _resfu(in_channels: int, guide_channels: int, scales: list[float], spatial_dims: int, **kw: Any) -> nn.Module:
    return ReSFUUpsampler(in_channels, int(guide_channels), spatial_dims=spatial_dims, **kw)


@register_upsampler("bilinear", "(tri)linear interpolation, no parameters (the original TransUNet)",
                    options=("align_corners",))
def _bilinear(in_channels: int, guide_channels: int | None, scales: list[float], spatial_dims: int,
              align_corners: bool = False) -> nn.Module:
    return Interpolate(spatial_dims, scales, "linear", align_corners=bool(align_corners))


@register_upsampler("nearest", "nearest-neighbour interpolation, no parameters")
def _nearest(in_channels: int, guide_channels: int | None, scales: list[float], spatial_dims: int) -> nn.Module:
    return Interpolate(spatial_dims, scales, "nearest")


@register_upsampler("deconv", "transposed convolution (MONAI's default decoder)", options=("out_channels",))
def _deconv(in_channels: int, guide_channels: int | None, scales: list[float], spatial_dims: int,
            out_channels: int | None = None) -> nn.Module:
    for s in scales:
        if s != int(s) or s < 1:
            raise ValueError(f"upsampler 'deconv' needs integer scales, got scale={tuple(scales)}.")
    return Deconv(spatial_dims, in_channels, out_channels, [int(s) for s in scales])


@register_upsampler("pixelshuffle", "sub-pixel convolution (pixel shuffle)", options=("out_channels",))
def _pixelshuffle(in_channels: int, guide_channels: int | None, scales: list[float], spatial_dims: int,
                  out_channels: int | None = None) -> nn.Module:
    return PixelShuffleUp(spatial_dims, in_channels, out_channels, _int_scale("pixelshuffle", scales))


@register_upsampler("carafe", "CARAFE, content-aware reassembly of features (2D)", dims=(2,),
                    options=("k_up", "k_enc", "compressed_channels"))
def _carafe(in_channels: int, guide_channels: int | None, scales: list[float], spatial_dims: int, **kw: Any) -> nn.Module:
    return CARAFE(in_channels, _int_scale("carafe", scales), **kw)


@register_upsampler("sapa", "SAPA, similarity-aware point affiliation guided by the skip feature (2D)",
                    guide="skip", dims=(2,), options=("kernel_size", "embed_dim"))
def _sapa(in_channels: int, guide_channels: int, scales: list[float], spatial_dims: int, **kw: Any) -> nn.Module:
    return SAPA(in_channels, int(guide_channels), _int_scale("sapa", scales), **kw)


@register_upsampler("dysample", "DySample, learned dynamic point sampling (2D)", dims=(2,),
                    options=("groups", "dyscope"))
def _dysample(in_channels: int, guide_channels: int | None, scales: list[float], spatial_dims: int, **kw: Any) -> nn.Module:
    return DySample(in_channels, _int_scale("dysample", scales), **kw)


#: The built-in names as a MONAI ``StrEnum`` (kept for code written against earlier releases; the registry itself is
#: :data:`UPSAMPLERS`, which also holds names registered later).
UpsamplerName = StrEnum("UpsamplerName", {n.upper(): n for n in UPSAMPLERS})  # type: ignore[misc]

#: The built-in guided names (earlier releases' constant; use :func:`is_guided`).
GUIDED_UPSAMPLERS = frozenset(n for n, e in UPSAMPLERS.items() if e.guide != "none")


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
        guide_channels: channels of the guide (required by guided upsamplers; ignored by the others).
        scale: default ratio (per axis or one number) used when ``forward`` gets neither ``size`` nor a guide.
        spatial_dims: 2 or 3 (1 for the interpolation/deconv modes).
        kw: module options: ``align_corners`` (bilinear, default False), ``out_channels`` (deconv, pixelshuffle),
            ``k_up``/``k_enc``/``compressed_channels`` (carafe), ``kernel_size``/``embed_dim`` (sapa),
            ``groups``/``dyscope`` (dysample), and ReSFU's constructor options (resfu).

    Returns:
        An ``nn.Module`` whose ``forward(x, guide=None, size=None)`` returns x upsampled to ``size`` (if given), else
        the guide's spatial size (if given), else ``scale`` × x's size. Channels are kept, except ``out_channels``.

    Raises:
        ValueError: unknown name (the message lists the valid ones), an upsampler used in a dimensionality it does
            not support, a guided upsampler without ``guide_channels``, a non-integer scale for a fixed-ratio
            upsampler, or an option the upsampler does not take.
    """
    entry = upsampler_entry(name)
    scales = [float(s) for s in ensure_tuple_rep(scale, spatial_dims)]
    if spatial_dims not in entry.dims:
        only = "/".join(f"{d}D" for d in entry.dims)
        raise ValueError(f"upsampler {entry.name!r} is {only} only, got spatial_dims={spatial_dims}.")
    if entry.guide != "none" and guide_channels is None:
        raise ValueError(f"upsampler {entry.name!r} is guided: guide_channels is required.")
    if entry.options is not None and set(kw) - entry.options:
        raise ValueError(f"upsampler {entry.name!r} takes options {sorted(entry.options)}, got unexpected "
                         f"{sorted(set(kw) - entry.options)}.")
    return entry.factory(in_channels, guide_channels, scales, spatial_dims, **kw)
