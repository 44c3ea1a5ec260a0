"""TransUNet (Chen et al. 2021), R50-ViT-B/16 hybrid, with its decoder upsamplers taken from the registry.

Placement (docs/networks.md): by default the registry upsampler replaces the three ×2 steps that meet a skip feature
(14→28, 28→56, 56→112 at 224², the paper's Fig. 18) and the last step (112→224, no skip) stays the original
TransUNet's bilinear interpolation (align_corners=True). ``final_upsampler`` puts a registry upsampler there too: the
four-step full-resolution variant, guided by a light stem on the image (``final_guidance="image"``) or by C1 bilinearly
upsampled (``"c1"``).

Guidance: ReSFU is guided by C1 at every step — area-pooled to 28² and 56², C1 itself at 112². Every other guided
name gets the paper's iterative guidance C3, C2, C1; unguided ones ignore it. ``upsampler="bilinear"`` is the original
TransUNet.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.utils import look_up_option

from ..upsamplers import get_upsampler, guide_source, is_guided, upsampler_entry
from .decoder import DecoderCup
from .resnet_v2 import ResNetV2
from .vit import PatchEmbedding, ViTEncoder

__all__ = ["ImageStem", "TransUNet", "legacy_transunet_kwargs"]


class ImageStem(nn.Sequential):
    """Guidance stem on the input image: 3×3 conv → GroupNorm → ReLU → 3×3 conv (3 → ``out_channels``)."""

    def __init__(self, in_channels: int = 3, out_channels: int = 32) -> None:
        super().__init__(
            Convolution(2, in_channels, out_channels, kernel_size=3, act="RELU", norm=("GROUP", {"num_groups": 8}), bias=False),
            Convolution(2, out_channels, out_channels, kernel_size=3, conv_only=True),
        )


def legacy_transunet_kwargs(kwargs: dict[str, Any], state_keys: Collection[str]) -> dict[str, Any]:
    """The arguments that rebuild a TransUNet saved before ``final_upsampler`` was recorded in every config.

    Earlier releases put ``upsampler`` at all four decoder steps by default. A saved config without
    ``final_upsampler`` gets ``final_upsampler=upsampler`` back when its weights show a learned last step
    (``decoder.blocks.3.up.*``) or its upsampler is ``nearest`` (the one parameter-free name besides bilinear);
    otherwise (bilinear) both placements are the same network.
    """
    out = dict(kwargs)
    name = str(out.get("upsampler", out.get("upsample", "resfu")))
    learned_last = any(".blocks.3.up." in f".{k}" for k in state_keys)
    if "final_upsampler" not in out and (learned_last or name == "nearest"):
        out["final_upsampler"] = name
    return out


class TransUNet(nn.Module):
    """TransUNet with a choice of decoder upsampler.

    Args:
        num_classes: output classes (incl. background).
        img_size: training/inference image side S (multiple of 16); fixes the position-embedding grid S/16.
        in_channels: encoder input channels (3); a 1-channel input is repeated to 3 inside ``forward``.
        upsampler: registry name for the decoder upsamplers (``resfu``, ``bilinear``, ``deconv``, ...).
        final_upsampler: registry name for the last (112→224, no skip) step. None (default) = ``"bilinear"``, the
            original TransUNet's step: the paper's placement, ``upsampler`` at the three skip steps only.
            ``final_upsampler=upsampler`` (e.g. ``"resfu"``) is the four-step full-resolution variant (the default
            of earlier releases, whose checkpoints rebuild it; its cost is in docs/benchmarks.md).
        final_guidance: guide of a guided last step: ``"image"`` (stem on the image) or ``"c1"``.
        vit_depth: transformer blocks (12).
        hidden_size: token dimension (768).
        mlp_dim: transformer MLP width (3072).
        num_heads: attention heads (12).
        resnet_layers: bottleneck units per ResNet stage ((3, 4, 9)).
        resnet_width: root width (64).
        head_channels: conv_more output (512).
        decoder_channels: decoder block outputs ((256, 128, 64, 16)).
        stem_channels: channels of the image stem guide (32).
        dropout_rate: transformer MLP/embedding dropout (0.1).
        attention_dropout_rate: attention dropout (0.0).
        upsampler_kwargs: extra options for every registry upsampler (e.g. ReSFU's ``embed_dim``). ReSFU steps get
            ``recompute_hidden=True`` unless given: each PCDC compressor computes its hidden map again in backward
            (one grouped 1×1 convolution, ~4 % of ReSFU's time, ~0.4 % of the training step) instead of keeping it,
            which brings the step's peak memory to the 1.10× of bilinear this network is held to
            (docs/benchmarks.md); values and gradients are unchanged.

    Raises:
        ValueError: unknown upsampler or guidance names, or inconsistent sizes.

    Example::

        >>> net = TransUNet(9, img_size=64, vit_depth=1, hidden_size=64, mlp_dim=128, num_heads=4,
        ...                 resnet_layers=(1, 1, 1), resnet_width=32, head_channels=64,
        ...                 decoder_channels=(32, 32, 16, 16), upsampler="bilinear")
        >>> net(torch.rand(2, 1, 64, 64)).shape
        torch.Size([2, 9, 64, 64])
    """

    def __init__(
        self,
        num_classes: int,
        img_size: int = 224,
        in_channels: int = 3,
        upsampler: str = "resfu",
        final_upsampler: str | None = None,
        final_guidance: str = "image",
        vit_depth: int = 12,
        hidden_size: int = 768,
        mlp_dim: int = 3072,
        num_heads: int = 12,
        resnet_layers: Sequence[int] = (3, 4, 9),
        resnet_width: int = 64,
        head_channels: int = 512,
        decoder_channels: Sequence[int] = (256, 128, 64, 16),
        stem_channels: int = 32,
        dropout_rate: float = 0.1,
        attention_dropout_rate: float = 0.0,
        upsampler_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if img_size % 16 != 0:
            raise ValueError(f"img_size must be a multiple of 16, got {img_size}.")
        if len(decoder_channels) != 4:
            raise ValueError(f"decoder_channels needs 4 entries, got {tuple(decoder_channels)}.")
        self.upsampler_name = upsampler_entry(upsampler).name
        self.final_upsampler_name = upsampler_entry(final_upsampler or "bilinear").name
        self.final_guidance = str(look_up_option(final_guidance, ("image", "c1")))
        self.img_size = img_size
        self.in_channels = in_channels
        self.num_classes = num_classes

        self.resnet = ResNetV2(resnet_layers, resnet_width, in_channels)
        grid = img_size // 16
        self.embeddings = PatchEmbedding(self.resnet.out_channels, hidden_size, grid, dropout_rate)
        self.vit = ViTEncoder(hidden_size, mlp_dim, num_heads, vit_depth, dropout_rate, attention_dropout_rate)

        w = resnet_width
        skip_channels = [8 * w, 4 * w, w, 0]
        # Guide of each decoder step: a name the forward resolves ("none" for unguided upsamplers).
        if guide_source(self.upsampler_name) == "c1":  # the registry's guide policy
            sources = ["c1_area", "c1_area", "c1"]
        else:
            sources = ["c3", "c2", "c1"]
        guide_channels = {"c1_area": w, "c1": w, "c2": 4 * w, "c3": 8 * w, "image": stem_channels, "c1_up": w}
        final_source = "image" if self.final_guidance == "image" else "c1_up"
        names = [self.upsampler_name] * 3 + [self.final_upsampler_name]
        sources = [*sources, final_source]
        ins = [head_channels, *decoder_channels[:-1]]
        kwargs = dict(upsampler_kwargs or {})
        ups: list[nn.Module] = []
        self.guide_sources: List[str] = []
        for name, src, cin in zip(names, sources, ins):
            opts = dict(kwargs) if name not in ("bilinear", "nearest") else {}
            if name == "resfu":
                opts.setdefault("recompute_hidden", True)
            if name == "bilinear":
                opts["align_corners"] = True  # the original TransUNet decoder
            if name in ("deconv", "pixelshuffle"):
                opts.pop("out_channels", None)
            guided = is_guided(name)
            ups.append(get_upsampler(name, cin, guide_channels[src] if guided else None, 2, 2, **opts))
            self.guide_sources.append(src if guided else "none")
        self.stem = ImageStem(in_channels, stem_channels) if "image" in self.guide_sources else None
        self.decoder = DecoderCup(hidden_size, head_channels, decoder_channels, skip_channels, ups)
        self.head = Convolution(2, decoder_channels[-1], num_classes, kernel_size=3, conv_only=True)

    def load_pretrained(self, path: str) -> dict[str, Any]:
        """Load the official ``R50+ViT-B_16.npz`` (see :func:`resfu_med.networks.transunet.pretrained.load_npz`).

        Returns:
            The load report (loaded / skipped keys, position-embedding resize).
        """
        from .pretrained import load_npz

        return load_npz(self, path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x ``(N, 1 or in_channels, S, S)``. Returns: logits ``(N, num_classes, S, S)``."""
        if x.shape[1] == 1 and self.in_channels != 1:
            x = x.repeat(1, self.in_channels, 1, 1)
        c4, skips = self.resnet(x)
        tokens = self.vit(self.embeddings(c4))
        n, length, hidden = tokens.shape
        side = self.embeddings.grid
        y = tokens.transpose(1, 2).reshape(n, hidden, side, side)
        c3, c2, c1 = skips[0], skips[1], skips[2]
        guides: List[Optional[torch.Tensor]] = []
        sizes = [c3.shape[2:], c2.shape[2:], c1.shape[2:], x.shape[2:]]
        for i, src in enumerate(self.guide_sources):
            guide: Optional[torch.Tensor] = None
            if src == "c1_area":
                guide = F.adaptive_avg_pool2d(c1, [int(sizes[i][0]), int(sizes[i][1])])
            elif src == "c1":
                guide = c1
            elif src == "c2":
                guide = c2
            elif src == "c3":
                guide = c3
            elif src == "c1_up":
                guide = F.interpolate(c1, size=[int(x.shape[2]), int(x.shape[3])], mode="bilinear", align_corners=False)
            elif src == "image":
                stem = self.stem
                if stem is not None:
                    guide = stem(x)
            guides.append(guide)
        skip_list: List[Optional[torch.Tensor]] = [c3, c2, c1, None]
        return self.head(self.decoder(y, skip_list, guides))
