"""The decoder step shared by resfu-med's DynUNet, SwinUNETR and UNETR: MONAI's up block with its transposed
convolution replaced by a registry upsampler.

MONAI's ``UnetUpBlock`` (DynUNet) and ``UnetrUpBlock`` (SwinUNETR, UNETR) both run
``transp_conv(inp) → cat(·, skip) → conv_block``. :func:`guided_up_block` keeps the block's own ``conv_block`` and
swaps ``transp_conv`` for:

- ``deconv``: nothing is swapped — MONAI's block is returned unchanged (the network is then exactly MONAI's);
- ``pixelshuffle``: the registry's sub-pixel convolution, mapping ``in → out`` channels itself;
- every other name: a 1×1 convolution ``in → out`` (with the transposed convolution's bias setting and dropout), then
  the parameter-light registry upsampler on ``out`` channels, as BasicUNet's non-trainable mode.

The upsampler's output size is the skip feature's size (so odd sizes and anisotropic steps need no padding), and its
guide is chosen per name: ReSFU gets C1, the network's highest-resolution encoder feature, which
:class:`~resfu_med.networks.upsamplers.ReSFUUpsampler` area-pools to the step's size (TransUNet's and BasicUNet's
wiring); SAPA gets the skip feature (iterative guidance); the rest get none.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping
from typing import Any, List, Optional

import torch
import torch.nn as nn
from monai.networks.blocks import Convolution
from monai.utils import look_up_option

from .upsamplers import get_upsampler, guide_source, upsampler_entry, upsampler_keyword

__all__ = ["GuidedUpBlock", "UNETRDecoderMixin", "guided_up_block", "up_step", "guide_source", "with_upsample_signature",
           "configured_upsampler", "final_step_upsampler", "legacy_unet_kwargs", "UNET_RESFU_WIDTHS", "step_options",
           "resfu_widths_of"]

#: The U-Nets' default at the full-resolution (last) decoder step for ``upsampler="resfu"``: the network's own
#: transposed convolution. There ReSFU's similarity runs at the input image's resolution and costs more than the whole
#: rest of the decoder's ReSFU steps (docs/networks.md, "ReSFU placement in the U-Nets").
RESFU_FINAL_DEFAULT = "deconv"


def final_step_upsampler(upsampler: str, final_upsampler: str | None) -> str:
    """The registry name of a U-Net's last (full-resolution) decoder step: ``final_upsampler`` when given, else
    ``upsampler`` itself, except for ``resfu``, whose full-resolution step keeps the network's transposed convolution
    (:data:`RESFU_FINAL_DEFAULT`); ``final_upsampler="resfu"`` puts ReSFU at every step."""
    if final_upsampler is not None:
        return upsampler_entry(final_upsampler).name
    name = upsampler_entry(upsampler).name
    return RESFU_FINAL_DEFAULT if name == "resfu" else name


def configured_upsampler(kwargs: Mapping[str, Any]) -> str:
    """The registry name of the upsampler a U-Net's saved kwargs name (``upsampler``, or MONAI's ``upsample``
    spelling; ReSFU when neither is given, the U-Nets' default), aliases resolved."""
    return upsampler_entry(str(kwargs.get("upsampler", kwargs.get("upsample", "resfu")))).name


#: ReSFU's widths in the U-Nets (BasicUNet 2D/3D, DynUNet, SwinUNETR, UNETR) wherever ``upsampler_kwargs`` does not
#: set them: the paper's text (PCDC output channels L = 32, projection D = 32, compressor 128). ReSFU's own defaults
#: (L = 128, the official code's) are sized for TransUNet's 256-channel decoder, which keeps them; in the U-Nets
#: L = 128 misses the 1.5x cost target (docs/networks.md, "ReSFU widths in the U-Nets", has the measurements).
UNET_RESFU_WIDTHS: dict[str, int] = {"embed_dim": 32, "pcdc_channels": 32, "compressor_channels": 128}

#: The widths a U-Net's ReSFU had before they were recorded in configs (ReSFU's own defaults): what a saved network
#: whose weights hold no ReSFU to read them from was built with.
_MODULE_WIDTHS: dict[str, int] = {"embed_dim": 32, "pcdc_channels": 128, "compressor_channels": 128}


#: The ReSFU weights whose shapes give its widths (:func:`resfu_widths_of`): weight → (width, axis of its shape).
_WIDTH_SHAPES = {"proj_q.weight": ("embed_dim", 0), "semantic_block.pcdc.weight": ("pcdc_channels", 0),
                 "semantic_block.compressor.4.weight": ("compressor_channels", 1)}


