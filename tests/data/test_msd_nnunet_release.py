"""MSD / nnU-Net folders as the public releases lay them out (nnU-Net v2 dataset format docs; nnU-Net v1 task folders
converted from MSD; MONAI datalists with a "validation" list): ignore label, validation split, v1 file names, hidden
AppleDouble files, and the voxel-size based image/label grid check."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from monai.losses import DiceCELoss

from resfu_med.data import dataset_info, get_dataset, prepare_msd
from resfu_med.data.msd import IGNORE_INDEX
from resfu_med.data.synapse import GeometryWarning, check_pair
from resfu_med.engine.loss import IgnoreDiceCELoss, segmentation_loss
from resfu_med.engine.preparation import complete_config
from resfu_med.errors import InputError
from resfu_med.metrics import drop_ignored, transunet_metrics


SHAPE = (5, 4, 3)


def _case(fake, root, image_rel, label_rel, seed, values=(0, 1), affine=None):
    rng = np.random.default_rng(seed)
    aff = fake.odd_affine(theta_deg=seed) if affine is None else affine
    fake.write_nifti(root / image_rel, rng.integers(-300, 300, size=SHAPE).astype(np.int16), aff)
    lab = rng.choice(np.array(values, np.uint8), size=SHAPE)
    fake.write_nifti(root / label_rel, lab, aff)
    return lab


def _nnunet_v2(fake, root, n=4, labels=None):
    """nnU-Net v2 raw dataset: imagesTr/<case>_0000.nii.gz, labelsTr/<case>.nii.gz, dataset.json with channel_names,
    labels {name: value}, numTraining and file_ending (no file list)."""
    labels = labels or {"background": 0, "liver": 1, "ignore": 2}
    out = {}
    for i in range(n):
        out[f"liver_{i:03d}"] = _case(fake, root, f"imagesTr/liver_{i:03d}_0000.nii.gz", f"labelsTr/liver_{i:03d}.nii.gz", i,
                                      values=tuple(labels.values()))  # fmt: skip
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": labels,
                                                   "numTraining": n, "file_ending": ".nii.gz"}))  # fmt: skip
    return out


def test_nnunet_ignore_label_is_not_a_class(tmp_path, fake):
    raw = _nnunet_v2(fake, tmp_path / "Dataset001_Liver")
    out = prepare_msd(tmp_path / "Dataset001_Liver", tmp_path / "p", seed=0, progress=False)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["num_classes"] == 2 and meta["label_names"] == ["liver"] and meta["ignore_index"] == IGNORE_INDEX
    info = dataset_info("msd", out)
    assert info.num_classes == 2 and info.ignore_index == IGNORE_INDEX
    assert dataset_info("msd", tmp_path / "Dataset001_Liver").ignore_index == IGNORE_INDEX  # raw folder too
    vol = get_dataset("msd", out, "test")[0]
    lab = raw[vol["case"]].transpose(2, 1, 0)
    np.testing.assert_array_equal(vol["label"], np.where(lab == 2, IGNORE_INDEX, lab))
    cfg = {"data": {"dataset": "msd", "root": str(out), "img_size": 32}, "model": {"name": "unet", "upsampler": None}}
    assert complete_config(cfg)["data"]["ignore_index"] == IGNORE_INDEX


def test_ignore_label_must_be_the_highest_value(tmp_path, fake):
    _nnunet_v2(fake, tmp_path / "D", labels={"background": 0, "ignore": 1, "liver": 2})
    with pytest.raises(InputError, match="'ignore' label"):
        prepare_msd(tmp_path / "D", tmp_path / "p", progress=False)


def test_ignore_loss_equals_dice_ce_on_the_labelled_voxels_only():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 6, 5, requires_grad=True)
    label = torch.randint(0, 3, (2, 1, 6, 5))
    label[0, 0, :2] = IGNORE_INDEX
    loss = IgnoreDiceCELoss(IGNORE_INDEX, lambda_ce=0.5, lambda_dice=0.5)(logits, label)
    valid = (label[:, 0] != IGNORE_INDEX)
    # reference: MONAI's DiceCELoss on the labelled voxels gathered into one (1, C, V) "image"
    kept = logits.permute(1, 0, 2, 3)[:, valid][None]
    ref = DiceCELoss(to_onehot_y=True, softmax=True, include_background=True, batch=True, lambda_ce=0.5,
                     lambda_dice=0.5)(kept, label[:, 0][valid][None, None])  # fmt: skip
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    loss.backward()
    assert logits.grad[0, :, :2].abs().max() == 0  # ignored voxels get no gradient: never trained toward any class
    no_ignore = torch.randint(0, 3, (2, 1, 6, 5))
    torch.testing.assert_close(segmentation_loss(0.5, 0.5, IGNORE_INDEX)(logits, no_ignore),
                               segmentation_loss(0.5, 0.5)(logits, no_ignore))


def test_ignored_voxels_are_not_scored():
    gt = np.zeros((4, 6, 6), np.uint8)
    gt[1:3, 1:4, 1:4] = 1
    gt[:, 5] = IGNORE_INDEX  # an unlabelled stripe
    pred = (gt == 1).astype(np.uint8)
    pred[:, 5] = 1  # the model says "liver" in the unlabelled stripe: not a false positive
    assert transunet_metrics(*drop_ignored(pred, gt, IGNORE_INDEX), 2)[0][0] == 1.0
    assert transunet_metrics(pred, np.where(gt == IGNORE_INDEX, 0, gt), 2)[0][0] < 1.0


def test_monai_validation_list_forms_the_val_split(tmp_path, fake):
    # MONAI datalist style (e.g. the BTCV dataset_0.json of MONAI's tutorials): "training" and "validation" lists
    root = tmp_path / "Task09_Spleen"
    training, validation = [], []
    for i in range(6):
        entry = {"image": f"imagesTr/spleen_{i}.nii.gz", "label": f"labelsTr/spleen_{i}.nii.gz"}
        _case(fake, root, entry["image"], entry["label"], i)
        (validation if i >= 4 else training).append(entry)
    (root / "dataset.json").write_text(json.dumps({"name": "Spleen", "modality": {"0": "CT"},
                                                   "labels": {"0": "background", "1": "spleen"},
                                                   "training": training, "validation": validation}))  # fmt: skip
    out = prepare_msd(root, tmp_path / "p", seed=0, progress=False)
    split = json.loads((out / "dataset.json").read_text())["split"]
    assert split["val"] == ["spleen_4", "spleen_5"]
    assert sorted(split["train"] + split["test"]) == [f"spleen_{i}" for i in range(4)]
    assert sorted(v["case"] for v in get_dataset("msd", out, "val")) == ["spleen_4", "spleen_5"]


def test_nnunet_v1_task_folder_without_channel_suffix_and_hidden_files(tmp_path, fake):
    # nnU-Net v1 (Task folders converted from MSD): dataset.json lists "./imagesTr/la_003.nii.gz" while the file on
    # disk is imagesTr/la_003_0000.nii.gz; MSD tarballs made on macOS also carry "._la_003.nii.gz" AppleDouble files.
    root = tmp_path / "Task002_Heart"
    training = []
    for i in range(4):
        _case(fake, root, f"imagesTr/la_{i:03d}_0000.nii.gz", f"labelsTr/la_{i:03d}.nii.gz", i)
        training.append({"image": f"./imagesTr/la_{i:03d}.nii.gz", "label": f"./labelsTr/la_{i:03d}.nii.gz"})
        for d in ("imagesTr", "labelsTr"):
            (root / d / f"._la_{i:03d}.nii.gz").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    training.append({"image": "./imagesTr/._la_000.nii.gz", "label": "./labelsTr/._la_000.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({"name": "LeftAtrium", "modality": {"0": "MRI"},
                                                   "labels": {"0": "background", "1": "left atrium"},
                                                   "numTraining": 4, "training": training}))  # fmt: skip
    out = prepare_msd(root, tmp_path / "p", seed=0, progress=False)
    meta = json.loads((out / "dataset.json").read_text())
    assert sorted(meta["cases"]) == [f"la_{i:03d}" for i in range(4)]
    assert meta["cases"]["la_001"]["image"].endswith("la_001_0000.nii.gz")


def test_nnunet_v2_hidden_files_are_skipped(tmp_path, fake):
    root = tmp_path / "Dataset002"
    _nnunet_v2(fake, root, labels={"background": 0, "liver": 1})
    for d in ("imagesTr", "labelsTr"):
        (root / d / "._liver_000.nii.gz").write_bytes(b"\x00\x05\x16\x07")
        (root / d / ".DS_Store.nii.gz").write_bytes(b"")
    out = prepare_msd(root, tmp_path / "p", seed=0, progress=False)
    assert sorted(json.loads((out / "dataset.json").read_text())["cases"]) == [f"liver_{i:03d}" for i in range(4)]


@pytest.mark.parametrize("shift_mm,outcome", [(1e-6, "silent"), (0.05, "warning"), (0.2, "warning"), (2.0, "error")])
def test_check_pair_tolerance_is_relative_to_the_voxel_size(tmp_path, fake, shift_mm, outcome):
    aff = fake.odd_affine(spacing=(0.7, 0.9, 3.0))
    lab_aff = aff.copy()
    lab_aff[:3, 3] += shift_mm / np.sqrt(3)  # a displacement of shift_mm along the diagonal
    fake.write_nifti(tmp_path / "img.nii.gz", np.zeros(SHAPE, np.int16), aff)
    fake.write_nifti(tmp_path / "case7.nii.gz", np.ones(SHAPE, np.uint8), lab_aff)
    if outcome == "error":
        with pytest.raises(InputError, match=r"case7.nii.gz: its voxel grid is up to 2 mm away"):
            check_pair(tmp_path / "img.nii.gz", tmp_path / "case7.nii.gz", max_label=1)
        return
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        _, label, affine = check_pair(tmp_path / "img.nii.gz", tmp_path / "case7.nii.gz", max_label=1)
    geometry = [w for w in seen if issubclass(w.category, GeometryWarning)]
    assert len(geometry) == (1 if outcome == "warning" else 0)
    if geometry:
        assert "case7.nii.gz" in str(geometry[0].message)
    np.testing.assert_allclose(affine, aff, atol=1e-5)


def test_check_pair_still_rejects_other_shapes_and_rotated_grids(tmp_path, fake):
    aff = fake.odd_affine(spacing=(0.7, 0.9, 3.0))
    fake.write_nifti(tmp_path / "img.nii.gz", np.zeros(SHAPE, np.int16), aff)
    fake.write_nifti(tmp_path / "a.nii.gz", np.zeros((5, 4, 2), np.uint8), aff)
    with pytest.raises(InputError, match="a.nii.gz: shape"):
        check_pair(tmp_path / "img.nii.gz", tmp_path / "a.nii.gz", max_label=1)
    fake.write_nifti(tmp_path / "b.nii.gz", np.zeros(SHAPE, np.uint8), fake.odd_affine(theta_deg=40, spacing=(0.7, 0.9, 3.0)))
    with pytest.raises(InputError, match="b.nii.gz: its voxel grid"):
        check_pair(tmp_path / "img.nii.gz", tmp_path / "b.nii.gz", max_label=1)
