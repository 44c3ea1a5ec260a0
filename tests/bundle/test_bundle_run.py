"""``monai.bundle run`` on an exported bundle segments NIfTI exactly like ``resfu-med infer``.

The network is a stand-in (MONAI's BasicUNet) so that this runs without resfu-med's networks; the end-to-end test with
a trained resfu-med model is ``test_bundle_e2e.py``.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_helpers import DATA_CFG, make_checkpoint
from scipy.ndimage import zoom

from resfu_med.bundle import export_bundle


def _hand_reference(net, path, size):
    """Independent expectation, one slice at a time: nibabel (X, Y, Z) → (Z, Y, X), CT window to [0, 1], each slice
    cubic-zoomed to size², network, argmax, labels zoomed back (nearest), back to (X, Y, Z)."""
    a_min, a_max = DATA_CFG["intensity"]["a_min"], DATA_CFG["intensity"]["a_max"]
    arr = np.asarray(nib.load(path).dataobj, dtype=np.float32).transpose(2, 1, 0)
    arr = (np.clip(arr, a_min, a_max) - a_min) / (a_max - a_min)
    seg = np.zeros(arr.shape, np.uint8)
    with torch.no_grad():
        for z, sl in enumerate(arr):
            small = zoom(sl, (size / sl.shape[0], size / sl.shape[1]), order=3)
            lab = net(torch.from_numpy(small)[None, None]).argmax(1)[0].numpy().astype(np.uint8)
            seg[z] = zoom(lab, (sl.shape[0] / size, sl.shape[1] / size), order=0)
    return seg.transpose(2, 1, 0)


@pytest.mark.parametrize("overlap", [0.25])
def test_bundle_run_equals_resfu_med_infer(tmp_path, checkpoint, ct_volume, overlap):
    from monai.bundle import run

    from resfu_med.engine.predictor import InferOptions, infer_file

    ckpt, net = checkpoint
    folder, scan = ct_volume
    bundle = export_bundle(ckpt, tmp_path / "bundle", torchscript=False, overlap=overlap)
    out = tmp_path / "bundle_segs"
    run(config_file=str(bundle / "configs" / "inference.json"), meta_file=str(bundle / "configs" / "metadata.json"),
        bundle_root=str(bundle), dataset_dir=str(folder), output_dir=str(out))
    written, source = nib.load(out / "case1_seg.nii.gz"), nib.load(scan)
    assert written.shape == source.shape and written.get_data_dtype() == np.uint8
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-6)
    labels = np.asarray(written.dataobj)

    # resfu-med infer's own code path with the same network and config: identical labels.
    config = torch.load(ckpt, weights_only=True)["config"]
    (infer_out,) = infer_file(scan, tmp_path / "infer_segs", net, config, InferOptions(overlap=overlap, progress=False))
    np.testing.assert_array_equal(labels, np.asarray(nib.load(infer_out).dataobj))

    expected = _hand_reference(net, scan, DATA_CFG["img_size"])
    assert len(np.unique(expected)) > 1  # the comparison is not vacuous
    assert (labels == expected).mean() > 0.999  # batch size may move logits by an ulp; labels agree


def test_3d_bundle_run_equals_resfu_med_infer(tmp_path, stand_in_targets, ct_volume):
    from monai.bundle import run

    from resfu_med.engine.predictor import InferOptions, infer_file

    data = {**DATA_CFG, "roi_size": [16, 32, 32]}
    ckpt, net = make_checkpoint(tmp_path / "ckpt3d.pt", spatial_dims=3, data=data)
    folder, scan = ct_volume
    bundle = export_bundle(ckpt, tmp_path / "bundle3d", torchscript=False)
    inference = json.loads((bundle / "configs" / "inference.json").read_text())
    assert inference["inferer"]["_target_"] == "resfu_med.bundle.EngineInferer" and inference["inferer"]["roi_size"] == [16, 32, 32]
    run(config_file=str(bundle / "configs" / "inference.json"), bundle_root=str(bundle), dataset_dir=str(folder),
        output_dir=str(tmp_path / "bundle_segs"))
    labels = np.asarray(nib.load(tmp_path / "bundle_segs" / "case1_seg.nii.gz").dataobj)
    (infer_out,) = infer_file(scan, tmp_path / "infer_segs", net, torch.load(ckpt, weights_only=True)["config"],
                              InferOptions(progress=False))
    np.testing.assert_array_equal(labels, np.asarray(nib.load(infer_out).dataobj))
    assert len(np.unique(labels)) > 1


def test_train_and_evaluate_configs_run(tmp_path, checkpoint, ct_volume):
    """``configs/train.json`` fine-tunes one epoch and saves weights; ``evaluate.json`` reports a mean Dice equal to
    a hand computation on inference.json's saved labels."""
    import shutil

    from monai.bundle import ConfigWorkflow, run

    ckpt, _ = checkpoint
    _, scan = ct_volume
    bundle = export_bundle(ckpt, tmp_path / "bundle", torchscript=False)
    data = tmp_path / "split"
    img = nib.load(scan)
    label = (np.asarray(img.dataobj) > 100).astype(np.uint8) + (np.asarray(img.dataobj) > 300)
    for split in ("Tr", "Ts"):
        (data / f"images{split}").mkdir(parents=True)
        (data / f"labels{split}").mkdir()
        shutil.copy(scan, data / f"images{split}" / "case1.nii.gz")
        nib.save(nib.Nifti1Image(label, img.affine), data / f"labels{split}" / "case1.nii.gz")
    run(config_file=str(bundle / "configs" / "train.json"), bundle_root=str(bundle), dataset_dir=str(data),
        output_dir=str(tmp_path / "train_out"), max_epochs=1)
    tuned = torch.load(tmp_path / "train_out" / "model_finetuned.pt", weights_only=True)
    assert tuned.keys() == torch.load(bundle / "models" / "model.pt", weights_only=True).keys()

    workflow = ConfigWorkflow(config_file=str(bundle / "configs" / "evaluate.json"),
                              workflow_type="eval", bundle_root=str(bundle), dataset_dir=str(data),
                              output_dir=str(tmp_path / "eval_out"))
    workflow.initialize()
    workflow.run()
    dice = workflow.parser.get_parsed_content("evaluator").state.metrics["val_mean_dice"]
    run(config_file=str(bundle / "configs" / "inference.json"), bundle_root=str(bundle),
        dataset_dir=str(data / "imagesTs"), output_dir=str(tmp_path / "segs"))
    pred = np.asarray(nib.load(tmp_path / "segs" / "case1_seg.nii.gz").dataobj)
    per_class = [2 * ((pred == c) & (label == c)).sum() / ((pred == c).sum() + (label == c).sum()) for c in (1, 2)]
    assert dice == pytest.approx(np.mean(per_class), abs=1e-5)
