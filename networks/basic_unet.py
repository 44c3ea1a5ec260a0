"""MONAI's ``BasicUNet`` (two-conv levels, max-pool down, ``UpCat`` up) with its decoder upsamplers from the registry.

Same encoder/decoder blocks as ``monai.networks.nets.BasicUNet`` (``TwoConv``, ``Down`` are MONAI's own); only the
``UpCat`` upsampling step is swapped for a registry module. Channel halving follows MONAI: learned upsamplers
(``deconv``, ``pixelshuffle``) map ``in → up`` channels themselves; the others get MONAI's 1×1 "pre_conv" first.
Guidance: ``resfu`` is guided by C1 (x0, the first full-resolution feature) area-pooled to each target size; the
guided peer ``sapa`` gets the iterative guidance (the encoder feature it is concatenated with). Placement: with
``upsampler="resfu"`` the last (full-resolution) step keeps MONAI's transposed convolution unless
``final_upsampler="resfu"`` (docs/networks.md); every other name is used at all four steps.
With ``upsampler="deconv"`` the network is MONAI's ``BasicUNet(upsample="deconv")`` module for module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.layers.factories import Conv
from monai.networks.nets.basic_unet import Down, TwoConv
from monai.utils import ensure_tuple_rep

from .guided_up import final_step_upsampler, step_options
from .upsamplers import get_upsampler, guide_source, upsampler_keyword

__all__ = ["UpCat", "BasicUNet"]


def _options(name: str, network_name: str, upsampler_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """The registry options of one step: ``upsampler_kwargs`` where the network's own ``upsampler`` runs (ReSFU's
    widths they do not set: the U-Nets' ``guided_up.UNET_RESFU_WIDTHS``), none at a last step of another kind
    (``final_upsampler``); ``bilinear`` defaults to ``align_corners=True``, MONAI's non-trainable mode."""
    kw = step_options(name, upsampler_kwargs) if name == network_name else {}
    if name == "bilinear":
        kw.setdefault("align_corners", True)
    return kw


