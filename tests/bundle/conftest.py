"""Fixtures of the bundle tests: small checkpoints in the engine's format (docs/contracts.md)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import resfu_med.bundle.configs as bundle_configs

# MONAI's BasicUNet stands in for resfu-med's networks where a test is about the bundle machinery, not the network.
STAND_IN = "monai.networks.nets.BasicUNet"
TINY_UNET = {"in_channels": 1, "out_channels": 3, "features": [4, 4, 8, 8, 16, 4]}
DATA_CFG = {
    "dataset": "demo",
    "num_classes": 3,
    "label_names": ["liver", "spleen"],
    "intensity": {"kind": "ct", "a_min": -125, "a_max": 275},
    "img_size": 32,
    "modality": "CT",
}


@pytest.fixture
def stand_in_targets(monkeypatch):
    """Point the ``unet`` / ``unet3d`` model names at MONAI's BasicUNet."""
    monkeypatch.setitem(bundle_configs.NETWORK_TARGETS, "unet", (STAND_IN, 2))
    monkeypatch.setitem(bundle_configs.NETWORK_TARGETS, "unet3d", (STAND_IN, 3))


def make_checkpoint(path, spatial_dims: int = 2, kwargs: dict | None = None, data: dict | None = None,
                    state: dict | None = None) -> tuple:
    """Write a checkpoint dict as ``resfu-med train`` does; returns ``(path, network)``."""
    from monai.networks.nets import BasicUNet

    kwargs = dict(TINY_UNET if kwargs is None else kwargs)
    torch.manual_seed(1)
    net = BasicUNet(spatial_dims=spatial_dims, **kwargs).eval()
    config = {
        "model": {"name": "unet" if spatial_dims == 2 else "unet3d", "kwargs": kwargs},
        "data": dict(DATA_CFG if data is None else data),
        "train": {"max_iters": 2, "base_lr": 0.01, "batch_size": 2},
    }
    torch.save({"model": net.state_dict() if state is None else state, "optimizer": {}, "epoch": 1,
                "iteration": 2, "best_metric": 0.25, "config": config}, path)
    return path, net


@pytest.fixture
def checkpoint(tmp_path, stand_in_targets):
    """A tiny 2D checkpoint (stand-in network) and its network."""
    return make_checkpoint(tmp_path / "ckpt.pt")


@pytest.fixture
def ct_volume(tmp_path):
    """A small CT-like NIfTI with an oblique, permuted affine; returns its folder and the file."""
    import nibabel as nib

    folder = tmp_path / "scans"
    folder.mkdir()
    rng = np.random.default_rng(0)
    vol = rng.normal(50, 200, (40, 37, 5)).astype(np.float32)
    affine = np.array([[0.0, -0.8, 0.0, 10.0], [0.7, 0.0, 0.0, -5.0], [0.0, 0.0, 2.5, 3.0], [0.0, 0.0, 0.0, 1.0]])
    nib.save(nib.Nifti1Image(vol, affine), folder / "case1.nii.gz")
    return folder, folder / "case1.nii.gz"
