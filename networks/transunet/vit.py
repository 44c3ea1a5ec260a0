"""TransUNet's transformer: 1×1 patch embedding of C4, learned position embedding, MONAI ``TransformerBlock``s and a
final LayerNorm (ViT-B/16: hidden 768, MLP 3072, 12 heads, 12 blocks; LayerNorm eps 1e-6 as in ViT)."""

from __future__ import annotations

import torch
import torch.nn as nn
from monai.networks.blocks import TransformerBlock

__all__ = ["PatchEmbedding", "ViTEncoder"]


class PatchEmbedding(nn.Module):
    """1×1 conv ``in_channels → hidden`` on the C4 grid, flattened to tokens, plus a learned position embedding.

    Args:
        in_channels: channels of C4.
        hidden_size: token dimension.
        grid: side of the (square) token grid.
        dropout_rate: dropout after adding the position embedding.
    """

    def __init__(self, in_channels: int, hidden_size: int, grid: int, dropout_rate: float = 0.1) -> None:
        super().__init__()
        self.grid = grid
        self.patch = nn.Conv2d(in_channels, hidden_size, kernel_size=1)
        self.position = nn.Parameter(torch.zeros(1, grid * grid, hidden_size))
        self.dropout = nn.Dropout(dropout_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.grid or x.shape[-2] != self.grid:
            raise ValueError(
                f"input gives a {x.shape[-2]}x{x.shape[-1]} token grid, the model was built for {self.grid}x{self.grid} "
                f"(img_size={16 * self.grid}); resize the input or build TransUNet(img_size=...)."
            )
        tokens = self.patch(x).flatten(2).transpose(1, 2)  # (N, grid², hidden)
        return self.dropout(tokens + self.position)


class ViTEncoder(nn.Module):
    """Stack of MONAI ``TransformerBlock``s (pre-norm, qkv bias) and the encoder LayerNorm.

    Args:
        hidden_size: token dimension.
        mlp_dim: MLP width.
        num_heads: attention heads.
        depth: number of blocks.
        dropout_rate: MLP dropout (ViT's 0.1).
        attention_dropout_rate: dropout on attention weights/output (ViT's 0.0).
    """

    def __init__(
        self,
        hidden_size: int = 768,
        mlp_dim: int = 3072,
        num_heads: int = 12,
        depth: int = 12,
        dropout_rate: float = 0.1,
        attention_dropout_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if hidden_size % num_heads != 0:
            raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads}).")
        self.blocks = nn.ModuleList()
        for _ in range(depth):
            block = TransformerBlock(hidden_size, mlp_dim, num_heads, dropout_rate, qkv_bias=True)
            # MONAI applies one rate everywhere; ViT drops only in the MLP, and its LayerNorms use eps 1e-6.
            block.attn.drop_output.p = attention_dropout_rate
            block.attn.drop_weights.p = attention_dropout_rate
            block.norm1.eps = 1e-6
            block.norm2.eps = 1e-6
            block.norm_cross_attn = nn.Identity()  # unused without cross-attention; keeps the original parameter count
            self.blocks.append(block)
        self.norm = nn.LayerNorm(hidden_size, eps=1e-6)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)
