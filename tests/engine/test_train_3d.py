"""``resfu-med train --model unet3d``: a 3D ReSFU BasicUNet trained on demo patches, resumed exactly, and run by
``resfu-med infer`` on a NIfTI whose affine the segmentation keeps."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from resfu_med.cli import main
from resfu_med.engine.checkpoint import load_checkpoint, load_model

BASE = ["--dataset", "demo", "--model", "unet3d", "--patch-size", "16", "32", "32", "--batch-size", "2",
        "--patches-per-volume", "2", "--epochs", "2", "--no-progress", "--num-workers", "0"]


@pytest.fixture()
def batches(monkeypatch):
    """Record the shape of every training batch the loop steps on."""
    from resfu_med.engine.trainer import Trainer

    seen: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    step = Trainer._step

    def recording(self, batch):
        seen.append((tuple(batch["image"].shape), tuple(batch["label"].shape)))
        return step(self, batch)

    monkeypatch.setattr(Trainer, "_step", recording)
    return seen


def test_unet3d_trains_on_patches_and_resumes_exactly(tmp_path, capsys, batches):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(["train", *BASE, "--max-iters", "2", "--output", str(straight)]) == 0
    assert "unet3d (resfu) on demo (8 volumes, 9 classes), 8 iterations (2 epochs of 4)" in capsys.readouterr().err
    # 2 volumes per batch x 2 patches per volume, (Z, Y, X) = the patch size, one channel
    assert batches == [((4, 1, 16, 32, 32), (4, 1, 16, 32, 32))] * 2
    ckpt = load_checkpoint(straight / "last.pt")
    assert ckpt["iteration"] == 2 and ckpt["config"]["data"]["patch_size"] == [16, 32, 32]
    model, cfg = load_model(straight / "last.pt")
    convs3d = [m for m in model.modules() if isinstance(m, torch.nn.Conv3d)]
    upsamplers = [type(m).__name__ for m in model.modules() if type(m).__name__ == "ReSFU"]
    # ReSFU at the three lower steps, MONAI's transposed convolution at full resolution (docs/networks.md)
    assert convs3d and len(upsamplers) == 3 and cfg["model"]["name"] == "unet3d"
    assert cfg["model"]["kwargs"]["final_upsampler"] == "deconv"

    # stop after 1 iteration, resume to 2: the same weights as the uninterrupted run (patches are seeded per sample)
    assert main(["train", *BASE, "--max-iters", "1", "--output", str(split)]) == 0
    assert main(["train", "--resume", "--max-iters", "2", "--output", str(split), "--no-progress"]) == 0
    a, b = ckpt["model"], load_checkpoint(split / "last.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_unet3d_checkpoint_infers_a_nifti_keeping_its_affine(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *BASE, "--max-iters", "1", "--output", str(run)]) == 0
    affine = np.array([[-2.7, -0.2, 0.0, 170.0], [0.2, -2.7, 0.0, 150.0], [0.0, 0.0, 4.7, -70.0], [0, 0, 0, 1.0]])
    hu = np.random.default_rng(0).normal(40, 60, size=(40, 36, 20)).astype(np.int16)  # (x, y, z), not patch-sized
    src = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(hu, affine), str(src))
    assert main(["infer", "-i", str(src), "-o", str(tmp_path / "seg"), "--checkpoint", str(run / "last.pt"),
                 "--device", "cpu", "--no-progress"]) == 0
    seg = nib.load(str(tmp_path / "seg" / "scan_seg.nii.gz"))
    assert seg.shape == hu.shape and np.allclose(seg.affine, affine)
    labels = np.asarray(seg.dataobj)
    assert labels.dtype == np.uint8 and labels.max() <= 8


@pytest.mark.parametrize("patch, words", [(["24", "32", "32"], "multiple of 16"), (["0", "32", "32"], "positive")])
def test_unet3d_bad_patch_size_is_one_line(tmp_path, capsys, patch, words):
    argv = ["train", "--dataset", "demo", "--model", "unet3d", "--patch-size", *patch, "--output", str(tmp_path / "r")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("resfu-med train: error: --patch-size") and words in err[0], err
    assert not (tmp_path / "r").exists()
