"""MONAI's ``DynUNet`` (the nnU-Net architecture) with every decoder transposed convolution replaced by a registry
upsampler, ReSFU guided by the first encoder stage.

Same constructor arguments as ``monai.networks.nets.DynUNet`` plus ``upsampler`` and ``upsampler_kwargs``; the encoder,
bottleneck, conv blocks, output and deep-supervision heads are MONAI's own modules (built by MONAI's constructor,
then only each ``UnetUpBlock``'s transposed convolution is swapped, see :mod:`resfu_med.networks.guided_up`).
Each step upsamples by its ``upsample_kernel_size`` (the stride of the encoder stage it mirrors), so anisotropic
strides such as ``(1, 2, 2)`` give anisotropic ReSFU ratios. With ``upsampler="deconv"`` the network is MONAI's
``DynUNet`` module for module (same ``state_dict`` keys, same outputs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, List, Optional

import torch
import torch.nn as nn
from monai.networks.nets import DynUNet as MonaiDynUNet
from monai.networks.nets.dynunet import DynUNetSkipLayer
from torch.nn.functional import interpolate

from .guided_up import (GuidedUpBlock, final_step_upsampler, guided_up_block, step_options, up_step,
                         with_upsample_signature)
from .upsamplers import upsampler_keyword

__all__ = ["DynUNet", "dynunet_plan"]


def dynunet_plan(patch_size: Sequence[int], spacing: Sequence[float] | None = None, max_downsamplings: int = 5) -> dict[str, list]:
    """``kernel_size``, ``strides`` and ``upsample_kernel_size`` for a patch: nnU-Net's heuristic as in MONAI's
    DynUNet tutorial, where an axis is halved while it is at least 8 voxels (and even) and its spacing is at most
    twice the finest one; coarse axes get 1-voxel kernels until they catch up. So ``(32, 96, 96)`` gives strides
    ``1, 2, 2, 2, (1, 2, 2)``: the short axis stops being halved one level earlier.

    Args:
        patch_size: training patch, one size per spatial axis.
        spacing: voxel spacing per axis (default: isotropic).
        max_downsamplings: most halvings (nnU-Net: 5).

    Returns:
        The three DynUNet arguments (lists of per-axis lists; ``upsample_kernel_size`` is ``strides[1:]``).

    Raises:
        ValueError: a patch too small to be halved even once.
    """
    sizes = [float(s) for s in patch_size]
    spacings = [float(s) for s in (spacing or [1.0] * len(sizes))]
    if len(spacings) != len(sizes):
        raise ValueError(f"spacing {tuple(spacings)} and patch_size {tuple(patch_size)} differ in length.")
    kernels: list[list[int]] = []
    strides: list[list[int]] = [[1] * len(sizes)]
    while len(strides) <= max_downsamplings:
        ratio = [sp / min(spacings) for sp in spacings]
        stride = [2 if r <= 2 and sz >= 8 and sz % 2 == 0 else 1 for r, sz in zip(ratio, sizes)]
        if all(st == 1 for st in stride):
            break
        kernels.append([3 if r <= 2 else 1 for r in ratio])
        strides.append(stride)
        sizes = [sz / st for sz, st in zip(sizes, stride)]
        spacings = [sp * st for sp, st in zip(spacings, stride)]
    if len(strides) < 3:
        raise ValueError(f"patch_size {tuple(patch_size)} is too small for a DynUNet: it needs two halvings (sides >= 16).")
    kernels.append([3] * len(sizes))
    return {"kernel_size": kernels, "strides": strides, "upsample_kernel_size": strides[1:]}


class DynUNet(MonaiDynUNet):
    """``monai.networks.nets.DynUNet`` whose decoder upsamplers are chosen by registry name.

    Args:
        args: MONAI ``DynUNet``'s arguments (``spatial_dims``, ``in_channels``, ``out_channels``, ``kernel_size``,
            ``strides``, ``upsample_kernel_size``, ``filters``, ``dropout``, ``norm_name``, ``act_name``,
            ``deep_supervision``, ``deep_supr_num``, ``res_block``, ``trans_bias``).
        upsampler: registry name (``resfu``, ``bilinear``, ``nearest``, ``deconv``, ``pixelshuffle``, ``carafe``,
            ``sapa``, ``dysample``; the last three 2D only; ``pixelshuffle`` needs the same ratio on every axis).
        upsampler_kwargs: extra registry options (e.g. ReSFU's ``embed_dim``, ``pcdc_channels``, ``use_checkpoint``);
            ReSFU's widths not given are the U-Nets' (``guided_up.UNET_RESFU_WIDTHS``: PCDC 32, docs/networks.md).
        final_upsampler: registry name of the last (full-resolution) decoder step; None (default): ``upsampler``,
            except that ReSFU keeps MONAI's transposed convolution there (``final_upsampler="resfu"``: ReSFU at every
            step; docs/networks.md).
        kwargs: MONAI ``DynUNet``'s keyword arguments.

    Example::

        >>> net = DynUNet(3, 1, 3, kernel_size=[3, 3, 3], strides=[1, (1, 2, 2), 2],
        ...               upsample_kernel_size=[(1, 2, 2), 2], filters=[8, 16, 32], upsampler="resfu")
        >>> net(torch.rand(1, 1, 8, 16, 16)).shape
        torch.Size([1, 3, 8, 16, 16])
    """

    def __init__(self, *args: Any, upsampler: str = "resfu", upsampler_kwargs: dict[str, Any] | None = None,
                 final_upsampler: str | None = None, upsample: str | None = None, **kwargs: Any) -> None:
        name = upsampler_keyword(upsampler, upsample, type(self).__name__)
        final = final_step_upsampler(name, final_upsampler)
        super().__init__(*args, **kwargs)
        self.upsampler = self.upsample = name  # ``upsample``: the attribute's name in earlier releases
        self.final_upsampler = final
        c1_channels = int(self.filters[0])
        levels = self._levels()
        # The skip layers hold the same up blocks as self.upsamples (deepest first there, shallowest first here); the
        # shallowest (levels[0]) is the step to C1's, i.e. the highest, resolution.
        for layer, j in zip(levels, reversed(range(len(self.upsamples)))):
            step = final if layer is levels[0] else name
            block = guided_up_block(self.upsamples[j], step, c1_channels,
                                    step_options(step, upsampler_kwargs) if step == name else None)
            if isinstance(block, GuidedUpBlock) and block.pre_conv is not None:
                block.pre_conv.apply(self.initialize_weights)  # MONAI's Kaiming init of DynUNet's convolutions
            self.upsamples[j] = block
            layer.upsample = block

    def _levels(self) -> List[DynUNetSkipLayer]:
        """MONAI's recursive skip layers, shallowest first (the bottleneck is the last one's ``next_layer``)."""
        levels: List[DynUNetSkipLayer] = []
        node: nn.Module = self.skip_layers
        while isinstance(node, DynUNetSkipLayer):
            levels.append(node)
            node = node.next_layer
        return levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """MONAI ``DynUNet.forward`` unrolled, so that every up block can also receive C1 (the input block's output).

        Returns:
            Logits ``(N, out_channels, *spatial / strides[0])``; in training with deep supervision the final map and
            the ``deep_supr_num`` heads (nearest-interpolated to its size) stacked on dim 1, as MONAI.
        """
        levels = self._levels()
        skips: List[torch.Tensor] = []
        for layer in levels:
            x = layer.downsample(x)
            skips.append(x)
        out = levels[-1].next_layer(x)  # bottleneck
        c1 = skips[0]
        heads: List[Optional[torch.Tensor]] = [None] * self.deep_supr_num
        for layer, skip in zip(reversed(levels), reversed(skips)):
            out = up_step(layer.upsample, out, skip, c1)
            if layer.super_head is not None and layer.heads is not None and layer.index > 0:
                heads[layer.index - 1] = layer.super_head(out)
        out = self.output_block(out)
        if self.training and self.deep_supervision:
            out_all = [out]
            for feature_map in heads:
                if feature_map is not None:
                    out_all.append(interpolate(feature_map, out.shape[2:]))
            return torch.stack(out_all, dim=1)
        return out


with_upsample_signature(DynUNet, MonaiDynUNet)
