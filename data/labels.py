"""The user's label values: the map between a dataset's raw label values and the network's class indices.

``prepare`` renumbers a dataset's raw label values to the classes ``0..K-1`` the network is trained on and records the
map (``dataset.json``'s ``label_map`` {raw: class}); the training config (``data.label_values``,
``data.raw_label_values``: the value written for each class), the checkpoint and the bundle metadata carry it, and
``infer``, ``evaluate --save-predictions`` and the bundle's inference write it back:

- MSD / nnU-Net: the dataset's own values (labels {0, 1, 2, 4} come back as {0, 1, 2, 4}).
- Synapse: TransUNet's 8-class indices 0..8 by default (the protocol's numbering, what published Synapse results use);
  ``--raw-labels`` writes the BTCV release's values instead (aorta 8, gallbladder 4, ...).
- ACDC and checkpoints without a map: the class indices, unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["label_values_from_map", "output_values", "apply_label_values", "label_dtype"]


def label_values_from_map(label_map: Mapping[Any, Any], num_classes: int) -> list[int]:
    """``{raw value: class}`` → the raw value of each class ``0..num_classes-1`` (the smallest raw value if several).

    Raises:
        ValueError: a class without a raw value, or values that are not integers.
    """
    values: dict[int, int] = {}
    for raw, cls in sorted(((int(r), int(c)) for r, c in label_map.items()), key=lambda rc: rc[0]):
        values.setdefault(cls, raw)
    values.setdefault(0, 0)
    missing = [c for c in range(num_classes) if c not in values]
    if missing:
        raise ValueError(f"label map {dict(label_map)} gives no raw value for class(es) {missing}")
    return [values[c] for c in range(num_classes)]


def output_values(data_cfg: Mapping[str, Any], raw: bool = False) -> list[int] | None:
    """The value to write for each class, from a training config's ``data`` section; ``None``: the class indices.

    Args:
        data_cfg: ``config["data"]`` (``num_classes``, ``label_values``, ``raw_label_values``).
        raw: the raw release's values (Synapse: BTCV numbering) rather than the dataset's default output values.

    Raises:
        ValueError: a stored list of the wrong length or with values outside 0..65535.
    """
    key = "raw_label_values" if raw else "label_values"
    values = data_cfg.get(key) or (data_cfg.get("label_values") if raw else None)
    if values is None:
        return None
    n = int(data_cfg["num_classes"])
    out = [int(v) for v in values]
    if len(out) != n or min(out) < 0 or max(out) > 65535 or len(set(out)) != n:
        raise ValueError(f"config data.{key} must be {n} distinct integers in 0..65535, got {values!r}")
    return out


def label_dtype(values: list[int] | None, num_classes: int) -> np.dtype:
    """The smallest unsigned integer dtype holding every written value."""
    top = max(values) if values else num_classes - 1
    return np.dtype(np.uint8 if top <= 255 else np.uint16)


def apply_label_values(labels: np.ndarray, values: list[int] | None, num_classes: int) -> np.ndarray:
    """Class indices → written values (a lookup table), in :func:`label_dtype`."""
    dtype = label_dtype(values, num_classes)
    if values is None:
        return np.asarray(labels).astype(dtype, copy=False)
    return np.asarray(values, dtype=dtype)[np.asarray(labels)]
