"""MONAI's ``UNETR`` with every decoder transposed convolution replaced by a registry upsampler, ReSFU guided by
``encoder1`` (the convolutional block on the input image, the only full-resolution encoder feature).

Same constructor arguments as ``monai.networks.nets.UNETR`` plus ``upsampler`` and ``upsampler_kwargs``; the ViT, the
encoder blocks, the conv blocks of the four decoder steps and the output block are MONAI's own modules. Only the
decoder (``decoder5`` … ``decoder2``) changes: the transposed convolutions inside ``encoder2``–``encoder4``
(``UnetrPrUpBlock``) bring ViT tokens up to the skip resolutions and belong to the encoder, so they stay. With
``upsampler="deconv"`` the network is MONAI's ``UNETR`` module for module (same ``state_dict`` keys, same outputs).
"""

from __future__ import annotations

import torch
from monai.networks.nets import UNETR as MonaiUNETR

from .guided_up import UNETRDecoderMixin, up_step, with_upsample_signature

__all__ = ["UNETR"]


class UNETR(UNETRDecoderMixin, MonaiUNETR):
    """``monai.networks.nets.UNETR`` whose decoder upsamplers are chosen by registry name.

    Args:
        args: MONAI ``UNETR``'s arguments (``in_channels``, ``out_channels``, ``img_size``, ``feature_size``,
            ``hidden_size``, ``mlp_dim``, ``num_heads``, ``proj_type``, ``norm_name``, ``conv_block``, ``res_block``,
            ``dropout_rate``, ``spatial_dims`` (default 3), ``qkv_bias``, ``save_attn``).
        upsampler: registry name (``resfu``, ``bilinear``, ``nearest``, ``deconv``, ``pixelshuffle``; in 2D also
            ``carafe``, ``sapa``, ``dysample``).
        upsampler_kwargs: extra registry options (e.g. ReSFU's ``embed_dim``, ``pcdc_channels``, ``use_checkpoint``);
            ReSFU's widths not given are the U-Nets' (``guided_up.UNET_RESFU_WIDTHS``: PCDC 32, docs/networks.md).
        final_upsampler: registry name of the last (full-resolution) decoder step; None (default): ``upsampler``,
            except that ReSFU keeps MONAI's transposed convolution there (``final_upsampler="resfu"``: ReSFU at every
            step; docs/networks.md).
        kwargs: MONAI ``UNETR``'s keyword arguments.

    Example::

        >>> net = UNETR(in_channels=1, out_channels=3, img_size=32, feature_size=8, hidden_size=48, mlp_dim=96,
        ...             num_heads=4, upsampler="resfu")
        >>> net(torch.rand(1, 1, 32, 32, 32)).shape
        torch.Size([1, 3, 32, 32, 32])
    """

    #: the decoder up blocks whose transposed convolution is replaced
    decoder_names = ("decoder5", "decoder4", "decoder3", "decoder2")

    def forward(self, x_in: torch.Tensor) -> torch.Tensor:
        """MONAI ``UNETR.forward`` with C1 (``encoder1(x_in)``) passed to every decoder step.

        Args:
            x_in: ``(N, in_channels, *img_size)`` (the ViT's position embedding fixes the size).

        Returns:
            Logits ``(N, out_channels, *img_size)``.
        """
        x, hidden_states_out = self.vit(x_in)
        enc1 = self.encoder1(x_in)
        enc2 = self.encoder2(self.proj_feat(hidden_states_out[3]))
        enc3 = self.encoder3(self.proj_feat(hidden_states_out[6]))
        enc4 = self.encoder4(self.proj_feat(hidden_states_out[9]))
        dec4 = self.proj_feat(x)
        dec3 = up_step(self.decoder5, dec4, enc4, enc1)
        dec2 = up_step(self.decoder4, dec3, enc3, enc1)
        dec1 = up_step(self.decoder3, dec2, enc2, enc1)
        out = up_step(self.decoder2, dec1, enc1, enc1)
        return self.out(out)


with_upsample_signature(UNETR, MonaiUNETR)
