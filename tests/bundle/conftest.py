"""Fixtures of the bundle tests."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from bundle_helpers import make_checkpoint, use_stand_in


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny networks: one intra-op thread avoids OpenMP oversubscription on shared CI cores (10x faster here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def stand_in_targets(monkeypatch):
    """Point the ``unet`` / ``unet3d`` model names at MONAI's BasicUNet."""
    use_stand_in(monkeypatch)


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
    vol = rng.normal(50, 200, (40, 37, 11)).astype(np.float32)  # 11 slices: a batch of 8 and one of 3
    affine = np.array([[0.0, -0.8, 0.0, 10.0], [0.7, 0.0, 0.0, -5.0], [0.0, 0.0, 2.5, 3.0], [0.0, 0.0, 0.0, 1.0]])
    nib.save(nib.Nifti1Image(vol, affine), folder / "case1.nii.gz")
    return folder, folder / "case1.nii.gz"
