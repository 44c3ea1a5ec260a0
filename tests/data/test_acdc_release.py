"""ACDC as users download it.

1. The preprocessed copy of TransUNet follow-ups (the ``ACDCdataset`` of MISSFormer / Swin-Unet / CASCADE-style repos,
   lists as in e.g. sotiraslab/AgileFormer ``lists/lists_ACDC``): ``train/`` and ``valid/`` hold slices
   ``case_001_sliceED_0.npz`` (keys ``img``, ``label``; 2D), ``test/`` holds volumes ``case_002_volume_ED.npz`` (keys
   ``img``, ``label``; ``(Z, H, W)``); list files name the files (``valid.txt`` in text order: ..._0, _1, _10, _2).
2. The raw release whose ``testing/`` patients carry no ``_gt`` files.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from resfu_med.data import dataset_info, get_dataset, prepare_acdc
from resfu_med.data.registry import _prepared_root
from resfu_med.errors import InputError


def _copy(root, train=(1, 4), valid=(19,), test=(2,), depth=11, seed=0):
    rng = np.random.default_rng(seed)
    vols = {}
    for folder, patients in (("train", train), ("valid", valid)):
        (root / folder).mkdir(parents=True)
        for p in patients:
            for phase in ("ED", "ES"):
                vol = rng.random((depth, 6, 5)).astype(np.float32)
                lab = rng.integers(0, 4, (depth, 6, 5)).astype(np.float32)
                vols[f"case_{p:03d}_{phase}"] = (vol, lab)
                for z in range(depth):
                    np.savez(root / folder / f"case_{p:03d}_slice{phase}_{z}.npz", img=vol[z], label=lab[z])
    (root / "test").mkdir()
    for p in test:
        for phase in ("ED", "ES"):
            vol = rng.random((depth, 6, 5)).astype(np.float32)
            lab = rng.integers(0, 4, (depth, 6, 5)).astype(np.float32)
            vols[f"case_{p:03d}_{phase}"] = (vol, lab)
            np.savez(root / "test" / f"case_{p:03d}_volume_{phase}.npz", img=vol, label=lab)
    return vols


def test_follow_up_copy_is_read_directly_with_its_split(tmp_path):
    root = tmp_path / "ACDC"
    vols = _copy(root)
    before = sorted(p.name for p in root.rglob("*"))
    assert _prepared_root("acdc", root, progress=False) == root  # no conversion step
    train = get_dataset("acdc", root, "train")
    assert len(train) == 2 * 2 * 11
    assert [it["path"].rsplit("/", 1)[1] for it in train.data][:3] == [
        "case_001_sliceED_0.npz", "case_001_sliceED_1.npz", "case_001_sliceED_2.npz"]  # fmt: skip
    item = train[10]
    np.testing.assert_array_equal(item["image"][0], vols["case_001_ED"][0][10])
    assert item["label"].dtype == np.uint8 and item["case"] == "case_001_ED"
    val = get_dataset("acdc", root, "val")  # valid/ slices stacked in slice-number order (10 after 9)
    assert [v["case"] for v in val] == ["case_019_ED", "case_019_ES"]
    np.testing.assert_array_equal(val[0]["image"], vols["case_019_ED"][0])
    np.testing.assert_array_equal(val[1]["label"], vols["case_019_ES"][1].astype(np.uint8))
    test = get_dataset("acdc", root, "test")
    assert [v["case"] for v in test] == ["case_002_ED", "case_002_ES"]
    np.testing.assert_array_equal(test[1]["image"], vols["case_002_ES"][0])
    assert test[0]["spacing"] is None
    stacked = get_dataset("acdc", root, "train", volumes=True)  # 3D patch training
    assert [v["case"] for v in stacked] == ["case_001_ED", "case_001_ES", "case_004_ED", "case_004_ES"]
    info = dataset_info("acdc", root)
    assert info.label_names == ["RV", "MYO", "LV"] and info.num_classes == 4
    assert sorted(p.name for p in root.rglob("*")) == before  # read-only


def test_copy_lists_win_and_name_files(tmp_path):
    root = tmp_path / "ACDC"
    _copy(root, train=(1, 4))
    lists = root / "lists" / "lists_ACDC"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("".join(f"case_004_sliceES_{z}.npz\n" for z in (0, 1, 10, 2)))
    names = [it["path"].rsplit("/", 1)[1] for it in get_dataset("acdc", root, "train").data]
    assert names == ["case_004_sliceES_0.npz", "case_004_sliceES_1.npz", "case_004_sliceES_10.npz", "case_004_sliceES_2.npz"]
    (lists / "train.txt").write_text("case_004_sliceES_99.npz\n")
    with pytest.raises(InputError, match="case_004_sliceES_99.npz: listed but missing"):
        get_dataset("acdc", root, "train")


def test_copy_with_gaps_in_a_validation_volume_is_one_clear_error(tmp_path):
    root = tmp_path / "ACDC"
    _copy(root)
    (root / "valid" / "case_019_sliceES_4.npz").unlink()
    with pytest.raises(InputError, match="case case_019_ES has slices"):
        get_dataset("acdc", root, "val")


def test_raw_testing_patients_without_ground_truth(tmp_path, fake):
    db = tmp_path / "database"
    fake.make_acdc(db, patients=(1, 2, 19, 101))
    d = db / "training" / "patient101"
    testing = db / "testing" / "patient101"
    testing.parent.mkdir(parents=True)
    shutil.move(str(d), str(testing))
    for gt in testing.glob("*_gt.nii.gz"):  # the testing/ set of some copies: images only
        gt.unlink()
    out = prepare_acdc(db, tmp_path / "out", progress=False)  # default split: 101 is not used, so not validated
    assert "patient101_frame01" not in json.loads((out / "dataset.json").read_text())["cases"]
    (tmp_path / "s.json").write_text(json.dumps({"train": ["patient001", "patient101"], "test": ["patient002"]}))
    with pytest.raises(InputError, match=r"patient101_frame01_gt.nii.gz: no ground truth for the ED frame, and split 'train' uses patient101"):
        prepare_acdc(db, tmp_path / "out2", split_file=tmp_path / "s.json", progress=False)


def test_prepare_on_the_copy_says_it_needs_none(tmp_path):
    root = tmp_path / "ACDC"
    _copy(root)
    with pytest.raises(InputError, match="preprocessed ACDC copy .* needs no prepare"):
        prepare_acdc(root, tmp_path / "out", progress=False)
