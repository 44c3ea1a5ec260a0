"""Bundles of every intensity kind run under ``monai.bundle run`` and equal ``resfu-med infer`` voxel for voxel.

The CT window (Synapse), MSD's robust z-score (the MRI default), ACDC's per-volume min-max and plain z-score, each for
a 2D and a 3D checkpoint. The robust z-score used to return a numpy array from its bundle transform, which dropped the
MetaTensor metadata that ``Invertd``/``SaveImaged`` need (``KeyError: 'spatial_shape'``): every MRI bundle was broken.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_helpers import DATA_CFG, make_checkpoint

from resfu_med.bundle import export_bundle

INTENSITIES = {
    "ct_synapse": {"kind": "ct", "a_min": -125.0, "a_max": 275.0},
    "mri_msd_robust": {"kind": "mri", "mode": "robust", "percentiles": [0.5, 99.5]},
    "mri_acdc_minmax": {"kind": "mri", "mode": "minmax"},
    "mri_zscore": {"kind": "mri", "mode": "zscore"},
}


@pytest.fixture
def mri_volume(tmp_path):
    """An MRI-like NIfTI: a bright ellipsoid body on a zero background, a few hot voxels, an oblique affine."""
    folder = tmp_path / "mri"
    folder.mkdir()
    rng = np.random.default_rng(3)
    x, y, z = np.meshgrid(np.linspace(-1, 1, 40), np.linspace(-1, 1, 36), np.linspace(-1, 1, 12), indexing="ij")
    body = x**2 + y**2 + 0.5 * z**2 < 0.8
    vol = np.where(body, rng.normal(400, 120, body.shape), 0).astype(np.float32)
    vol[body & (rng.random(body.shape) < 0.002)] = 5000.0
    affine = np.array([[0.0, -1.2, 0.0, 4.0], [0.9, 0.0, 0.0, -7.0], [0.0, 0.0, 3.0, 1.0], [0.0, 0.0, 0.0, 1.0]])
    nib.save(nib.Nifti1Image(vol, affine), folder / "case1.nii.gz")
    return folder, folder / "case1.nii.gz"


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("kind", sorted(INTENSITIES))
def test_bundle_of_every_intensity_kind_equals_infer(tmp_path, stand_in_targets, mri_volume, ct_volume, kind,
                                                     spatial_dims):
    from monai.bundle import run

    from resfu_med.engine.predictor import InferOptions, infer_file

    data = {**DATA_CFG, "intensity": INTENSITIES[kind], "modality": "CT" if kind.startswith("ct") else "MR"}
    if spatial_dims == 3:
        data["roi_size"] = [16, 32, 32]
    ckpt, net = make_checkpoint(tmp_path / "ckpt.pt", spatial_dims=spatial_dims, data=data)
    folder, scan = ct_volume if kind.startswith("ct") else mri_volume
    bundle = export_bundle(ckpt, tmp_path / "bundle", torchscript=False)
    out = tmp_path / "bundle_segs"
    run(config_file=str(bundle / "configs" / "inference.json"), meta_file=str(bundle / "configs" / "metadata.json"),
        bundle_root=str(bundle), dataset_dir=str(folder), output_dir=str(out))
    written, source = nib.load(out / "case1_seg.nii.gz"), nib.load(scan)
    assert written.shape == source.shape
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-6)
    labels = np.asarray(written.dataobj)
    (infer_out,) = infer_file(scan, tmp_path / "infer_segs", net, torch.load(ckpt, weights_only=True)["config"],
                              InferOptions(progress=False))
    expected = np.asarray(nib.load(infer_out).dataobj)
    assert len(np.unique(expected)) > 1  # the comparison is not vacuous
    np.testing.assert_array_equal(labels, expected)


def test_robust_zscored_keeps_metatensor_metadata():
    from monai.data import MetaTensor

    from resfu_med.data import RobustZScored
    from resfu_med.data.intensity import robust_zscore

    rng = np.random.default_rng(0)
    arr = np.where(rng.random((1, 6, 7, 5)) < 0.7, rng.normal(300, 50, (1, 6, 7, 5)), 0).astype(np.float32)
    image = MetaTensor(torch.from_numpy(arr), affine=torch.diag(torch.tensor([2.0, 3.0, 4.0, 1.0])),
                       meta={"spatial_shape": [6, 7, 5], "filename_or_obj": "x.nii.gz"})
    out = RobustZScored(keys="image")({"image": image})["image"]
    assert isinstance(out, MetaTensor)
    assert out.meta["spatial_shape"] == [6, 7, 5] and out.meta["filename_or_obj"] == "x.nii.gz"
    np.testing.assert_array_equal(out.affine.numpy(), image.affine.numpy())
    np.testing.assert_allclose(out.numpy(), robust_zscore(arr), rtol=0, atol=0)



def test_robust_zscore_is_monais_pair_on_the_body_only():
    """MONAI's ``ClipIntensityPercentilesd`` + ``NormalizeIntensityd(nonzero=True)`` compute the robust z-score when
    every voxel is body (a check of ours against MONAI's), but not on a scan with zero background: MONAI takes the
    percentiles over all voxels, zeros included (nnU-Net and resfu-med take them over the body). That is why bundles
    name ``resfu_med.data.RobustZScored`` for this one mode and MONAI's own transforms for the others."""
    from monai.transforms import ClipIntensityPercentilesd, Compose, NormalizeIntensityd

    from resfu_med.data.intensity import robust_zscore

    monai_pair = Compose([ClipIntensityPercentilesd("image", 0.5, 99.5), NormalizeIntensityd("image", nonzero=True)])
    rng = np.random.default_rng(0)
    body = rng.gamma(2.0, 150.0, (6, 20, 20)).astype(np.float32) + 1.0
    body[0, 0, :3] = 5000.0  # a few very bright voxels: the upper percentile clips them
    ours = robust_zscore(body)
    theirs = monai_pair({"image": torch.from_numpy(body)[None]})["image"][0].numpy()
    np.testing.assert_allclose(theirs, ours, atol=1e-4)  # float32 (MONAI) vs float64 statistics
    with_background = body.copy()
    with_background[:, :6] = 0.0
    theirs = monai_pair({"image": torch.from_numpy(with_background)[None]})["image"][0].numpy()
    assert np.abs(theirs - robust_zscore(with_background)).max() > 0.1

# resfu-med's own networks (not stand-ins), small, with ReSFU: a 2D TransUNet, a 2D U-Net and a 3D DynUNet.
NETWORKS = {
    "transunet": ({"vit_depth": 1, "hidden_size": 32, "mlp_dim": 32, "num_heads": 2, "resnet_layers": [1, 1, 1],
                   "resnet_width": 32, "head_channels": 32, "decoder_channels": [16, 16, 16, 16]}, None),
    "unet": ({"features": [8, 8, 8, 8, 8, 8],
              "upsampler_kwargs": {"embed_dim": 8, "pcdc_channels": 8, "compressor_channels": 8}}, None),
    "dynunet": ({"filters": [4, 4, 8, 8, 8],
                 "upsampler_kwargs": {"embed_dim": 8, "pcdc_channels": 8, "compressor_channels": 8}}, [16, 32, 32]),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_bundle_of_resfu_networks_verifies_and_equals_infer(tmp_path, ct_volume, name):
    from monai.bundle import run, verify_metadata, verify_net_in_out

    from resfu_med.bundle import schema_path
    from resfu_med.engine.checkpoint import capture_rng, save_checkpoint
    from resfu_med.engine.predictor import InferOptions, infer_file
    from resfu_med.networks.model_registry import build_model, model_kwargs

    extra, roi = NETWORKS[name]
    data = {**DATA_CFG, "img_size": 32, **({"roi_size": roi} if roi else {})}
    kwargs = model_kwargs(name, data["num_classes"], 32, "resfu", extra, patch_size=roi)
    torch.manual_seed(5)
    net = build_model({"name": name, "kwargs": kwargs}).eval()
    ckpt = tmp_path / "ckpt.pt"
    save_checkpoint(ckpt, {"model": net.state_dict(), "optimizer": {}, "scheduler": {}, "scaler": {}, "epoch": 1,
                           "iteration": 2, "rng": capture_rng(), "best_metric": 0.0,
                           "config": {"model": {"name": name, "kwargs": kwargs}, "data": data,
                                      "train": {"max_iters": 2, "base_lr": 0.01, "batch_size": 2}}})
    bundle = export_bundle(ckpt, tmp_path / "bundle", torchscript=False)
    configs = bundle / "configs"
    verify_metadata(meta_file=str(configs / "metadata.json"), filepath=str(schema_path()))
    verify_net_in_out(net_id="network_def", meta_file=str(configs / "metadata.json"),
                      config_file=str(configs / "inference.json"), bundle_root=str(bundle))
    folder, scan = ct_volume
    run(config_file=str(configs / "inference.json"), meta_file=str(configs / "metadata.json"),
        bundle_root=str(bundle), dataset_dir=str(folder), output_dir=str(tmp_path / "bundle_segs"))
    written, source = nib.load(tmp_path / "bundle_segs" / "case1_seg.nii.gz"), nib.load(scan)
    assert written.shape == source.shape
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-6)
    (infer_out,) = infer_file(scan, tmp_path / "infer_segs", net, torch.load(ckpt, weights_only=True)["config"],
                              InferOptions(progress=False))
    np.testing.assert_array_equal(np.asarray(written.dataobj), np.asarray(nib.load(infer_out).dataobj))