class UpCat(nn.Module):
    """Upsample (registry), concatenate the encoder feature, two convolutions.

    Args:
        spatial_dims: 2 or 3.
        in_chns: channels to upsample.
        cat_chns: channels of the encoder feature.
        out_chns: output channels.
        act: activation (MONAI spec).
        norm: normalisation (MONAI spec).
        bias: conv bias.
        dropout: dropout.
        upsample: registry name.
        guide_chns: channels of the guide (guided upsamplers only).
        halves: halve the channels in the upsampling step (MONAI's default, except the last level).
        upsampler_kwargs: extra registry options.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_chns: int,
        cat_chns: int,
        out_chns: int,
        act: str | tuple,
        norm: str | tuple,
        bias: bool,
        dropout: float | tuple = 0.0,
        upsample: str = "resfu",
        guide_chns: int | None = None,
        halves: bool = True,
        upsampler_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        up_chns = in_chns // 2 if halves else in_chns
        kw = dict(upsampler_kwargs or {})
        if upsample in ("deconv", "pixelshuffle"):
            self.pre_conv: Optional[nn.Module] = None
            self.upsample = get_upsampler(upsample, in_chns, None, 2, spatial_dims, out_channels=up_chns, **kw)
        else:
            # MONAI's "nontrainable" mode: a 1×1 conv to the halved width, then the parameter-light upsampler.
            self.pre_conv = Conv[Conv.CONV, spatial_dims](in_chns, up_chns, kernel_size=1) if up_chns != in_chns else None
            self.upsample = get_upsampler(upsample, up_chns, guide_chns, 2, spatial_dims, **kw)
        self.convs = TwoConv(spatial_dims, cat_chns + up_chns, out_chns, act, norm, bias, dropout)

    def forward(self, x: torch.Tensor, x_e: torch.Tensor, guide: Optional[torch.Tensor]) -> torch.Tensor:
        """Args: x the deeper feature; x_e the encoder feature (sets the output size); guide or None."""
        pre = self.pre_conv
        if pre is not None:
            x = pre(x)
        size = [int(s) for s in x_e.shape[2:]]
        x_0 = self.upsample(x, guide, size)
        return self.convs(torch.cat([x_e, x_0], dim=1))


class BasicUNet(nn.Module):
    """A U-Net (MONAI ``BasicUNet`` structure) whose decoder upsamplers are chosen by registry name.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels (classes).
        features: six widths (five encoder levels, then the last decoder level), MONAI's default
            ``(32, 32, 64, 128, 256, 32)``.
        act: activation, MONAI spec (LeakyReLU 0.1).
        norm: normalisation, MONAI spec (instance norm with affine).
        bias: conv bias.
        dropout: dropout.
        upsampler: registry name (``resfu``, ``bilinear``, ``nearest``, ``deconv``, ``pixelshuffle``, ``carafe``,
            ``sapa``, ``dysample``; the last three 2D only).
        upsampler_kwargs: extra registry options (for ``bilinear`` the default here is ``align_corners=True``,
            MONAI's non-trainable default; ReSFU's widths not given are the U-Nets' ``guided_up.UNET_RESFU_WIDTHS``:
            PCDC 32, docs/networks.md).
        final_upsampler: registry name of the last (full-resolution) step; None (default): ``upsampler``, except that
            ReSFU keeps MONAI's transposed convolution there (``final_upsampler="resfu"``: ReSFU at every step).
        upsample: deprecated spelling of ``upsampler`` (one release; warns).

    Example::

        >>> net = BasicUNet(2, 1, 3, features=(8, 8, 16, 16, 32, 8), upsampler="bilinear")
        >>> net(torch.rand(1, 1, 32, 32)).shape
        torch.Size([1, 3, 32, 32])
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 2,
        features: Sequence[int] = (32, 32, 64, 128, 256, 32),
        act: str | tuple = ("LeakyReLU", {"negative_slope": 0.1, "inplace": True}),
        norm: str | tuple = ("instance", {"affine": True}),
        bias: bool = True,
        dropout: float | tuple = 0.0,
        upsampler: str = "resfu",
        upsampler_kwargs: dict[str, Any] | None = None,
        final_upsampler: str | None = None,
        upsample: str | None = None,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        fea = ensure_tuple_rep(features, 6)
        name = upsampler_keyword(upsampler, upsample, type(self).__name__)
        self.spatial_dims = spatial_dims
        self.upsampler = self.upsample = name  # ``upsample``: the attribute's name in earlier releases
        self.final_upsampler = final_step_upsampler(name, final_upsampler)
        names = [name] * 3 + [self.final_upsampler]
        kws = [_options(n, name, upsampler_kwargs) for n in names]
        # guide per decoder level (the registry's guide policy): C1 = x0, or the skip feature, or none
        self.guide_modes: List[str] = [guide_source(n) for n in names]
        skips = [fea[3], fea[2], fea[1], fea[0]]
        guides = [fea[0] if m == "c1" else skips[i] if m == "skip" else None for i, m in enumerate(self.guide_modes)]

        self.conv_0 = TwoConv(spatial_dims, in_channels, fea[0], act, norm, bias, dropout)
        self.down_1 = Down(spatial_dims, fea[0], fea[1], act, norm, bias, dropout)
        self.down_2 = Down(spatial_dims, fea[1], fea[2], act, norm, bias, dropout)
        self.down_3 = Down(spatial_dims, fea[2], fea[3], act, norm, bias, dropout)
        self.down_4 = Down(spatial_dims, fea[3], fea[4], act, norm, bias, dropout)

        args = (act, norm, bias, dropout)
        self.upcat_4 = UpCat(spatial_dims, fea[4], fea[3], fea[3], *args, names[0], guides[0], upsampler_kwargs=kws[0])
        self.upcat_3 = UpCat(spatial_dims, fea[3], fea[2], fea[2], *args, names[1], guides[1], upsampler_kwargs=kws[1])
        self.upcat_2 = UpCat(spatial_dims, fea[2], fea[1], fea[1], *args, names[2], guides[2], upsampler_kwargs=kws[2])
        self.upcat_1 = UpCat(spatial_dims, fea[1], fea[0], fea[5], *args, names[3], guides[3], halves=False,
                             upsampler_kwargs=kws[3])
        self.final_conv = Conv[Conv.CONV, spatial_dims](fea[5], out_channels, kernel_size=1)

    __jit_unused_properties__ = ["guide_mode"]

    @property
    def guide_mode(self) -> str:
        """The guide policy of the three lower decoder steps (``c1``, ``skip`` or ``none``; earlier releases' one
        mode for all four)."""
        return self.guide_modes[0]

    def _guide(self, mode: str, c1: torch.Tensor, skip: torch.Tensor) -> Optional[torch.Tensor]:
        if mode == "skip":
            return skip
        if mode == "c1":
            size: List[int] = [int(s) for s in skip.shape[2:]]
            if size == [int(s) for s in c1.shape[2:]]:
                return c1
            if self.spatial_dims == 2:
                return F.adaptive_avg_pool2d(c1, size)  # area pooling
            return F.adaptive_avg_pool3d(c1, size)
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x ``(N, in_channels, *spatial)`` (sides divisible by 16 recommended). Returns logits."""
        x0 = self.conv_0(x)
        x1 = self.down_1(x0)
        x2 = self.down_2(x1)
        x3 = self.down_3(x2)
        x4 = self.down_4(x3)
        modes = self.guide_modes
        u4 = self.upcat_4(x4, x3, self._guide(modes[0], x0, x3))
        u3 = self.upcat_3(u4, x2, self._guide(modes[1], x0, x2))
        u2 = self.upcat_2(u3, x1, self._guide(modes[2], x0, x1))
        u1 = self.upcat_1(u2, x0, self._guide(modes[3], x0, x0))
        return self.final_conv(u1)
