"""MONAI's ``SwinUNETR`` with every decoder transposed convolution replaced by a registry upsampler, ReSFU guided by
``encoder1`` (the convolutional block on the input image, the only full-resolution encoder feature).

Same constructor arguments as the installed ``monai.networks.nets.SwinUNETR`` (MONAI ≥ 1.5 has no ``img_size``) plus
``upsampler`` and ``upsampler_kwargs``; the Swin transformer, the encoder blocks, the conv blocks of the five decoder
steps and the output block are MONAI's own modules. With ``upsampler="deconv"`` the network is MONAI's ``SwinUNETR``
module for module (same ``state_dict`` keys, so MONAI checkpoints and ``load_from`` work, same outputs).
"""

from __future__ import annotations

import torch
from monai.networks.nets import SwinUNETR as MonaiSwinUNETR

from .guided_up import UNETRDecoderMixin, up_step, with_upsample_signature

__all__ = ["SwinUNETR"]


class SwinUNETR(UNETRDecoderMixin, MonaiSwinUNETR):
    """``monai.networks.nets.SwinUNETR`` whose decoder upsamplers are chosen by registry name.

    Args:
        args: MONAI ``SwinUNETR``'s arguments (``in_channels``, ``out_channels``, ``patch_size``, ``depths``,
            ``num_heads``, ``window_size``, ``feature_size``, ``norm_name``, ..., ``spatial_dims`` (default 3)).
        upsampler: registry name (``resfu``, ``bilinear``, ``nearest``, ``deconv``, ``pixelshuffle``; in 2D also
            ``carafe``, ``sapa``, ``dysample``).
        upsampler_kwargs: extra registry options (e.g. ReSFU's ``embed_dim``, ``pcdc_channels``, ``use_checkpoint``);
            ReSFU's widths not given are the U-Nets' (``guided_up.UNET_RESFU_WIDTHS``: PCDC 32, docs/networks.md).
        final_upsampler: registry name of the last (full-resolution) decoder step; None (default): ``upsampler``,
            except that ReSFU keeps MONAI's transposed convolution there (``final_upsampler="resfu"``: ReSFU at every
            step; docs/networks.md).
        kwargs: MONAI ``SwinUNETR``'s keyword arguments.

    Example::

        >>> net = SwinUNETR(in_channels=1, out_channels=3, feature_size=12, depths=(1, 1, 1, 1), upsampler="resfu")
        >>> net(torch.rand(1, 1, 64, 32, 32)).shape  # sides: multiples of 32 (one of 64 to train: instance norm)
        torch.Size([1, 3, 64, 32, 32])
    """

    #: the decoder up blocks whose transposed convolution is replaced
    decoder_names = ("decoder5", "decoder4", "decoder3", "decoder2", "decoder1")

    def forward(self, x_in: torch.Tensor) -> torch.Tensor:
        """MONAI ``SwinUNETR.forward`` with C1 (``encoder1(x_in)``) passed to every decoder step.

        Args:
            x_in: ``(N, in_channels, *spatial)``, each side divisible by ``patch_size ** 5`` (32).

        Returns:
            Logits ``(N, out_channels, *spatial)``.
        """
        if not torch.jit.is_scripting() and not torch.jit.is_tracing():
            self._check_input_size(x_in.shape[2:])
        hidden_states_out = self.swinViT(x_in, self.normalize)
        enc0 = self.encoder1(x_in)
        enc1 = self.encoder2(hidden_states_out[0])
        enc2 = self.encoder3(hidden_states_out[1])
        enc3 = self.encoder4(hidden_states_out[2])
        dec4 = self.encoder10(hidden_states_out[4])
        dec3 = up_step(self.decoder5, dec4, hidden_states_out[3], enc0)
        dec2 = up_step(self.decoder4, dec3, enc3, enc0)
        dec1 = up_step(self.decoder3, dec2, enc2, enc0)
        dec0 = up_step(self.decoder2, dec1, enc1, enc0)
        out = up_step(self.decoder1, dec0, enc0, enc0)
        return self.out(out)


with_upsample_signature(SwinUNETR, MonaiSwinUNETR)
