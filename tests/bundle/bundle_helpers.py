"""Helpers of the bundle tests: small checkpoints in the engine's format (docs/api.md)."""

from __future__ import annotations

import torch

# MONAI's BasicUNet stands in for resfu-med's networks where a test is about the bundle machinery, not the network.
STAND_IN = "monai.networks.nets.BasicUNet"
TINY_UNET = {"in_channels": 1, "out_channels": 3, "features": [4, 4, 8, 8, 16, 4]}
DATA_CFG = {
    "dataset": "demo",
    "num_classes": 3,
    "label_names": ["liver", "spleen"],
    "intensity": {"kind": "ct", "a_min": -125.0, "a_max": 275.0},
    "img_size": 32,
    "modality": "CT",
}


def use_stand_in(monkeypatch) -> None:
    """Point the ``unet`` / ``unet3d`` entries of the model registry at MONAI's BasicUNet (``STAND_IN``)."""
    import dataclasses

    from monai.networks.nets import BasicUNet

    from resfu_med.networks.model_registry import MODELS

    for name in ("unet", "unet3d"):
        monkeypatch.setitem(MODELS, name, dataclasses.replace(MODELS[name], constructor=BasicUNet, target=STAND_IN))


def make_checkpoint(path, spatial_dims: int = 2, kwargs: dict | None = None, data: dict | None = None,
                    state: dict | None = None) -> tuple:
    """Write a checkpoint with ``resfu_med.engine.checkpoint.save_checkpoint``; returns ``(path, network)``."""
    from monai.networks.nets import BasicUNet

    from resfu_med.engine.checkpoint import capture_rng, save_checkpoint

    kwargs = dict(TINY_UNET if kwargs is None else kwargs)
    torch.manual_seed(1)
    net = BasicUNet(spatial_dims=spatial_dims, **kwargs).eval()
    config = {
        "model": {"name": "unet" if spatial_dims == 2 else "unet3d", "kwargs": kwargs},
        "data": dict(DATA_CFG if data is None else data),
        "train": {"max_iters": 2, "base_lr": 0.01, "batch_size": 2},
    }
    save_checkpoint(path, {"model": net.state_dict() if state is None else state, "optimizer": {}, "scheduler": {},
                           "scaler": {}, "epoch": 1, "iteration": 2, "rng": capture_rng(), "best_metric": 0.25,
                           "config": config})
    return path, net
