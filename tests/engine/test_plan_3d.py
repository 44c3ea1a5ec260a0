"""The plan pipeline for 3D models (``data.pipeline: plan``, msd's default): training volumes are resampled to the 3D
plan's spacing before their patches are cut, and inference resamples each scan to that spacing, predicts it by
Gaussian sliding windows there and returns labels on the scan's own grid; a bad recorded 3D plan is one line."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from eval_standins import Threshold, window_spy, write_msd_task

from resfu_med.cli import main
from resfu_med.data import get_patch_transforms
from resfu_med.engine.checkpoint import load_checkpoint
from resfu_med.engine.inferer import predict_volume
from resfu_med.errors import CheckpointError

PLAN3D = {"spacing": [1.0, 1.0, 1.0], "patch_size": [16, 16, 16]}
CONFIG = {"model": {"name": "unet3d"},
          "data": {"pipeline": "plan", "plan": PLAN3D, "num_classes": 2, "patch_size": [16, 16, 16]}}


def _box(shape):
    image = np.zeros(shape, np.float32)
    image[2:8, 4:20, 6:16] = 1.0
    return image


def test_training_volumes_are_resampled_to_the_plan_spacing_before_the_patches():
    image, label = _box((10, 24, 20)), (_box((10, 24, 20)) > 0).astype(np.uint8)
    xform = get_patch_transforms("val", (16, 16, 16), target_spacing=(1.0, 1.0, 1.0),
                                 spacings={"a": (2.0, 0.5, 1.0)})
    out = xform({"image": image, "label": label, "case": "a"})
    # (10 x 2, 24 x 0.5, 20 x 1) = (20, 12, 20), Y padded to the 16 patch
    assert tuple(out["image"].shape) == (1, 20, 16, 20)
    assert set(np.unique(np.asarray(out["label"]))) == {0, 1}  # nearest: no new label values
    assert int(np.asarray(out["label"]).sum()) == 12 * 8 * 10  # the box, 6 x 16 x 10 voxels, at the new spacing
    # a case at the planned spacing (or unknown) is not touched
    same = xform({"image": image, "label": label, "case": "b"})
    assert tuple(same["image"].shape) == (1, 16, 24, 20)
    train = get_patch_transforms("train", (16, 16, 16), num_samples=2, target_spacing=(1.0, 1.0, 1.0),
                                 spacings={"a": (2.0, 0.5, 1.0)}, seed=0)
    patches = train({"image": image, "label": label, "case": "a"})
    assert [tuple(p["image"].shape) for p in patches] == [(1, 16, 16, 16)] * 2


@pytest.mark.parametrize("spacing", [(2.0, 0.5, 1.0), None])
def test_a_3d_plan_checkpoint_predicts_at_the_plan_spacing_on_the_image_grid(monkeypatch, spacing):
    seen = window_spy(monkeypatch)
    image = _box((10, 24, 20))
    labels, probs = predict_volume(Threshold().eval(), image, CONFIG, spacing=spacing, probabilities=True)
    assert labels.shape == image.shape and probs.shape == (2, *image.shape)
    grid = (20, 12, 20) if spacing else image.shape  # resampled to 1 mm (unknown spacing: taken as planned)
    assert all(shape[1:] == grid[1:] and roi == (16, 16, 16) for shape, roi in seen)
    assert max(shape[0] for shape, _ in seen) == min(grid[0], 16 + 8)  # a slab and its halo of the resampled volume
    truth = image > 0.5
    dice = 2 * (labels.astype(bool) & truth).sum() / (labels.sum() + truth.sum())
    assert dice > 0.95
    np.testing.assert_allclose(np.argwhere(labels).mean(0), np.argwhere(truth).mean(0), atol=0.5)


def test_target_spacing_needs_the_volumes_spacing():
    from resfu_med.engine.inferer import predict_volume_3d

    with pytest.raises(ValueError, match="needs the volume's spacing"):
        predict_volume_3d(Threshold(), _box((10, 24, 20)), 16, target_spacing=(1.0, 1.0, 1.0))


def test_a_bad_recorded_3d_plan_is_one_line():
    bad = {**CONFIG, "data": {**CONFIG["data"], "plan": {"spacing": [1.0, 1.0], "patch_size": [16, 16, 16]}}}
    with pytest.raises(CheckpointError, match=r"data.plan.spacing: expected 3 positive numbers"):
        predict_volume(Threshold(), _box((10, 24, 20)), bad)


@pytest.mark.slow
def test_unet3d_on_msd_trains_and_infers_at_the_3d_plan_spacing(tmp_path, monkeypatch):
    from resfu_med.engine.trainer import Trainer

    monkeypatch.setenv("RESFU_MED_HOME", str(tmp_path / "home"))
    # cases at 1.5 and 3 mm slices: the plan's z spacing is the training cases' median, the others are resampled
    task = write_msd_task(tmp_path / "Task", shape=(40, 36, 12), slice_spacings=(1.5, 3.0))
    seen = []
    step = Trainer.training_step
    monkeypatch.setattr(Trainer, "training_step", lambda self, b: seen.append(tuple(b["image"].shape)) or step(self, b))
    (tmp_path / "tiny.json").write_text(json.dumps({"model": {"kwargs": {"features": [4, 4, 4, 4, 4, 4]}},
                                                    "data": {"num_workers": 0}}))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", "--dataset", "msd", "--data-root", str(task), "--model", "unet3d", "--upsampler",
                     "bilinear", "--config", str(tmp_path / "tiny.json"), "--patch-size", "16", "32", "32",
                     "--batch-size", "1", "--patches-per-volume", "1", "--max-iters", "2", "--no-eval", "--device",
                     "cpu", "--no-progress", "--output", str(tmp_path / "run")]) == 0
    finally:
        torch.set_num_threads(threads)
    data = load_checkpoint(tmp_path / "run" / "last.pt")["config"]["data"]
    assert data["pipeline"] == "plan"
    plan = load_checkpoint(tmp_path / "run" / "last.pt")["config"]["plan"]["plans"]["3d"]
    assert data["plan"]["spacing"] == plan["spacing"] and data["plan"]["patch_size"] == [16, 32, 32]
    sz = data["plan"]["spacing"][0]
    assert data["plan"]["spacing"][1:] == pytest.approx([1.1, 0.7]) and sz in (pytest.approx(1.5), pytest.approx(3.0))
    assert seen == [(1, 1, 16, 32, 32)] * 2
    window = []
    monkeypatch.setattr("resfu_med.engine.inferer.predict_volume_3d", _recording(window))
    assert main(["infer", "-i", str(task / "imagesTr"), "-o", str(tmp_path / "seg"), "--checkpoint",
                 str(tmp_path / "run" / "last.pt"), "--device", "cpu", "--no-progress"]) == 0
    for i in range(4):
        own = 3.0 if i % 2 else 1.5
        assert window[i] == (round(12 * own / sz), 36, 40)  # (Z, Y, X) at the plan's spacing (6, 12 or 24 slices)
        seg = nib.load(str(tmp_path / "seg" / f"c_{i:03d}_seg.nii.gz"))
        assert seg.shape == (40, 36, 12)  # back on the scan's own grid and affine
        assert np.allclose(seg.affine, np.diag([0.7, 1.1, 3.0 if i % 2 else 1.5, 1.0]))


def _recording(window):
    import resfu_med.engine.inferer as inferer

    real = inferer.predict_volume_3d

    def record(model, image, *args, **kwargs):  # the grid the windows run on (not the call that resamples)
        if kwargs.get("target_spacing") is None:
            window.append(tuple(image.shape))
        return real(model, image, *args, **kwargs)

    return record


@pytest.mark.parametrize("model", ["unet3d", "unet"])
def test_the_trainer_resamples_each_training_case_from_its_own_spacing(tmp_path, monkeypatch, model):
    from resfu_med.data.patch_transforms import ResampleSliced, ResampleVolumed
    from resfu_med.engine.config import resolve_config
    from resfu_med.engine.preparation import complete_config
    from resfu_med.engine.trainer import Trainer

    monkeypatch.setenv("RESFU_MED_HOME", str(tmp_path / "home"))
    task = write_msd_task(tmp_path / "Task", shape=(40, 36, 12), slice_spacings=(1.5, 3.0))
    patch = {"patch_size": [16, 32, 32]} if model == "unet3d" else {}
    cfg = complete_config(resolve_config("msd", overrides={
        "data": {"root": str(task), "num_workers": 0, **patch},
        "model": {"name": model, "upsampler": "bilinear", "kwargs": {"features": [4] * 6}},
        "train": {"eval": False, "batch_size": 2}}))
    (tmp_path / "run").mkdir()
    data = Trainer(cfg, tmp_path / "run", progress=False).train_data.dataset
    resample = next(t for t in data.transform.transforms if isinstance(t, (ResampleVolumed, ResampleSliced)))
    assert isinstance(resample, ResampleVolumed if model == "unet3d" else ResampleSliced)
    cases = {str(item["case"]) for item in data.data}
    assert len(cases) == 3  # the training split
    for case in cases:  # every training case is resampled from its own spacing (raw affine: 0.7, 1.1, 1.5 or 3 mm)
        own = resample.spacings[case]
        assert own[-2:] == pytest.approx((1.1, 0.7))
        if model == "unet3d":
            assert own[0] == pytest.approx(3.0 if int(case[-1]) % 2 else 1.5)
