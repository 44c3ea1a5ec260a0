"""The inferer exported bundles name: ``resfu-med infer``'s own window inference, with the checkpoint's settings.

A bundle's ``inference.json`` names :class:`EngineInferer` with plain arguments (the checkpoint's ``model``, ``data``
and, when recorded, ``plan`` sections, and the export options). It calls
:func:`resfu_med.engine.inferer.predict_volume`, the one function ``resfu-med infer`` and ``resfu-med evaluate`` use,
so a bundle segments exactly as the command line does and follows every change of that path (slice zooms, windows,
blending, a planned spacing) without a second implementation in the bundle.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.inferers import Inferer
from monai.utils import convert_to_dst_type

from resfu_med.bundle.configs import inferer_problem
from resfu_med.engine.inferer import predict_volume
from resfu_med.networks.model_registry import get_model_spec
from resfu_med.safety import check_plain_data

__all__ = ["EngineInferer", "PREDICTION_DATA_KEYS", "recorded_settings"]

#: The keys of a checkpoint's ``data`` section that :func:`resfu_med.engine.inferer.predict_volume` reads. Only these go
#: into a bundle: the section also holds the user's own paths (``root``), which a shared bundle must not carry.
PREDICTION_DATA_KEYS = ("img_size", "num_classes", "roi_size", "patch_size")


def recorded_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """What a bundle records of a checkpoint's ``config`` for :class:`EngineInferer`: ``model``, the prediction keys of
    ``data`` and, when the checkpoint has one, the whole ``plan`` section."""
    data = config.get("data") or {}
    out: dict[str, Any] = {"model": copy.deepcopy(dict(config["model"])),
                           "data": {k: copy.deepcopy(data[k]) for k in PREDICTION_DATA_KEYS if k in data}}
    if config.get("plan") is not None:
        out["plan"] = copy.deepcopy(dict(config["plan"]))
    return out


class EngineInferer(Inferer):
    """MONAI inferer running :func:`resfu_med.engine.inferer.predict_volume` on one ``(1, 1, Z, Y, X)`` volume.

    The input is the intensity-normalised volume in resfu-med's ``(Z, Y, X)`` order; the output is the label map
    ``(1, 1, Z, Y, X)`` (class indices, float32) in the input's grid, with the input's metadata (a ``MetaTensor`` in,
    a ``MetaTensor`` out), so ``SaveImaged``/``Invertd`` see the loaded image's geometry. The network is called with
    its logits; the engine applies the softmax and blends probabilities across windows.

    Args:
        model: the checkpoint's ``config["model"]`` (``{"name", "kwargs"}``).
        data: the checkpoint's ``config["data"]`` (``img_size``, ``num_classes``, ``roi_size``/``patch_size``, ...).
        plan: the checkpoint's ``config["plan"]`` when it records one, else ``None``.
        roi_size: window size; ``None``: the model's default for ``data`` (as ``resfu-med infer``).
        overlap: window overlap in ``[0, 1)``.
        sw_batch_size: slices (2D) or windows (3D) per network call (``resfu-med infer --batch-size``).
        tta: mirror test-time augmentation.
        resample: 2D: zoom slices to the training size and back (``False``: ``resfu-med infer --no-resample``).

    Raises:
        ValueError: settings that are not plain data, an unknown model, or invalid window settings.
    """

    def __init__(
        self,
        model: Mapping[str, Any],
        data: Mapping[str, Any],
        plan: Mapping[str, Any] | None = None,
        roi_size: Sequence[int] | None = None,
        overlap: float = 0.25,
        sw_batch_size: int = 8,
        tta: bool = False,
        resample: bool = True,
    ) -> None:
        super().__init__()
        sections = {"model": model, "data": data, "plan": plan}
        for name, value in sections.items():
            if value is not None and not isinstance(value, Mapping):
                raise ValueError(f"EngineInferer: {name} must be a mapping, got {type(value).__name__}")
            check_plain_data(value, "EngineInferer", name, error=ValueError)
        spec = get_model_spec(model.get("name"))  # InputError (a ValueError) names the registered models
        self.config = {k: copy.deepcopy(dict(v)) for k, v in sections.items() if v is not None}
        window = list(roi_size) if roi_size is not None else list(spec.default_roi(self.config["data"]))
        problem = inferer_problem(window, overlap, "gaussian", sw_batch_size)
        if problem is not None:
            raise ValueError(f"EngineInferer: {problem[0]} {problem[1]}")
        if len(window) not in (1, spec.spatial_dims):
            raise ValueError(f"EngineInferer: roi_size needs 1 or {spec.spatial_dims} sizes, got {window}")
        self.roi_size = None if roi_size is None else window
        self.overlap = float(overlap)
        self.sw_batch_size = int(sw_batch_size)
        self.tta = bool(tta)
        self.resample = bool(resample)

    def __call__(self, inputs: torch.Tensor, network: torch.nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Labels ``(1, 1, Z, Y, X)`` of one volume ``(1, 1, Z, Y, X)``.

        Raises:
            ValueError: an input that is not one single-channel 3D volume.
        """
        if inputs.ndim != 5 or inputs.shape[0] != 1 or inputs.shape[1] != 1:
            raise ValueError(f"EngineInferer: expected one single-channel (Z, Y, X) volume of shape "
                             f"(1, 1, Z, Y, X), got {tuple(inputs.shape)}")
        volume = np.ascontiguousarray(torch.as_tensor(inputs[0, 0]).detach().cpu().numpy(), dtype=np.float32)
        roi = None if self.roi_size is None else (self.roi_size[0] if len(self.roi_size) == 1 else tuple(self.roi_size))
        labels, _ = predict_volume(network, volume, self.config, device=inputs.device, batch_size=self.sw_batch_size,
                                   roi=roi, overlap=self.overlap, tta=self.tta, resample=self.resample)
        out = torch.from_numpy(labels.astype(np.float32))[None, None]
        return convert_to_dst_type(out, inputs, device=inputs.device)[0]
