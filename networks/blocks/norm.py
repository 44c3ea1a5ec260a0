"""GroupNorm with ReSFU's group-count fallback (docs/resfu_module.md: the largest divisor of the channels not above the target)."""

from __future__ import annotations

from monai.networks.layers import Norm
from torch import nn

__all__ = ["group_count", "group_norm"]


def group_count(channels: int, max_groups: int) -> int:
    """Largest divisor of ``channels`` that is ``<= max_groups`` (e.g. 32 for 256 channels, 16 for 48, 1 for 7).

    Raises:
        ValueError: if ``channels`` or ``max_groups`` is not positive.
    """
    if channels < 1 or max_groups < 1:
        raise ValueError(f"group_count: channels and max_groups must be positive, got {channels}, {max_groups}")
    return max(g for g in range(1, min(channels, max_groups) + 1) if channels % g == 0)


def group_norm(channels: int, max_groups: int, spatial_dims: int = 2) -> nn.GroupNorm:
    """``GroupNorm(group_count(channels, max_groups), channels)`` built with MONAI's ``Norm`` factory."""
    return Norm[Norm.GROUP, spatial_dims](num_groups=group_count(channels, max_groups), num_channels=channels)
