"""The user's label values end to end: an MSD dataset labelled {0, 1, 2, 4} trains on classes 0..3 and every output
(``infer``, ``evaluate --save-predictions``, an exported bundle run by MONAI) holds only {0, 1, 2, 4}."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from eval_standins import BinModel, config, train_tiny_msd
from resfu_med.cli import main
from resfu_med.data.labels import apply_label_values, label_values_from_map, output_values
from resfu_med.engine.predictor import InferOptions, infer_file

VALUES = {0, 1, 2, 4}


def test_label_map_helpers():
    assert label_values_from_map({"0": 0, "1": 1, "2": 2, "4": 3}, 4) == [0, 1, 2, 4]
    assert label_values_from_map({8: 1, 4: 2, 3: 3, 2: 4, 6: 5, 11: 6, 1: 7, 7: 8}, 9) == [0, 8, 4, 3, 2, 6, 11, 1, 7]
    data = {"num_classes": 4, "label_values": [0, 1, 2, 4]}
    assert output_values(data) == [0, 1, 2, 4] and output_values({"num_classes": 4}) is None
    np.testing.assert_array_equal(apply_label_values(np.array([0, 3, 1]), [0, 1, 2, 4], 4), [0, 4, 1])
    with pytest.raises(ValueError):
        output_values({"num_classes": 4, "label_values": [0, 1, 1, 4]})


def test_infer_writes_dataset_values_in_input_format(tmp_path):
    """A stand-in model that predicts class 3 must write 4; the output keeps the .mha format and geometry."""
    vol = np.linspace(0, 1, 4 * 8 * 8, dtype=np.float32).reshape(4, 8, 8)
    img = sitk.GetImageFromArray(vol)
    img.SetSpacing((0.8, 0.8, 3.0))
    sitk.WriteImage(img, str(tmp_path / "scan.mha"))
    cfg = config(4, img_size=8)
    cfg["data"]["label_values"] = [0, 1, 2, 4]
    infer_file(tmp_path / "scan.mha", tmp_path, BinModel(4).eval(), cfg, InferOptions(progress=False))
    seg = sitk.ReadImage(str(tmp_path / "scan_seg.mha"))
    values = set(np.unique(sitk.GetArrayFromImage(seg)).tolist())
    assert values == VALUES
    assert seg.GetSpacing() == img.GetSpacing()


def _msd(root, n=5, shape=(32, 32, 6)):
    rng = np.random.default_rng(0)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for i in range(n):
        lab = np.zeros(shape, np.uint8)
        lab[4:14, 4:14] = 1
        lab[16:28, 6:20] = 2
        lab[8:20, 20:30] = 4
        hu = (lab.astype(np.int16) * 120 - 60 + rng.integers(-20, 20, shape)).astype(np.int16)
        aff = np.diag([0.9, 0.9, 2.0, 1.0])
        nib.save(nib.Nifti1Image(hu, aff), str(root / "imagesTr" / f"brats_{i:03d}.nii.gz"))
        nib.save(nib.Nifti1Image(lab, aff), str(root / "labelsTr" / f"brats_{i:03d}.nii.gz"))
        training.append({"image": f"./imagesTr/brats_{i:03d}.nii.gz", "label": f"./labelsTr/brats_{i:03d}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({
        "name": "tiny-brats", "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "edema", "2": "non-enhancing", "4": "enhancing"}, "training": training}))
    return root


@pytest.mark.slow
def test_msd_labels_0124_come_back_from_infer_evaluate_and_bundle(tmp_path, monkeypatch):
    monkeypatch.setenv("RESFU_MED_HOME", str(tmp_path / "home"))
    task = _msd(tmp_path / "Task")
    run = train_tiny_msd(tmp_path, task, max_iters=20)
    assert (run / "best.pt").is_file() and (run / "history.json").is_file() and (run / "train.log").is_file()
    ckpt = torch.load(run / "best.pt", map_location="cpu", weights_only=True)
    assert ckpt["config"]["data"]["label_values"] == [0, 1, 2, 4]
    assert ckpt["config"]["data"]["label_names"] == ["edema", "non-enhancing", "enhancing"]

    assert main(["infer", "-i", str(task / "imagesTr"), "-o", str(tmp_path / "seg"), "--checkpoint",
                 str(run / "best.pt"), "--device", "cpu", "--no-progress"]) == 0
    segs = sorted((tmp_path / "seg").glob("*_seg.nii.gz"))
    assert len(segs) == 5
    found = set().union(*(np.unique(np.asarray(nib.load(str(s)).dataobj)).tolist() for s in segs))
    assert found <= VALUES and len(found) > 1, found

    # evaluate: no --data-root (the checkpoint's is used), class names in the tables, raw values in the predictions
    assert main(["evaluate", "--checkpoint", str(run / "best.pt"), "--output", str(tmp_path / "ev"),
                 "--save-predictions", "--device", "cpu", "--no-progress"]) == 0
    doc = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert [c["name"] for c in doc["reports"]["transunet"]["classes"]] == ["edema", "non-enhancing", "enhancing"]
    preds = list((tmp_path / "ev" / "predictions").glob("*_pred.nii.gz"))
    assert preds and set(np.unique(np.asarray(nib.load(str(preds[0])).dataobj)).tolist()) <= VALUES

    bundle = tmp_path / "bundle"
    assert main(["export-bundle", "--checkpoint", str(run / "best.pt"), "--output", str(bundle),
                 "--no-torchscript", "--metrics", str(tmp_path / "ev" / "metrics.json")]) == 0
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert [v["value"] for v in meta["label_values"].values()] == [0, 1, 2, 4]
    assert meta["eval_metrics"]  # evaluate's metrics.json fills eval_metrics
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file",
                           str(bundle / "configs" / "inference.json"), "--bundle_root", str(bundle),
                           "--dataset_dir", str(task / "imagesTr"), "--output_dir", str(tmp_path / "bundle_out")],
                          cwd=elsewhere, capture_output=True, text=True, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    outs = sorted((tmp_path / "bundle_out").glob("*_seg.nii.gz"))
    assert len(outs) == 5
    bundle_found = set().union(*(np.unique(np.asarray(nib.load(str(s)).dataobj)).tolist() for s in outs))
    assert bundle_found <= VALUES and len(bundle_found) > 1, bundle_found
    np.testing.assert_array_equal(np.asarray(nib.load(str(outs[0])).dataobj), np.asarray(nib.load(str(segs[0])).dataobj))

    # monai.bundle.load from another working directory: network_def built, model.pt loaded
    from monai.bundle import load

    monkeypatch.chdir(elsewhere)
    net = load("bundle", bundle_dir=str(tmp_path))
    assert isinstance(net, torch.nn.Module) and sum(p.numel() for p in net.parameters()) > 0
