"""The plan pipeline end to end on a tiny MSD task: prepare writes plans.json, ``train`` (msd's default pipeline) trains
on native-resolution patches of the 2D plan and stores that plan in the checkpoint, and ``infer`` and the exported
bundle apply exactly it (Gaussian sliding windows at the planned spacing, labels on the image's own grid). The quick
preset uses the plan pipeline and says its exact iteration budget before training."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from eval_standins import train_tiny_msd, write_msd_task

from resfu_med.cli import main
from resfu_med.engine.checkpoint import load_checkpoint



def _train_and_infer(tmp_path, monkeypatch):
    monkeypatch.setenv("RESFU_MED_HOME", str(tmp_path / "home"))
    task = write_msd_task(tmp_path / "Task")
    run = train_tiny_msd(tmp_path, task, max_iters=6)
    data = load_checkpoint(run / "last.pt")["config"]["data"]
    assert data["pipeline"] == "plan"
    plan = data["plan"]
    assert plan["spacing"] == pytest.approx([1.1, 0.7]) and plan["patch_size"] == [48, 48]  # (Y, X) = (36, 40) rounded up to 16
    assert data["img_size"] == 48
    assert main(["infer", "-i", str(task / "imagesTr"), "-o", str(tmp_path / "seg"), "--checkpoint",
                 str(run / "last.pt"), "--device", "cpu", "--no-progress"]) == 0
    seg = nib.load(str(tmp_path / "seg" / "c_000_seg.nii.gz"))
    assert seg.shape == (40, 36, 5) and np.allclose(seg.affine, np.diag([0.7, 1.1, 3.0, 1.0]))
    return task, run, seg


@pytest.mark.slow
def test_plan_pipeline_trains_stores_and_applies_the_plan(tmp_path, monkeypatch):
    _train_and_infer(tmp_path, monkeypatch)


@pytest.mark.slow
def test_plan_pipeline_bundle_applies_the_plan(tmp_path, monkeypatch):
    task, run, seg = _train_and_infer(tmp_path, monkeypatch)


    # the bundle records the checkpoint's data section (plan included) and runs the same inference: same labels
    # (every case here is at the planned spacing; a bundle input at another spacing needs the spacing passed on)
    bundle = tmp_path / "bundle"
    assert main(["export-bundle", "--checkpoint", str(run / "last.pt"), "--output", str(bundle),
                 "--no-torchscript"]) == 0
    inference = json.loads((bundle / "configs" / "inference.json").read_text())
    assert '"pipeline": "plan"' in json.dumps(inference) and '"patch_size": [48, 48]' in json.dumps(inference)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file",
                           str(bundle / "configs" / "inference.json"), "--bundle_root", str(bundle),
                           "--dataset_dir", str(task / "imagesTr"), "--output_dir", str(tmp_path / "bundle_out")],
                          cwd=tmp_path, capture_output=True, text=True, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = sorted((tmp_path / "bundle_out").glob("c_000*_seg.nii.gz"))[0]
    np.testing.assert_array_equal(np.asarray(nib.load(str(out)).dataobj), np.asarray(seg.dataobj))


@pytest.mark.slow
def test_quick_preset_trains_the_plan_for_its_exact_budget(tmp_path, monkeypatch, capsys):
    from resfu_med.engine.config import RECIPES

    monkeypatch.setenv("RESFU_MED_HOME", str(tmp_path / "home"))
    task = write_msd_task(tmp_path / "Task", n=2)
    (tmp_path / "tiny.json").write_text(json.dumps({"model": {"kwargs": {"features": [8, 8, 8, 8, 8, 8]}}}))
    common = ["--dataset", "msd", "--data-root", str(task), "--preset", "quick",
              "--upsampler", "bilinear", "--config", str(tmp_path / "tiny.json"), "--device", "cpu", "--no-progress"]
    threads = torch.get_num_threads()
    try:
        assert main(["train", *common, "--max-iters", "7", "--output", str(tmp_path / "quick")]) == 0
        budget = RECIPES["quick"]["train"]["iterations"]
        cfg = load_checkpoint(tmp_path / "quick" / "last.pt")["config"]
        assert cfg["data"]["pipeline"] == "plan" and cfg["data"]["plan"]["patch_size"] == [48, 48]
        err = capsys.readouterr().err
        # 5 training slices, 2 iterations per epoch at batch 4: still exactly the recipe's budget, capped here
        assert f"{budget} iterations ({budget // 2} epochs of 2)" in err
        assert f"7 iterations (7 to go), set by train.iterations {budget} (exactly, whatever the dataset's size" in err
        assert "stopping at train.max_iters 7" in err
        assert "s per iteration (measured over iterations 2-6 of this session)" in err
        # --epochs with the quick preset applies (the recipe's iteration budget yields): 1 epoch of 2 iterations
        assert main(["train", *common, "--epochs", "1", "--output", str(tmp_path / "epochs")]) == 0
        assert load_checkpoint(tmp_path / "epochs" / "last.pt")["iteration"] == 2
        assert "2 iterations (2 to go), set by train.epochs 1 x 2 iterations per epoch" in capsys.readouterr().err
    finally:
        torch.set_num_threads(threads)
