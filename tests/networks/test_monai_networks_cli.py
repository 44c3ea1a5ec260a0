"""``resfu-med train --model dynunet|swinunetr|unetr`` on the demo phantoms (2 iterations, slim widths), then
``infer`` (3D sliding window) on a NIfTI, ``export-bundle`` (and for DynUNet ``evaluate``), with no model-specific step; and the registry entries."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from resfu_med.cli import main
from resfu_med.engine.checkpoint import load_model
from resfu_med.networks import DynUNet, SwinUNETR, UNETR, dynunet_plan
from resfu_med.networks.model_registry import build_model, get_model_spec, model_kwargs

SLIM = {"embed_dim": 8, "pcdc_channels": 16, "compressor_channels": 16}
CASES = {
    # with deep supervision: the trainer weighs the stacked heads' losses (MONAI DeepSupervisionLoss); in-plane the
    # whole demo slice, so that evaluating the 4 demo test volumes takes a few windows each
    "dynunet": (DynUNet, ["32", "128", "128"], {"filters": [8, 8, 16, 16, 16, 16], "deep_supervision": True,
                                                 "deep_supr_num": 2}),
    # one side of 64: SwinUNETR's 1/32 bottleneck keeps more than one voxel, which instance norm needs to train
    "swinunetr": (SwinUNETR, ["32", "32", "64"], {"feature_size": 12, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1]}),
    "unetr": (UNETR, ["16", "32", "32"], {"feature_size": 8, "hidden_size": 24, "mlp_dim": 48, "num_heads": 2}),
}


def test_registry_entries_derive_patch_arguments():
    assert all(get_model_spec(n).spatial_dims == 3 for n in CASES)
    kw = model_kwargs("dynunet", 9, 96, "resfu", {"filters": [8, 8, 16, 16, 32]}, patch_size=[32, 96, 96])
    assert kw["strides"] == dynunet_plan([32, 96, 96])["strides"] == [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]]
    assert kw["out_channels"] == 9 and kw["in_channels"] == 1 and kw["upsampler"] == "resfu"
    assert model_kwargs("unetr", 4, 96, None, None, patch_size=[16, 32, 32])["img_size"] == [16, 32, 32]
    explicit = model_kwargs("unetr", 4, 96, None, {"img_size": [32, 32, 32]}, patch_size=[16, 32, 32])
    assert explicit["img_size"] == [32, 32, 32]  # the config's own kwargs win
    net = build_model({"name": "dynunet", "kwargs": kw})
    assert isinstance(net, DynUNet) and net.spatial_dims == 3


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_cli_train_infer_export(name, tmp_path, capsys):
    cls, patch, kwargs = CASES[name]
    config = tmp_path / "net.json"
    config.write_text(json.dumps({"model": {"kwargs": {**kwargs, "upsampler_kwargs": SLIM}}}))
    run = tmp_path / "run"
    assert main(["train", "--dataset", "demo", "--model", name, "--upsampler", "resfu", "--patch-size", *patch,
                 "--batch-size", "1", "--patches-per-volume", "1", "--max-iters", "2", "--epochs", "1",
                 "--no-progress", "--num-workers", "0", "--config", str(config), "-o", str(run)]) == 0
    model, cfg = load_model(run / "last.pt")
    assert type(model) is cls and cfg["model"]["name"] == name
    assert any(type(m).__name__ == "ReSFU" for m in model.modules())
    assert getattr(model, "deep_supervision", False) == kwargs.get("deep_supervision", False)

    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    z, y, x = (int(p) for p in patch)
    hu = np.random.default_rng(0).normal(40, 60, size=(x + 3, y, z - 1)).astype(np.int16)  # (x, y, z), not patch-sized
    nib.save(nib.Nifti1Image(hu, affine), str(tmp_path / "scan.nii.gz"))
    assert main(["infer", "-i", str(tmp_path / "scan.nii.gz"), "-o", str(tmp_path / "seg"), "--checkpoint",
                 str(run / "last.pt"), "--device", "cpu", "--no-progress"]) == 0
    seg = nib.load(str(tmp_path / "seg" / "scan_seg.nii.gz"))
    assert seg.shape == hu.shape and np.allclose(seg.affine, affine)

    if name == "dynunet":  # evaluate: the same 3D sliding windows as infer, through the registry like every 3D model
        assert main(["evaluate", "--checkpoint", str(run / "last.pt"), "--dataset", "demo", "-o", str(tmp_path / "ev"),
                     "--no-progress"]) == 0
        metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
        assert "spacing" in json.dumps(metrics)

    bundle = tmp_path / "bundle"
    # TorchScript (trace) only once: the three forwards are traced in test_monai_networks.py
    fast = [] if name == "dynunet" else ["--no-torchscript"]
    assert main(["export-bundle", "--checkpoint", str(run / "last.pt"), "-o", str(bundle), *fast]) == 0
    inference = json.loads((bundle / "configs" / "inference.json").read_text())
    assert inference["network_def"]["_target_"] == f"resfu_med.networks.{cls.__name__}"
    assert inference["inferer"]["_target_"] == "resfu_med.bundle.EngineInferer"  # infer's own 3D windows
