"""Validation during training: volume-wise Dice per class (to pick ``best.pt``) and TensorBoard overlays.

Volumes are predicted as ``resfu-med evaluate`` predicts them (2D models slice by slice: resize each slice to the
training size, predict, argmax, resize the labels back with nearest neighbour; docs/evaluation.md) and scored with
:func:`resfu_med.metrics.transunet_dice` — the Dice half of the evaluation's TransUNet-protocol metrics — averaged
over volumes. HD95 is left to ``resfu-med evaluate`` (it is slow and does not change which checkpoint is best). The slice-wise prediction is the evaluation engine's own
(:func:`resfu_med.engine.inferer.predict_volume`), so validation and ``resfu-med evaluate`` cannot disagree.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from resfu_med.metrics import drop_ignored, transunet_dice

__all__ = ["validate", "overlay"]

# Label colours for overlays (RGB in [0, 1]); class 0 is transparent.
_PALETTE = np.array(
    [[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1], [1, 0.5, 0], [0.5, 0, 1],
     [0.5, 1, 0], [0, 0.5, 1], [1, 0, 0.5], [0.5, 0.5, 0.5], [0.6, 0.3, 0.1]], dtype=np.float32)


def overlay(image: np.ndarray, gt: np.ndarray, pred: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """A ``(3, H, 3W)`` float image in [0, 1]: the slice, the truth overlaid, the prediction overlaid."""
    lo, hi = float(image.min()), float(image.max())
    gray = (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)
    rgb = np.repeat(gray[..., None], 3, axis=-1).astype(np.float32)

    def paint(labels: np.ndarray) -> np.ndarray:
        colours = _PALETTE[np.clip(labels, 0, len(_PALETTE) - 1)]
        mask = (labels > 0)[..., None]
        return np.where(mask, (1 - alpha) * rgb + alpha * colours, rgb)

    panel = np.concatenate([rgb, paint(gt), paint(pred)], axis=1)
    return np.ascontiguousarray(panel.transpose(2, 0, 1))


def _as_numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


@torch.no_grad()
def validate(model: nn.Module, cases: Iterable[dict[str, Any]], config: dict[str, Any],
             device: torch.device | str = "cpu", amp_dtype: torch.dtype | None = None,
             num_images: int = 0) -> dict[str, Any]:
    """Score ``model`` on validation volumes.

    Args:
        model: the network (put in eval mode here; the caller restores train mode).
        cases: volume dicts ``{"image": (Z, H, W), "label": (Z, H, W), "case": str}`` (the data layer's
            evaluation split).
        config: the run config (``data.num_classes``, ``data.img_size`` and the model description).
        device: where to run the model.
        amp_dtype: autocast dtype, or ``None``.
        num_images: how many overlays to return (one per case, the slice with the most foreground).

    Returns:
        ``{"dice": [per-class mean Dice], "mean_dice": float, "cases": int, "images": [(case, (3, H, 3W))]}``.
    """
    from resfu_med.engine.inferer import predict_volume

    num_classes = int(config["data"]["num_classes"])
    autocast = (torch.autocast(torch.device(device).type, dtype=amp_dtype) if amp_dtype is not None
                else contextlib.nullcontext())
    model.eval()
    per_case: list[list[float]] = []
    images: list[tuple[str, np.ndarray]] = []
    items = (cases[i] for i in range(len(cases))) if hasattr(cases, "__len__") and hasattr(cases, "__getitem__") else cases
    for item in items:
        image = _as_numpy(item["image"]).astype(np.float32)
        label = _as_numpy(item["label"]).astype(np.int64)
        if image.ndim == 4 and image.shape[0] == 1:  # a channel-first volume
            image, label = image[0], label.reshape(image.shape[-3:]) if label.ndim == 4 else label
        with autocast:
            pred, _ = predict_volume(model, image, config, device=device, batch_size=16,
                                     spacing=item.get("spacing") if isinstance(item, dict) else None)
        per_case.append(transunet_dice(*drop_ignored(pred, label, config["data"].get("ignore_index")), num_classes))
        if len(images) < num_images:
            z = int(np.argmax((label > 0).reshape(label.shape[0], -1).sum(axis=1)))
            images.append((str(item.get("case", len(per_case))), overlay(image[z], label[z], pred[z])))
    dice = np.mean(np.asarray(per_case), axis=0).tolist() if per_case else [float("nan")] * (num_classes - 1)
    return {"dice": dice, "mean_dice": float(np.mean(dice)) if per_case else float("nan"), "cases": len(per_case),
            "images": images}
