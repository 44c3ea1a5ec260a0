"""Fixed Gaussian smoothing used for ReSFU's detail-space key ``q_GS`` (paper §4.1.2, docs/resfu_module.md, step 4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.layers.convutils import gaussian_1d
from torch import nn

from resfu_med.networks.blocks.fixed_conv import fixed_depthwise_conv
from resfu_med.networks.blocks.padding import replicate_pad

__all__ = ["GaussianSmoothing", "gaussian_kernel"]

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def gaussian_kernel(spatial_dims: int, sigma: float = 1.0, kernel_size: int = 3) -> torch.Tensor:
    """Normalised, sampled Gaussian kernel of shape ``(kernel_size,) * spatial_dims``.

    The N-D kernel is the outer product of normalised 1-D kernels, which is itself normalised (sums to 1).

    Args:
        spatial_dims: 1, 2 or 3.
        sigma: standard deviation in pixels.
        kernel_size: odd number of taps per axis.

    Returns:
        A float32 tensor whose entries sum to 1.

    Raises:
        ValueError: if ``kernel_size`` is not a positive odd number, ``sigma`` is not positive or ``spatial_dims`` is not 1–3.
    """
    if spatial_dims not in _CONV:
        raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}")
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    radius = kernel_size // 2
    # MONAI's sampled kernel has 2 * int(sigma * truncated + 0.5) + 1 taps; choose `truncated` to get exactly `radius`.
    k1 = gaussian_1d(torch.tensor(float(sigma)), truncated=radius / sigma, approx="sampled", normalize=True)
    if k1.numel() != kernel_size:  # pragma: no cover - guards against a change of MONAI's tap rule
        idx = torch.arange(-radius, radius + 1, dtype=torch.float32)
        k1 = torch.exp(-0.5 * (idx / sigma) ** 2)
        k1 = k1 / k1.sum()
    kernel = k1.float()
    for _ in range(spatial_dims - 1):
        kernel = kernel.unsqueeze(-1) * k1.float()
    return kernel


class GaussianSmoothing(nn.Module):
    """Depthwise Gaussian smoothing with replicate padding and a fixed (non-trainable) kernel.

    The kernel is a non-persistent buffer: it follows ``.to()``/``.half()`` but is neither a parameter (so it does not count
    towards ReSFU's 47,570 parameters) nor stored in state dicts.

    Args:
        channels: number of channels (each smoothed on its own).
        spatial_dims: 2 or 3 (1 also works).
        sigma: Gaussian standard deviation in pixels (default 1, as in the paper).
        kernel_size: taps per axis (default 3).

    Example:
        >>> smooth = GaussianSmoothing(32, spatial_dims=2)
        >>> smooth(torch.randn(1, 32, 16, 16)).shape
        torch.Size([1, 32, 16, 16])
    """

    def __init__(self, channels: int, spatial_dims: int = 2, sigma: float = 1.0, kernel_size: int = 3) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be positive, got {channels}")
        self.channels = channels
        self.spatial_dims = spatial_dims
        self.radius = kernel_size // 2
        kernel = gaussian_kernel(spatial_dims, sigma, kernel_size)
        weight = kernel.expand(channels, 1, *kernel.shape).contiguous()
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Smooth ``x`` of shape ``(N, channels, *spatial)``; the output has the same shape and dtype."""
        if x.dim() != self.spatial_dims + 2 or x.shape[1] != self.channels:
            raise ValueError(
                f"GaussianSmoothing: x must be (N, {self.channels}, {self.spatial_dims} spatial dims), got {tuple(x.shape)}"
            )
        padded = replicate_pad(x, [self.radius] * (2 * self.spatial_dims))
        return fixed_depthwise_conv(padded, self.weight)  # keeps no copy of the padded map for backward
