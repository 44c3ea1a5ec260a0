"""``resfu-med infer``: voxel grid, affine and header preserved (oblique, non-RAS), 2D and 3D models, options."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from eval_standins import BinModel, config, expected_labels, oblique_affine, save_nifti, smooth_volume
from monai.networks.nets import BasicUNet

import resfu_med.data
from resfu_med.cli import main
from resfu_med.engine import predictor
from resfu_med.data.io import read_image
from resfu_med.engine.predictor import InferOptions, infer_file
from resfu_med.engine.inferer import predict_volume_3d


def use_model(monkeypatch, model, cfg):
    monkeypatch.setattr(predictor, "load_for_inference", lambda path, device="cpu": (model.eval(), cfg))


def assert_same_grid(seg_img, src_img):
    assert seg_img.shape == src_img.shape
    np.testing.assert_allclose(seg_img.affine, src_img.affine, atol=1e-6)
    for key in ("qform_code", "sform_code", "xyzt_units", "descrip", "pixdim"):
        np.testing.assert_array_equal(seg_img.header[key], src_img.header[key])
    np.testing.assert_allclose(seg_img.header.get_qform(), src_img.header.get_qform(), atol=1e-6)
    np.testing.assert_allclose(seg_img.header.get_sform(), src_img.header.get_sform(), atol=1e-6)
    assert np.issubdtype(seg_img.get_data_dtype(), np.integer)


def test_oblique_non_ras_volume_keeps_grid_affine_header(tmp_path, monkeypatch, capsys):
    # X != Y != Z so a transposition mistake would show; the slice is exactly img_size (Y, X) so labels are exact.
    data = np.transpose(smooth_volume((7, 16, 20), seed=4), (2, 1, 0))  # (X, Y, Z) = (20, 16, 7)
    src = save_nifti(tmp_path / "ct_scan.nii.gz", data)
    use_model(monkeypatch, BinModel(4), config(4, img_size=[16, 20]))
    rc = main(["infer", "-i", str(src), "-o", str(tmp_path / "out"), "--checkpoint", "x.pt",
               "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    seg = nib.load(str(tmp_path / "out" / "ct_scan_seg.nii.gz"))
    assert_same_grid(seg, nib.load(str(src)))
    assert not nib.aff2axcodes(seg.affine) == ("R", "A", "S")
    np.testing.assert_array_equal(np.asarray(seg.dataobj), expected_labels(data, 4))


def test_zoomed_slices_and_probabilities(tmp_path, monkeypatch):
    data = np.transpose(smooth_volume((5, 23, 31), seed=5), (2, 1, 0))
    src = save_nifti(tmp_path / "a.nii", data)
    use_model(monkeypatch, BinModel(3), config(3, img_size=16))
    rc = main(["infer", "-i", str(src), "-o", str(tmp_path / "o"), "--checkpoint", "x.pt", "--save-probabilities",
               "--tta", "--no-progress"])
    assert rc == 0
    seg = nib.load(str(tmp_path / "o" / "a_seg.nii.gz"))
    prob = nib.load(str(tmp_path / "o" / "a_prob.nii.gz"))
    assert_same_grid(seg, nib.load(str(src)))
    assert prob.shape == data.shape + (3,)
    p = np.asarray(prob.dataobj)
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-4)
    labels = np.asarray(seg.dataobj)
    assert set(np.unique(labels)) <= {0, 1, 2}
    # away from block borders the zoom round trip cannot change the answer
    interior = expected_labels(data, 3) == expected_labels(np.roll(data, 1, 0), 3)
    assert (labels == expected_labels(data, 3))[interior].mean() > 0.9


def test_3d_model_sliding_windows_streamed_in_slabs():
    image = smooth_volume((30, 18, 20), seed=6)
    labels, probs = predict_volume_3d(BinModel(4, spatial_dims=3).eval(), image, roi=(8, 8, 8), overlap=0.25,
                                      probabilities=True, slab_depth=8)
    np.testing.assert_array_equal(labels, expected_labels(image, 4))
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)


def test_3d_model_cli_with_real_tiny_unet(tmp_path, monkeypatch):
    torch.manual_seed(0)
    net = BasicUNet(spatial_dims=3, in_channels=1, out_channels=3, features=(4, 4, 4, 4, 4, 4))
    data = np.random.default_rng(0).random((24, 18, 20)).astype(np.float32)
    src = save_nifti(tmp_path / "vol.nii.gz", data)
    use_model(monkeypatch, net, config(3, name="unet3d", roi_size=[32, 32, 32]))
    rc = main(["infer", "-i", str(src), "-o", str(tmp_path / "o"), "--checkpoint", "x.pt", "--no-progress"])
    assert rc == 0
    seg = nib.load(str(tmp_path / "o" / "vol_seg.nii.gz"))
    assert_same_grid(seg, nib.load(str(src)))
    labels = np.asarray(seg.dataobj)
    assert set(np.unique(labels)) <= {0, 1, 2}


def test_3d_tta_of_a_pointwise_model_is_unchanged():
    image = smooth_volume((10, 9, 11), seed=7)
    labels, _ = predict_volume_3d(BinModel(3, spatial_dims=3).eval(), image, roi=8, tta=True)
    np.testing.assert_array_equal(labels, expected_labels(image, 3))


@pytest.mark.skipif(not hasattr(resfu_med.data, "make_intensity_transform"), reason="data layer not merged yet")
def test_ct_intensity_transform_applied(tmp_path):
    hu = np.array([-1000.0, -125.0, 75.0, 275.0, 3000.0])
    data = np.broadcast_to(hu[:, None, None], (5, 16, 16)).transpose(2, 1, 0).astype(np.int16)  # (X, Y, Z)
    src = save_nifti(tmp_path / "hu.nii.gz", data, dtype=np.int16)
    cfg = config(3, img_size=16, intensity={"kind": "ct", "a_min": -125, "a_max": 275})
    infer_file(src, tmp_path, BinModel(3).eval(), cfg, InferOptions(progress=False))
    seg = np.asarray(nib.load(str(tmp_path / "hu_seg.nii.gz")).dataobj)
    # (clip(hu, -125, 275) + 125) / 400 = 0, 0, 0.5, 1, 1 → classes 0, 0, 1, 2, 2
    np.testing.assert_array_equal(seg[0, 0, :], [0, 0, 1, 2, 2])


def test_scaled_int16_read_as_float32(tmp_path):
    data = (np.arange(4 * 5 * 40).reshape(4, 5, 40) % 300).astype(np.float32)
    img = nib.Nifti1Image(data, oblique_affine())
    img.set_data_dtype(np.int16)
    img.header.set_slope_inter(0.5, -10.0)
    nib.save(img, str(tmp_path / "s.nii.gz"))
    vol, _ = read_image(tmp_path / "s.nii.gz")
    assert vol.dtype == np.float32 and vol.shape == (40, 5, 4)
    ref = np.asarray(nib.load(str(tmp_path / "s.nii.gz")).get_fdata()).transpose(2, 1, 0)
    np.testing.assert_allclose(vol, ref, rtol=1e-6)
