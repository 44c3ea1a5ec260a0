""":class:`DatasetInfo`: what the engine needs to know about a dataset (its classes, intensity and modality)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DatasetInfo"]


@dataclass
class DatasetInfo:
    """What the engine needs to know about a dataset.

    Attributes:
        name: ``synapse``, ``acdc``, ``msd`` or ``demo``.
        num_classes: classes including background.
        label_names: foreground class names, index 1.. (``label_names[0]`` is class 1).
        intensity: the intensity spec (see :func:`~resfu_med.data.intensity.make_intensity_transform`).
        modality: ``"CT"`` or ``"MRI"``.
        root: the prepared root when known, else ``None``.
        ignore_index: label value excluded from the loss and the scores (nnU-Net's ``"ignore"`` label), or ``None``.
        label_values: the label value written for each class 0..K-1 by ``infer``/``evaluate`` (MSD: the dataset's
            raw values); ``None``: the class indices (Synapse's TransUNet numbering, ACDC). See :mod:`.labels`.
        raw_label_values: the raw release's value of each class (``--raw-labels``), when known.
    """

    name: str
    num_classes: int
    label_names: list[str]
    intensity: dict[str, Any] = field(default_factory=dict)
    modality: str = "CT"
    root: Path | None = None
    ignore_index: int | None = None
    label_values: list[int] | None = None
    raw_label_values: list[int] | None = None
