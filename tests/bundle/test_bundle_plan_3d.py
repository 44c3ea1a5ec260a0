"""A 3D plan-pipeline checkpoint (``data.pipeline: plan``, a 3D ``data.plan``) exported as a bundle predicts each scan
at the plan's spacing, exactly as ``resfu-med infer`` does, and returns labels on the scan's own grid."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import torch
from bundle_helpers import DATA_CFG, make_checkpoint

import resfu_med.engine.inferer as inferer
from resfu_med.bundle import export_bundle


def test_3d_plan_bundle_equals_infer_at_the_planned_spacing(tmp_path, stand_in_targets, ct_volume, monkeypatch):
    from monai.bundle import run

    from resfu_med.engine.predictor import InferOptions, infer_file

    data = {**DATA_CFG, "patch_size": [16, 32, 32], "pipeline": "plan",
            "plan": {"spacing": [1.5, 1.0, 1.0], "patch_size": [16, 32, 32]}}
    ckpt, net = make_checkpoint(tmp_path / "ckpt3d.pt", spatial_dims=3, data=data)
    folder, scan = ct_volume  # (Z, Y, X) = (11, 37, 40) at (2.5, 0.8, 0.7) mm
    grids = []
    real = inferer.predict_volume_3d
    def record(m, image, *a, **k):  # the grid the windows run on (the call that resamples passes target_spacing)
        if k.get("target_spacing") is None:
            grids.append(image.shape)
        return real(m, image, *a, **k)

    monkeypatch.setattr(inferer, "predict_volume_3d", record)
    bundle = export_bundle(ckpt, tmp_path / "bundle3d", torchscript=False)
    assert '"pipeline": "plan"' in json.dumps(json.loads((bundle / "configs" / "inference.json").read_text()))
    run(config_file=str(bundle / "configs" / "inference.json"), bundle_root=str(bundle), dataset_dir=str(folder),
        output_dir=str(tmp_path / "bundle_segs"))
    out = nib.load(tmp_path / "bundle_segs" / "case1_seg.nii.gz")
    (infer_out,) = infer_file(scan, tmp_path / "infer_segs", net, torch.load(ckpt, weights_only=True)["config"],
                              InferOptions(progress=False))
    assert grids == [(18, 30, 28)] * 2  # 11 x 2.5 / 1.5, 37 x 0.8, 40 x 0.7: both at the plan's spacing
    labels = np.asarray(out.dataobj)
    assert labels.shape == (40, 37, 11) and np.allclose(out.affine, nib.load(scan).affine)
    np.testing.assert_array_equal(labels, np.asarray(nib.load(infer_out).dataobj))