def step_options(name: str, upsampler_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """The registry options of the U-Net decoder steps that run the network's ``upsampler`` ``name`` (those
    ``upsampler_kwargs`` apply to): ``upsampler_kwargs`` with, for ReSFU, :data:`UNET_RESFU_WIDTHS` filling the widths
    they do not set (a width given explicitly always wins). A last step of another kind (``final_upsampler``) gets no
    options, so a ReSFU there alone keeps ReSFU's own defaults."""
    kw = dict(upsampler_kwargs or {})
    if upsampler_entry(name).name == "resfu":
        for key, value in UNET_RESFU_WIDTHS.items():
            kw.setdefault(key, value)
    return kw


def resfu_widths_of(state: Any) -> dict[str, int]:
    """ReSFU's widths read from saved weights (a ``state_dict`` mapping): ``embed_dim`` (rows of ``proj_q``),
    ``pcdc_channels`` (rows of the semantic PCDC) and ``compressor_channels`` (the compressor's hidden width) of the
    first ReSFU found; ReSFU's own defaults, the U-Nets' widths before they were recorded, when ``state`` holds no
    shapes (names only) or no ReSFU."""
    found: dict[str, int] = {}
    if isinstance(state, Mapping):
        for key, value in state.items():
            for suffix, (width, axis) in _WIDTH_SHAPES.items():
                if width not in found and key.endswith(f".resfu.{suffix}") and hasattr(value, "shape"):
                    found[width] = int(value.shape[axis])
            if len(found) == len(_WIDTH_SHAPES):
                break
    return found if len(found) == len(_WIDTH_SHAPES) else dict(_MODULE_WIDTHS)


def legacy_unet_kwargs(final_prefixes: tuple[str, ...]) -> Any:
    """``legacy_kwargs`` of a U-Net's model-registry entry (:class:`~resfu_med.networks.model_registry.ModelSpec`),
    for a config saved before ``final_upsampler`` or ReSFU's widths were recorded:

    - weights holding a ReSFU in the last decoder step (a weight name containing ``<prefix>upsample.resfu.``,
      ``<prefix>`` one of ``final_prefixes``) were trained with ReSFU at every step, the earlier default:
      ``final_upsampler="resfu"``;
    - a ReSFU network's widths that ``upsampler_kwargs`` does not set are those of its weights
      (:func:`resfu_widths_of`; ReSFU's own defaults before :data:`UNET_RESFU_WIDTHS`); weights without a ReSFU
      (another network registered under the name) are left alone.

    ``state`` is the saved ``state_dict`` (its names alone are enough for the placement)."""

    def upgrade(kwargs: dict[str, Any], state: Any) -> dict[str, Any]:
        out = dict(kwargs)
        marks = [f".{p}upsample.resfu." for p in final_prefixes]
        if "final_upsampler" not in out and any(m in f".{k}" for k in state for m in marks):
            out["final_upsampler"] = "resfu"
        if configured_upsampler(out) == "resfu":
            given = dict(out.get("upsampler_kwargs") or {})
            missing = [k for k in UNET_RESFU_WIDTHS if k not in given]
            if missing and any(".resfu.proj_q.weight" in f".{k}" for k in state):  # widths only where a ReSFU is
                saved = resfu_widths_of(state)
                out["upsampler_kwargs"] = {**given, **{k: saved[k] for k in missing}}
        return out

    return upgrade


class GuidedUpBlock(nn.Module):
    """Registry upsampler → concatenate the skip feature → MONAI's conv block (same concatenation order as MONAI).

    Args:
        upsample: the registry module (``forward(x, guide, size)``), producing ``out`` channels from its input.
        conv_block: MONAI's conv block of the replaced up block (``2·out → out`` channels).
        guide: ``"c1"``, ``"skip"`` or ``"none"`` (see :func:`guide_source`).
        pre_conv: optional ``in → out`` channel map applied before ``upsample``.
    """

    def __init__(self, upsample: nn.Module, conv_block: nn.Module, guide: str, pre_conv: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.guide = str(look_up_option(guide, ("c1", "skip", "none")))
        self.pre_conv = pre_conv
        self.upsample = upsample
        self.conv_block = conv_block

    def forward(self, inp: torch.Tensor, skip: torch.Tensor, c1: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Args: inp the deeper feature; skip the encoder feature (sets the output size); c1 the network's
        highest-resolution encoder feature (used by ReSFU only)."""
        pre = self.pre_conv
        if pre is not None:
            inp = pre(inp)
        guide: Optional[torch.Tensor] = None
        if self.guide == "c1":
            guide = c1
        elif self.guide == "skip":
            guide = skip
        size: List[int] = [int(s) for s in skip.shape[2:]]
        out = self.upsample(inp, guide, size)
        return self.conv_block(torch.cat((out, skip), dim=1))


def guided_up_block(block: nn.Module, upsample: str, c1_channels: int,
                    upsampler_kwargs: dict[str, Any] | None = None) -> nn.Module:
    """MONAI's ``UnetUpBlock``/``UnetrUpBlock`` ``block`` with its transposed convolution replaced by ``upsample``.

    Args:
        block: a MONAI up block (``transp_conv``: a MONAI ``Convolution`` around ``ConvTranspose{2,3}d``;
            ``conv_block``).
        upsample: registry name; ``deconv`` returns ``block`` itself.
        c1_channels: channels of the network's C1 (ReSFU's guide).
        upsampler_kwargs: extra registry options (e.g. ReSFU's ``embed_dim``; the networks pass
            :func:`step_options`).

    Returns:
        ``block`` (``deconv``) or a :class:`GuidedUpBlock` reusing ``block.conv_block``.

    Raises:
        ValueError: unknown name, a 2D-only upsampler in 3D, a fixed-ratio upsampler at an anisotropic step, or an
            option the upsampler does not take.
    """
    name = upsampler_entry(upsample).name
    if name == "deconv":
        return block
    transp: nn.Module = block.transp_conv
    conv = transp.conv
    spatial_dims = conv.weight.dim() - 2
    in_chns, out_chns = int(conv.in_channels), int(conv.out_channels)
    scale = [int(s) for s in conv.stride]  # MONAI: stride = upsample kernel size
    kw = dict(upsampler_kwargs or {})
    source = guide_source(name)
    pre_conv: Optional[nn.Module] = None
    if name == "pixelshuffle":
        kw.pop("out_channels", None)
        up = get_upsampler(name, in_chns, None, scale, spatial_dims, out_channels=out_chns, **kw)
    else:
        pre_conv = Convolution(spatial_dims, in_chns, out_chns, kernel_size=1, bias=conv.bias is not None, conv_only=True)
        if "adn" in transp._modules:  # DynUNet's dropout after the transposed convolution
            pre_conv.add_module("adn", copy.deepcopy(transp.adn))
        guide_chns = {"c1": c1_channels, "skip": out_chns, "none": None}[source]
        up = get_upsampler(name, out_chns, guide_chns, scale, spatial_dims, **kw)
    return GuidedUpBlock(up, block.conv_block, source, pre_conv)


class UNETRDecoderMixin:
    """Constructor of SwinUNETR and UNETR (mixed in before the MONAI class): MONAI's constructor with all its
    arguments, then each up block named in ``decoder_names`` swapped by :func:`guided_up_block` — the last one (the
    full-resolution step) by ``final_upsampler`` (:func:`final_step_upsampler`). C1 is ``encoder1``'s output,
    ``feature_size`` channels: the width the output block takes."""

    decoder_names: tuple[str, ...] = ()

    def __init__(self, *args: Any, upsampler: str = "resfu", upsampler_kwargs: dict[str, Any] | None = None,
                 final_upsampler: str | None = None, upsample: str | None = None, **kwargs: Any) -> None:
        name = upsampler_keyword(upsampler, upsample, type(self).__name__)
        final = final_step_upsampler(name, final_upsampler)
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        self.upsampler = self.upsample = name  # ``upsample``: the attribute's name in earlier releases
        self.final_upsampler = final
        c1_channels = int(self.out.conv.conv.in_channels)  # type: ignore[attr-defined]
        last = len(self.decoder_names) - 1
        for i, block in enumerate(self.decoder_names):  # the last one is the full-resolution step
            step = final if i == last else name
            setattr(self, block, guided_up_block(getattr(self, block), step, c1_channels,
                                                 step_options(step, upsampler_kwargs) if step == name else None))


def up_step(block: nn.Module, inp: torch.Tensor, skip: torch.Tensor, c1: torch.Tensor) -> torch.Tensor:
    """One decoder step with either block kind: MONAI's own (``deconv``) or a :class:`GuidedUpBlock`."""
    if isinstance(block, GuidedUpBlock):
        return block(inp, skip, c1)
    return block(inp, skip)


def with_upsample_signature(cls: type, monai_cls: type) -> type:
    """Give ``cls`` (a subclass taking ``*args, upsampler, upsampler_kwargs, final_upsampler, upsample, **kwargs``) the
    signature of ``monai_cls.__init__`` plus its own keyword-only arguments (``upsampler``, ``upsampler_kwargs``,
    ``final_upsampler`` and the deprecated ``upsample``), so ``inspect.signature`` and ``help`` list the real arguments
    of the installed MONAI version."""
    monai_params = list(inspect.signature(monai_cls.__init__).parameters.values())[1:]
    own = [p for p in inspect.signature(cls.__init__).parameters.values() if p.kind is p.KEYWORD_ONLY]
    cls.__signature__ = inspect.Signature(monai_params + own)  # type: ignore[attr-defined]
    return cls
