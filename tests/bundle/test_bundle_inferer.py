"""``EngineInferer``, the inferer bundles name, is ``resfu-med infer``'s own window inference.

MONAI's transforms load and normalise the scan (as ``inference.json`` does); the inferer's labels, written with
``SaveImaged``, equal ``resfu-med infer``'s file voxel for voxel, with the scan's geometry.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_helpers import DATA_CFG, make_checkpoint
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, SaveImaged, ScaleIntensityRanged, Transposed

from resfu_med.bundle.inferer import EngineInferer

TO_ZYX = [0, 3, 2, 1]  # nibabel (X, Y, Z) <-> resfu-med (Z, Y, X), channel first


def _bundle_like_labels(scan, out_dir, net, config, **options):
    """inference.json's steps with EngineInferer: load, CT window, to (Z, Y, X), infer, back, SaveImaged."""
    intensity = config["data"]["intensity"]
    pre = Compose([LoadImaged("image", image_only=True), EnsureChannelFirstd("image"),
                   ScaleIntensityRanged("image", intensity["a_min"], intensity["a_max"], 0.0, 1.0, clip=True),
                   Transposed("image", TO_ZYX)])
    image = pre({"image": str(scan)})["image"]
    inferer = EngineInferer(config["model"], config["data"], config.get("plan"), **options)
    with torch.no_grad():
        pred = inferer(image[None], net)[0]
    assert isinstance(pred, MetaTensor) and pred.shape == image.shape
    post = Compose([Transposed("pred", TO_ZYX),
                    SaveImaged("pred", output_dir=str(out_dir), output_postfix="seg", output_dtype=np.uint8,
                               resample=False, separate_folder=False, squeeze_end_dims=True, print_log=False)])
    post({"pred": pred})
    return nib.load(out_dir / "case1_seg.nii.gz")


@pytest.mark.parametrize("spatial_dims, depth", [(2, None), (3, None), (3, 40)])
def test_engine_inferer_equals_resfu_med_infer(tmp_path, stand_in_targets, ct_volume, spatial_dims, depth):
    """40 slices, roi_z 16: infer streams the volume in slabs, and so does the bundle (MONAI's one-pass sliding
    window, which bundles ran before, can differ near slab borders)."""
    from resfu_med.engine.predictor import InferOptions, infer_file

    data = DATA_CFG if spatial_dims == 2 else {**DATA_CFG, "roi_size": [16, 32, 32]}
    ckpt, net = make_checkpoint(tmp_path / "ckpt.pt", spatial_dims=spatial_dims, data=data)
    config = torch.load(ckpt, weights_only=True)["config"]
    _, scan = ct_volume
    if depth is not None:
        deep = tmp_path / "deep" / "case1.nii.gz"
        deep.parent.mkdir()
        vol = np.random.default_rng(1).normal(50, 200, (40, 37, depth)).astype(np.float32)
        nib.save(nib.Nifti1Image(vol, nib.load(scan).affine), deep)
        scan = deep
    written = _bundle_like_labels(scan, tmp_path / "bundle_segs", net, config)
    (infer_out,) = infer_file(scan, tmp_path / "infer_segs", net, config, InferOptions(progress=False))
    expected, source = nib.load(infer_out), nib.load(scan)
    labels = np.asarray(written.dataobj)
    np.testing.assert_array_equal(labels, np.asarray(expected.dataobj))
    assert len(np.unique(labels)) > 1  # the comparison is not vacuous
    assert written.shape == source.shape
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-6)


def test_engine_inferer_passes_the_recorded_settings_to_the_engine(monkeypatch):
    """The checkpoint's sections (a ``plan`` included) reach the engine's function unchanged: a change of the engine's
    inference (e.g. plan-driven windows) reaches bundles without a second implementation."""
    import resfu_med.bundle.inferer as module

    seen = {}

    def fake_predict_volume(model, image, config, **kwargs):
        seen.update(config=config, kwargs=kwargs, shape=image.shape)
        return np.ones(image.shape, np.uint8), None

    monkeypatch.setattr(module, "predict_volume", fake_predict_volume)
    plan = {"spacing": [1.0, 0.8, 0.8], "patch_size": [64, 64]}
    model = {"name": "unet", "kwargs": {"out_channels": 3}}
    inferer = EngineInferer(model, DATA_CFG, plan, overlap=0.5, sw_batch_size=2)
    image = MetaTensor(torch.zeros(1, 1, 3, 8, 9), affine=torch.diag(torch.tensor([2.0, 3.0, 4.0, 1.0])))
    out = inferer(image, torch.nn.Identity())
    assert seen["config"] == {"model": model, "data": DATA_CFG, "plan": plan} and seen["shape"] == (3, 8, 9)
    assert seen["kwargs"]["overlap"] == 0.5 and seen["kwargs"]["batch_size"] == 2
    assert isinstance(out, MetaTensor) and torch.equal(out.affine, image.affine) and out.shape == image.shape


@pytest.mark.parametrize("bad, match", [
    ({"model": {"name": "no-such-net"}}, "unknown model"),
    ({"data": {"img_size": "$__import__('os')"}}, "data"),
    ({"overlap": 1.0}, "overlap"),
    ({"roi_size": [0, 4]}, "roi_size"),
])
def test_engine_inferer_rejects_bad_settings(bad, match):
    args = {"model": {"name": "unet", "kwargs": {}}, "data": DATA_CFG, **bad}
    with pytest.raises(ValueError, match=match):
        EngineInferer(**args)


def test_engine_inferer_rejects_a_batch_of_volumes():
    inferer = EngineInferer({"name": "unet", "kwargs": {}}, DATA_CFG)
    with pytest.raises(ValueError, match=r"\(1, 1, Z, Y, X\)"):
        inferer(torch.zeros(2, 1, 3, 8, 8), torch.nn.Identity())


def test_recorded_settings_keep_what_prediction_reads_and_no_user_paths():
    from resfu_med.bundle.inferer import recorded_settings

    config = {"model": {"name": "unet", "kwargs": {"out_channels": 3}}, "train": {"lr": 0.01},
              "data": {**DATA_CFG, "root": "/home/someone/private/Synapse", "num_workers": 2},
              "plan": {"spacing": [1.0, 0.8, 0.8]}}
    recorded = recorded_settings(config)
    assert recorded == {"model": config["model"], "data": {"img_size": 32, "num_classes": 3},
                        "plan": {"spacing": [1.0, 0.8, 0.8]}}
    assert "plan" not in recorded_settings({k: v for k, v in config.items() if k != "plan"})
