"""The model registry: a network registered in a test trains, infers, exports as a bundle and runs under MONAI with
no other code touched; the entries describe the built-in networks as their constructors do."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from resfu_med.cli import main
from resfu_med.errors import CheckpointError, InputError
from resfu_med.networks import model_registry as registry

TOY = "toy-registry-net"


class ToyNet(torch.nn.Module):
    """Two convolutions: the smallest segmentation network (importable as ``test_model_registry.ToyNet``)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 2, width: int = 4) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(in_channels, width, 3, padding=1), torch.nn.ReLU(),
                                        torch.nn.Conv2d(width, num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@pytest.fixture
def toy(monkeypatch):
    """ToyNet registered for this test only."""
    monkeypatch.setitem(registry.MODELS, TOY, registry.ModelSpec(TOY, ToyNet, classes_key="num_classes",
                                                                 in_channels_key="in_channels"))
    return registry.MODELS[TOY]


def test_entries_describe_the_builtin_networks():
    assert set(registry.model_names()) >= {"transunet", "unet", "unet3d"}
    unet, unet3d, tu = (registry.get_model_spec(n) for n in ("unet", "unet3d", "transunet"))
    assert (unet.spatial_dims, unet3d.spatial_dims, tu.spatial_dims) == (2, 3, 2)
    assert unet.accepted_keys >= {"in_channels", "out_channels", "features", "upsample", "spatial_dims"}
    assert "num_classes" in tu.accepted_keys and tu.classes_key == "num_classes" and tu.pretrained is not None
    assert registry.build_model({"name": "unet3d", "kwargs": {"out_channels": 2, "features": [4] * 6}}).spatial_dims == 3
    assert unet3d.default_roi({"patch_size": [16, 32, 32]}) == [16, 32, 32]
    assert unet.default_roi({"img_size": 96}) == [96, 96] and tu.default_roi({}) == [224, 224]


def test_unknown_keys_and_fixed_arguments_are_one_line_errors(toy):
    with pytest.raises(InputError, match=rf"model '{TOY}': .*kwargs.depth is not an argument of {TOY} "
                                         r"\(accepted: in_channels, num_classes, width\)"):
        registry.build_model({"name": TOY, "kwargs": {"depth": 3}})
    with pytest.raises(InputError, match="model 'unet3d': spatial_dims is always 3, got 2"):
        registry.build_model({"name": "unet3d", "kwargs": {"spatial_dims": 2}})
    with pytest.raises(InputError, match=r"unknown model 'vnet' \(did you mean 'unet'\?\): choose one of transunet, unet, unet3d"):
        registry.get_model_spec("vnet")


def test_one_state_dict_check_names_every_mismatch():
    net = ToyNet(num_classes=3)
    state = {k: v for k, v in ToyNet(num_classes=2).state_dict().items() if k != "body.0.bias"}
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"^ctx: 1 missing weights \(e\.g\. body\.0\.bias\); 1 unexpected "
                                              r"weights \(e\.g\. extra\.weight\); 2 weights of another shape"):
        registry.load_state_strict(net, state, "ctx")


@pytest.mark.slow
def test_registered_model_trains_infers_and_exports_a_running_bundle(tmp_path, toy):
    from monai.bundle import run

    from resfu_med.data import ensure_demo_data

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", "--dataset", "demo", "--model", TOY, "--img-size", "32", "--batch-size", "2",
                     "--max-iters", "2", "--no-eval", "--device", "cpu", "--no-progress",
                     "--output", str(tmp_path / "run")]) == 0
        ckpt = tmp_path / "run" / "last.pt"
        assert torch.load(ckpt, weights_only=True)["config"]["model"] == {
            "name": TOY, "upsampler": "resfu", "pretrained": None, "kwargs": {"in_channels": 1, "num_classes": 9}}

        scans = tmp_path / "scans"
        scans.mkdir()
        scan = sorted((ensure_demo_data().parent / "raw" / "img").glob("*.nii.gz"))[0]
        shutil.copy(scan, scans / scan.name)
        assert main(["infer", "-i", str(scans), "-o", str(tmp_path / "infer_out"), "--checkpoint", str(ckpt),
                     "--device", "cpu", "--no-progress"]) == 0

        bundle = tmp_path / "bundle"
        assert main(["export-bundle", "--checkpoint", str(ckpt), "--output", str(bundle)]) == 0
        assert (bundle / "models" / "model.ts").is_file()  # ToyNet scripts
        run(config_file=str(bundle / "configs" / "inference.json"), bundle_root=str(bundle), dataset_dir=str(scans),
            output_dir=str(tmp_path / "bundle_out"))
    finally:
        torch.set_num_threads(threads)
    name = scan.name.replace(".nii.gz", "_seg.nii.gz")
    ours, theirs = (nib.load(tmp_path / d / name) for d in ("bundle_out", "infer_out"))
    assert ours.shape == theirs.shape == nib.load(scan).shape
    np.testing.assert_array_equal(np.asarray(ours.dataobj), np.asarray(theirs.dataobj))
