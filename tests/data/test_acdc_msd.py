"""ACDC and MSD/nnU-Net adapters: split membership, per-volume MRI / CT normalisation, label renumbering."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from resfu_med.cli import main
from resfu_med.data import ACDCDataset, MSDDataset, dataset_info, get_dataset, prepare_acdc, prepare_msd
from resfu_med.errors import InputError


def test_acdc_split_and_minmax(tmp_path, fake):
    cases = fake.make_acdc(tmp_path / "database")  # patient001 train, 019 val, 002 test (docs/datasets.md)
    out = prepare_acdc(tmp_path / "database", tmp_path / "out", progress=False)
    lists = out / "lists" / "lists_ACDC"
    assert (lists / "val_vol.txt").read_text().split() == ["patient019_frame01", "patient019_frame14"]
    assert (lists / "test_vol.txt").read_text().split() == ["patient002_frame01", "patient002_frame12"]
    assert (lists / "train.txt").read_text().split()[:4] == [
        "patient001_frame01_slice000", "patient001_frame01_slice001", "patient001_frame01_slice002",
        "patient001_frame11_slice000"]  # fmt: skip
    img, gt, aff = cases["patient002_frame12"]
    expect = ((img - img.min()) / (img.max() - img.min())).transpose(2, 1, 0)  # per-volume min-max, by hand
    vol = ACDCDataset(out, "test")[1]
    np.testing.assert_allclose(vol["image"], expect, atol=1e-6)
    np.testing.assert_array_equal(vol["label"], gt.transpose(2, 1, 0))
    np.testing.assert_allclose(vol["affine"], aff, atol=1e-5)
    assert vol["spacing"] == pytest.approx((10.0, 1.5625, 1.5625), abs=1e-5)
    item = get_dataset("acdc", out, "train")[4]  # patient001 ES slice 1
    img, gt, _ = cases["patient001_frame11"]
    np.testing.assert_allclose(item["image"][0], ((img - img.min()) / (img.max() - img.min()))[:, :, 1].T, atol=1e-6)
    info = dataset_info("acdc", out)
    assert info.label_names == ["RV", "MYO", "LV"] and info.intensity == {"kind": "mri", "mode": "minmax"}


def test_acdc_zscore_cli_cache_and_settings_change(tmp_path, fake, monkeypatch):
    cases = fake.make_acdc(tmp_path / "db")
    monkeypatch.setenv("RESFU_MED_HOME", str(tmp_path / "home"))
    # No --output: prepared into the cache, which the dataset and dataset_info then reuse for the raw folder.
    assert main(["prepare", "--dataset", "acdc", "--data-root", str(tmp_path / "db"), "--mri-norm", "zscore", "--no-progress"]) == 0
    img = cases["patient002_frame01"][0]
    zscore = ((img - img.mean()) / img.std()).transpose(2, 1, 0)
    vol = ACDCDataset(tmp_path / "db", "test", progress=False)[0]
    np.testing.assert_allclose(vol["image"], zscore, atol=1e-5)
    assert dataset_info("acdc", tmp_path / "db").intensity == {"kind": "mri", "mode": "zscore"}
    # Preparing the same output with another normalisation redoes the finished cases instead of mixing specs.
    out = prepare_acdc(tmp_path / "db", tmp_path / "o", mode="zscore", progress=False)
    prepare_acdc(tmp_path / "db", out, mode="minmax", progress=False)
    with h5py.File(out / "test_vol_h5" / "patient002_frame01.npy.h5") as f:
        np.testing.assert_allclose(f["image"][:], ((img - img.min()) / (img.max() - img.min())).transpose(2, 1, 0), atol=1e-6)


@pytest.mark.parametrize("nnunet", [False, True])
def test_msd_ct_seeded_split_and_label_renumbering(tmp_path, fake, nnunet):
    cases = fake.make_msd(tmp_path / "Task", n=5, nnunet=nnunet)
    out = prepare_msd(tmp_path / "Task", tmp_path / "out", seed=3, progress=False)
    meta = json.loads((out / "dataset.json").read_text())
    split = meta["split"]
    assert len(split["test"]) == 1 and len(split["train"]) == 4 and set(split["train"] + split["test"]) == set(cases)
    assert prepare_msd(tmp_path / "Task", tmp_path / "out2", seed=3, progress=False) and json.loads(
        (tmp_path / "out2" / "dataset.json").read_text())["split"] == split  # same seed, same split
    assert meta["label_names"] == ["organ", "tumour"] and meta["num_classes"] == 3
    case = split["test"][0]
    img, lab = cases[case]
    vol = MSDDataset(out, "test")[0]
    np.testing.assert_allclose(vol["image"], ((np.clip(img, -125, 275) + 125) / 400).transpose(2, 1, 0), atol=1e-6)
    np.testing.assert_array_equal(vol["label"], np.where(lab == 3, 2, lab).transpose(2, 1, 0))  # 3 -> 2
    info = dataset_info("msd", tmp_path / "Task")
    assert info.label_names == ["organ", "tumour"] and info.modality == "CT"


def test_msd_mri_split_file(tmp_path, fake):
    cases = fake.make_msd(tmp_path / "T", n=4, modality="T2")
    (tmp_path / "s.json").write_text(json.dumps({"train": ["organ_000", "organ_001"], "val": ["organ_002"], "test": ["organ_003"]}))
    out = prepare_msd(tmp_path / "T", tmp_path / "o", split_file=tmp_path / "s.json", progress=False)
    img = cases["organ_002"][0].astype(np.float64)
    vol = get_dataset("msd", out, "val")[0]
    # MRI default: z-score of the non-zero voxels clipped to their 0.5-99.5 percentiles (by hand; zeros stay 0)
    body = img != 0
    v = np.clip(img[body], *np.percentile(img[body], [0.5, 99.5]))
    expect = np.zeros_like(img)
    expect[body] = (v - v.mean()) / v.std()
    np.testing.assert_allclose(vol["image"], expect.transpose(2, 1, 0), atol=1e-5)
    assert dataset_info("msd", out).intensity == {"kind": "mri", "mode": "robust", "percentiles": [0.5, 99.5]}
    out = prepare_msd(tmp_path / "T", tmp_path / "m", split_file=tmp_path / "s.json", mri_mode="minmax", progress=False)
    np.testing.assert_allclose(get_dataset("msd", out, "val")[0]["image"],
                               ((img - img.min()) / (img.max() - img.min())).transpose(2, 1, 0), atol=1e-6)
    assert dataset_info("msd", out).intensity == {"kind": "mri", "mode": "minmax"}


def test_msd_undeclared_label(tmp_path, fake):
    fake.make_msd(tmp_path / "T", n=3)
    fake.write_nifti(tmp_path / "T" / "labelsTr" / "organ_001.nii.gz", np.full((5, 4, 3), 2, np.uint8), fake.odd_affine(5))
    (tmp_path / "s.json").write_text(json.dumps({"train": ["organ_000", "organ_001"], "test": ["organ_002"]}))
    with pytest.raises(InputError, match=r"organ_001.nii.gz: label values \[2\] are not declared"):
        prepare_msd(tmp_path / "T", tmp_path / "o", split_file=tmp_path / "s.json", progress=False)
