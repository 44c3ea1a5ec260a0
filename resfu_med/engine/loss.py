"""The training loss: TransUNet's Dice + cross-entropy, with nnU-Net's ``"ignore"`` label excluded when a dataset has one.

Without an ignore label this is MONAI's :class:`~monai.losses.DiceCELoss` exactly as the trainer always used it. With
one (``data.ignore_index``, see :mod:`resfu_med.data.msd`), voxels carrying it contribute nothing: cross-entropy is
averaged over the other voxels and the Dice sums run over them only, so the result equals ``DiceCELoss`` applied to the
labelled voxels alone (nnU-Net v2 semantics for sparse annotations).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceLoss

__all__ = ["segmentation_loss", "IgnoreDiceCELoss"]


class IgnoreDiceCELoss(nn.Module):
    """``lambda_dice · Dice + lambda_ce · CE`` over the voxels whose label is not ``ignore_index``.

    Args:
        ignore_index: the label value to leave out.
        lambda_ce: weight of the cross-entropy term.
        lambda_dice: weight of the Dice term (softmax, background included, sums over the batch: ``batch=True``).
    """

    def __init__(self, ignore_index: int, lambda_ce: float = 1.0, lambda_dice: float = 1.0) -> None:
        super().__init__()
        self.ignore_index = int(ignore_index)
        self.lambda_ce, self.lambda_dice = float(lambda_ce), float(lambda_dice)
        self.dice = DiceLoss(include_background=True, batch=True)

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """Args: logits ``(N, C, *spatial)``; label ``(N, 1, *spatial)`` or ``(N, *spatial)`` integer values."""
        target = label[:, 0] if label.dim() == logits.dim() else label
        target = target.long()
        valid = target != self.ignore_index
        ce = (F.cross_entropy(logits, target, ignore_index=self.ignore_index) if bool(valid.any())
              else logits.sum() * 0.0)  # fmt: skip
        mask = valid.unsqueeze(1).to(logits.dtype)
        onehot = F.one_hot(torch.where(valid, target, 0), logits.shape[1]).movedim(-1, 1).to(logits.dtype)
        dice = self.dice(torch.softmax(logits, dim=1) * mask, onehot * mask)
        return self.lambda_dice * dice + self.lambda_ce * ce


def segmentation_loss(ce_weight: float, dice_weight: float, ignore_index: int | None = None) -> nn.Module:
    """The trainer's loss: MONAI ``DiceCELoss`` (softmax, one-hot labels, background included, ``batch=True`` as
    TransUNet's DiceLoss), or :class:`IgnoreDiceCELoss` when the dataset has an ignore label."""
    if ignore_index is None:
        return DiceCELoss(to_onehot_y=True, softmax=True, include_background=True, batch=True,
                          lambda_ce=ce_weight, lambda_dice=dice_weight)  # fmt: skip
    return IgnoreDiceCELoss(ignore_index, lambda_ce=ce_weight, lambda_dice=dice_weight)
