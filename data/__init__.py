"""Datasets and transforms of resfu-med (installed as ``resfu_med.data``): Synapse, ACDC, MSD and the demo phantoms."""

from __future__ import annotations

__all__: list[str] = []
