"""Stand-in models and volumes for the evaluate/infer tests: predictions we know in advance.

:class:`BinModel` predicts, voxel by voxel, the class nearest to ``x * (C - 1)`` — so the expected segmentation of
any image is ``round(x * (C - 1))`` whatever the windowing, blending or batching. :class:`Threshold` is its
two-class form (class 1 where the image exceeds 0.5), :func:`window_spy` records the slices and windows that
the sliding-window inference of :mod:`resfu_med.engine.inferer` sees, and :func:`write_msd_task` writes a tiny raw MSD
task.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import torch


class BinModel(torch.nn.Module):
    def __init__(self, num_classes: int = 4, spatial_dims: int = 2, out_channels: int | None = None):
        super().__init__()
        self.num_classes = num_classes
        self.spatial_dims = spatial_dims
        self.out_channels = out_channels or num_classes
        self.scale = torch.nn.Parameter(torch.tensor(50.0))

    def forward(self, x):
        assert x.ndim == 2 + self.spatial_dims and x.shape[1] == 1
        c = torch.arange(self.out_channels, dtype=x.dtype).view(1, -1, *([1] * self.spatial_dims))
        return -self.scale * (x * (self.num_classes - 1) - c) ** 2


class Threshold(torch.nn.Module):
    """A pointwise 2-class model (2D or 3D): class 1 where the image exceeds 0.5 (its answer does not depend on the
    window)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x), 20.0 * (x - 0.5)], dim=1)


def window_spy(monkeypatch) -> list:
    """Record ``(input's spatial shape ((H, W) or (Z, Y, X)), window)`` of every call of the inferer's
    ``sliding_window_inference``; the list fills as the inference runs."""
    import resfu_med.engine.inferer as inferer

    seen: list = []
    real = inferer.sliding_window_inference

    def spy(x, roi, *args, **kwargs):
        seen.append((tuple(x.shape[2:]), tuple(roi)))
        return real(x, roi, *args, **kwargs)

    monkeypatch.setattr(inferer, "sliding_window_inference", spy)
    return seen


def expected_labels(x: np.ndarray, num_classes: int) -> np.ndarray:
    return np.clip(np.floor(x * (num_classes - 1) + 0.5), 0, num_classes - 1).astype(np.uint8)


def config(num_classes=4, img_size=16, name="transunet", intensity=None, **data):
    return {
        "model": {"name": name, "kwargs": {"spatial_dims": 3} if name == "unet3d" else {}},
        "data": {"dataset": "standin", "num_classes": num_classes, "img_size": img_size,
                 "label_names": [f"c{i}" for i in range(1, num_classes)], "intensity": intensity, **data},
    }


def oblique_affine() -> np.ndarray:
    """A non-RAS (x flipped), rotated, anisotropic affine."""
    t = np.deg2rad(17.0)
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    rot = rot @ np.array([[1, 0, 0], [0, np.cos(0.3), -np.sin(0.3)], [0, np.sin(0.3), np.cos(0.3)]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([-0.8, 0.7, 2.5])
    aff[:3, 3] = [120.0, -40.5, 33.0]
    return aff


def smooth_volume(shape, seed=0) -> np.ndarray:
    """Values in [0, 1] with large constant blocks (so zooming changes only block borders)."""
    rng = np.random.default_rng(seed)
    vol = np.zeros(shape, np.float32)
    for _ in range(6):
        lo = [rng.integers(0, s - 2) for s in shape]
        hi = [rng.integers(l + 2, s + 1) for l, s in zip(lo, shape)]
        vol[tuple(slice(a, b) for a, b in zip(lo, hi))] = rng.choice([0.33, 0.67, 1.0])
    return vol


def save_nifti(path, data_xyz, affine=None, dtype=np.float32, descrip=b"standin"):
    img = nib.Nifti1Image(np.asarray(data_xyz, dtype=dtype), oblique_affine() if affine is None else affine)
    img.header["descrip"] = descrip
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=2)
    nib.save(img, str(path))
    return path


def write_msd_task(root, n: int = 4, shape: tuple = (40, 36, 5), slice_spacings: tuple = (3.0,)):
    """A raw MSD task of ``n`` CT cases (NIfTI ``(x, y, z)`` = ``shape``, classes a and b as two boxes through every
    slice) at 0.7 × 1.1 mm in-plane (anisotropic: the 2D plan's spacing is (1.1, 0.7) in (Y, X)); case ``i``'s slice
    spacing is ``slice_spacings[i % len(slice_spacings)]``. Returns ``root``."""
    import json

    rng = np.random.default_rng(0)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for i in range(n):
        lab = np.zeros(shape, np.uint8)
        lab[4:14, 4:14] = 1
        lab[20:34, 10:30] = 2
        hu = (lab.astype(np.int16) * 120 - 60 + rng.integers(-20, 20, shape)).astype(np.int16)
        aff = np.diag([0.7, 1.1, slice_spacings[i % len(slice_spacings)], 1.0])
        for folder, arr in (("imagesTr", hu), ("labelsTr", lab)):
            nib.save(nib.Nifti1Image(arr, aff), str(root / folder / f"c_{i:03d}.nii.gz"))
        training.append({"image": f"./imagesTr/c_{i:03d}.nii.gz", "label": f"./labelsTr/c_{i:03d}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({
        "name": "tiny", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "a", "2": "b"},
        "training": training}))
    return root


#: The smallest U-Net the training CLI accepts for end-to-end tests (bilinear, 8 channels everywhere).
TINY_UNET = {"model": {"name": "unet", "upsampler": "bilinear", "kwargs": {"features": [8, 8, 8, 8, 8, 8]}},
             "data": {"num_workers": 0}, "train": {"batch_size": 2}}


def train_tiny_msd(tmp_path, task, max_iters: int):
    """``resfu-med train --dataset msd`` of :data:`TINY_UNET` on ``task`` for ``max_iters`` iterations with one torch
    thread (restored afterwards); returns the run folder ``tmp_path / "run"``."""
    import json

    import torch

    from resfu_med.cli import main

    (tmp_path / "tiny.json").write_text(json.dumps(TINY_UNET))
    run = tmp_path / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", "--dataset", "msd", "--data-root", str(task), "--config", str(tmp_path / "tiny.json"),
                     "--max-iters", str(max_iters), "--device", "cpu", "--no-progress", "--output", str(run)]) == 0
    finally:
        torch.set_num_threads(threads)
    return run
