"""TransUNet's cascaded upsampler (DecoderCup): conv_more, then four blocks of upsample ×2 → concat skip → two
3×3 conv–BN–ReLU; every upsampler comes from the registry and may take a guide."""

from __future__ import annotations

from collections.abc import Sequence
from typing import List, Optional

import torch
import torch.nn as nn
from monai.networks.blocks import Convolution

__all__ = ["conv_bn_relu", "DecoderBlock", "DecoderCup"]


def conv_bn_relu(in_channels: int, out_channels: int) -> Convolution:
    """3×3 conv (no bias) → BatchNorm → ReLU, TransUNet's ``Conv2dReLU`` as a MONAI ``Convolution``."""
    return Convolution(2, in_channels, out_channels, kernel_size=3, act="RELU", norm="BATCH", bias=False)


class DecoderBlock(nn.Module):
    """Upsample (a registry module), concatenate the skip feature if any, two conv–BN–ReLU.

    Args:
        upsampler: a registry module (``forward(x, guide, size)``) keeping ``in_channels``.
        in_channels: channels of the input.
        skip_channels: channels of the skip feature (0 for none).
        out_channels: output channels.
    """

    def __init__(self, upsampler: nn.Module, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = upsampler
        self.conv1 = conv_bn_relu(in_channels + skip_channels, out_channels)
        self.conv2 = conv_bn_relu(out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: Optional[torch.Tensor], guide: Optional[torch.Tensor], size: List[int]) -> torch.Tensor:
        x = self.up(x, guide, size)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class DecoderCup(nn.Module):
    """conv_more (hidden → head channels) and the decoder blocks.

    Args:
        hidden_size: token dimension of the transformer.
        head_channels: output of conv_more (512).
        decoder_channels: outputs of the four blocks (256, 128, 64, 16).
        skip_channels: skip channels per block (512, 256, 64, 0 for R50 with width 64).
        upsamplers: one registry module per block, each keeping its block's input channels.
    """

    def __init__(
        self,
        hidden_size: int,
        head_channels: int,
        decoder_channels: Sequence[int],
        skip_channels: Sequence[int],
        upsamplers: Sequence[nn.Module],
    ) -> None:
        super().__init__()
        if not len(decoder_channels) == len(skip_channels) == len(upsamplers):
            raise ValueError(
                f"decoder_channels {tuple(decoder_channels)}, skip_channels {tuple(skip_channels)} and "
                f"{len(upsamplers)} upsamplers must have the same length."
            )
        self.conv_more = conv_bn_relu(hidden_size, head_channels)
        ins = [head_channels, *decoder_channels[:-1]]
        self.blocks = nn.ModuleList(
            DecoderBlock(up, cin, cskip, cout) for up, cin, cskip, cout in zip(upsamplers, ins, skip_channels, decoder_channels)
        )

    def forward(self, x: torch.Tensor, skips: List[Optional[torch.Tensor]], guides: List[Optional[torch.Tensor]]) -> torch.Tensor:
        """Args: x ``(N, hidden, g, g)``; skips and guides, one entry (or None) per block."""
        x = self.conv_more(x)
        for i, block in enumerate(self.blocks):
            skip = skips[i]
            if skip is not None:
                size = [int(skip.shape[2]), int(skip.shape[3])]
            else:
                size = [int(x.shape[2]) * 2, int(x.shape[3]) * 2]
            x = block(x, skip, guides[i], size)
        return x
