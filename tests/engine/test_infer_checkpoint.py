"""``resfu-med infer`` with real checkpoints (train layer's save/load): good, other architecture, other class count,
corrupt. Stand-in networks are registered with the model factory so the expected labels are known."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from eval_standins import BinModel, expected_labels, save_nifti, smooth_volume

from resfu_med.cli import main

checkpoint = pytest.importorskip("resfu_med.engine.checkpoint")
registry = pytest.importorskip("resfu_med.networks.model_registry")


class BinConvModel(BinModel):
    """Same prediction, one more weight: a checkpoint of this is 'another architecture' for BinModel."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.extra = torch.nn.Conv2d(1, 1, 1)


@pytest.fixture(autouse=True)
def registered(monkeypatch):
    for name, cls in (("eval_bin", BinModel), ("eval_binconv", BinConvModel)):
        monkeypatch.setitem(registry.MODELS, name, registry.ModelSpec(name, cls, classes_key="num_classes"))


def write_ckpt(path, model, name="eval_bin", num_classes=3, data_classes=None):
    cfg = {"model": {"name": name, "kwargs": {"num_classes": num_classes}},
           "data": {"dataset": "standin", "num_classes": data_classes or num_classes, "img_size": 16,
                    "label_names": [f"c{i}" for i in range(1, (data_classes or num_classes))], "intensity": None}}
    checkpoint.save_checkpoint(path, {"model": model.state_dict(), "optimizer": {}, "scheduler": {}, "scaler": {},
                                      "epoch": 0, "iteration": 0, "rng": {}, "best_metric": 0.0, "config": cfg})
    return path


def run_infer(tmp_path, ckpt, capsys):
    data = np.transpose(smooth_volume((3, 16, 16), seed=9), (2, 1, 0))
    src = save_nifti(tmp_path / "scan.nii.gz", data)
    rc = main(["infer", "-i", str(src), "-o", str(tmp_path / "out"), "--checkpoint", str(ckpt),
               "--no-progress"])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    return rc, errors, data


def test_good_checkpoint(tmp_path, capsys):
    ckpt = write_ckpt(tmp_path / "best.pt", BinModel(num_classes=3))
    rc, errors, data = run_infer(tmp_path, ckpt, capsys)
    assert rc == 0 and not errors
    seg = np.asarray(nib.load(str(tmp_path / "out" / "scan_seg.nii.gz")).dataobj)
    np.testing.assert_array_equal(seg, expected_labels(data, 3))


def test_other_architecture(tmp_path, capsys):
    ckpt = write_ckpt(tmp_path / "best.pt", BinConvModel(num_classes=3), name="eval_bin")
    rc, errors, _ = run_infer(tmp_path, ckpt, capsys)
    assert rc == 2 and len(errors) == 1 and "best.pt" in errors[0] and "does not match" in errors[0]


def test_other_class_count(tmp_path, capsys):
    ckpt = write_ckpt(tmp_path / "best.pt", BinModel(num_classes=3), num_classes=3, data_classes=5)
    rc, errors, _ = run_infer(tmp_path, ckpt, capsys)
    assert rc == 2 and len(errors) == 1 and "best.pt" in errors[0] and "classes" in errors[0]


def test_corrupt_checkpoint(tmp_path, capsys):
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(b"\x80\x04 definitely not a checkpoint")
    rc, errors, _ = run_infer(tmp_path, ckpt, capsys)
    assert rc == 2 and len(errors) == 1 and "corrupt" in errors[0]


@pytest.mark.parametrize("suffix", [".mha", ".nrrd", ".nii"])
def test_rerun_recognises_every_format_infer_writes(tmp_path, suffix):
    # infer writes <name>_seg<suffix> in the input's format; a re-run with --overwrite into the same folder must know
    # those files as its own (it used to recognise only _seg.nii.gz / _prob.nii.gz and refused .mha/.nrrd outputs).
    import SimpleITK as sitk

    ckpt = write_ckpt(tmp_path / "ckpt.pt", BinModel(num_classes=3))
    scans = tmp_path / "scans"
    scans.mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(smooth_volume((3, 16, 16)).astype(np.float32)), str(scans / f"a{suffix}"))
    argv = ["infer", "-i", str(scans), "-o", str(tmp_path / "out"), "--checkpoint", str(ckpt), "--save-probabilities"]
    assert main(argv) == 0
    written = sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith("."))
    out_suffix = ".nii.gz" if suffix == ".nii" else suffix  # NIfTI comes back compressed (docs/evaluation.md)
    assert written == [f"a_prob{out_suffix}", f"a_seg{out_suffix}"]
    assert main(argv + ["--continue-prediction"]) == 0  # a re-run into its own folder skips the finished case
    assert main(argv + ["--overwrite"]) == 0
