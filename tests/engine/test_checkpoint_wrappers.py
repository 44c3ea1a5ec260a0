"""A checkpoint whose weights were saved from a wrapped model — DistributedDataParallel (``module.``),
``torch.compile`` (``_orig_mod.``) or both — works in every command that reads one: evaluate, infer, export,
export-bundle, verify-bundle and the Python API (:func:`resfu_med.engine.checkpoint.load_model`). All of them go
through the one checkpoint→model path, so the prefixes are removed in one place."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from resfu_med.cli import main
from resfu_med.data.registry import dataset_info
from resfu_med.engine.checkpoint import capture_rng, load_model, save_checkpoint
from resfu_med.networks.model_registry import build_model

KWARGS = {"in_channels": 1, "out_channels": 9, "features": [4, 4, 8, 8, 16, 4], "upsampler": "nearest"}


def _wrapped_state(net: torch.nn.Module, wrapper: str) -> dict[str, torch.Tensor]:
    if wrapper == "compiled":
        return torch.compile(net).state_dict()  # keys "_orig_mod.<name>" (compilation is lazy: nothing is compiled)
    if wrapper == "ddp":  # what DistributedDataParallel(net).state_dict() holds
        return {f"module.{k}": v for k, v in net.state_dict().items()}
    return {f"_orig_mod.module.{k}": v for k, v in net.state_dict().items()}  # torch.compile(DDP(net))


@pytest.fixture(params=["ddp", "compiled", "compiled-ddp"])
def wrapped(request, tmp_path):
    torch.manual_seed(0)
    net = build_model({"name": "unet", "kwargs": KWARGS}).eval()
    info = dataset_info("demo")
    data = {"dataset": "demo", "num_classes": info.num_classes, "label_names": info.label_names,
            "intensity": info.intensity, "modality": info.modality, "img_size": 32}
    path = tmp_path / "best.pt"
    save_checkpoint(path, {"model": _wrapped_state(net, request.param), "optimizer": {}, "scheduler": {},
                           "scaler": {}, "epoch": 1, "iteration": 1, "rng": capture_rng(), "best_metric": 0.5,
                           "config": {"model": {"name": "unet", "kwargs": KWARGS}, "data": data}})
    return path, net


def test_python_api(wrapped):
    path, net = wrapped
    model, cfg = load_model(path)
    x = torch.rand(1, 1, 32, 32)
    torch.testing.assert_close(model(x), net(x))
    assert cfg["model"]["name"] == "unet"


def test_infer(wrapped, tmp_path, capsys):
    path, _ = wrapped
    nib.save(nib.Nifti1Image(np.random.default_rng(0).normal(40, 60, (24, 24, 3)).astype(np.int16), np.eye(4)),
             str(tmp_path / "scan.nii.gz"))
    assert main(["infer", "-i", str(tmp_path / "scan.nii.gz"), "-o", str(tmp_path / "seg"), "--checkpoint", str(path),
                 "--device", "cpu", "--no-progress"]) == 0, capsys.readouterr().err
    assert (tmp_path / "seg" / "scan_seg.nii.gz").is_file()


def test_evaluate(wrapped, tmp_path, capsys):
    path, _ = wrapped
    assert main(["evaluate", "--checkpoint", str(path), "--dataset", "demo", "-o", str(tmp_path / "ev"),
                 "--device", "cpu", "--no-progress"]) == 0, capsys.readouterr().err
    assert (tmp_path / "ev" / "metrics.json").is_file()


def test_export(wrapped, tmp_path, capsys):
    path, _ = wrapped
    assert main(["export", "--checkpoint", str(path), "-o", str(tmp_path / "model.ts")]) == 0, capsys.readouterr().err
    assert (tmp_path / "model.ts").is_file()


def test_export_bundle_and_verify_bundle(wrapped, tmp_path, capsys):
    path, _ = wrapped
    bundle = tmp_path / "bundle"
    assert main(["export-bundle", "--checkpoint", str(path), "-o", str(bundle), "--no-torchscript"]) == 0, \
        capsys.readouterr().err
    assert main(["verify-bundle", str(bundle)]) == 0, capsys.readouterr().err
