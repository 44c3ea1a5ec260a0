"""``prepare --dataset synapse``: intensities, label map, layout, split, geometry, idempotence, reading back."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest

from resfu_med.cli import main
from resfu_med.data import SynapseDataset, dataset_info, get_dataset, prepare_synapse
from resfu_med.errors import InputError

# docs/datasets.md written out by hand: raw BTCV label -> Synapse class.
EXPECTED_MAP = {0: 0, 1: 7, 2: 4, 3: 3, 4: 2, 5: 0, 6: 5, 7: 8, 8: 1, 9: 0, 10: 0, 11: 6, 12: 0, 13: 0}


def _expected_image(hu_xyz):
    return ((np.clip(hu_xyz.astype(np.float64), -125, 275) + 125) / 400).transpose(2, 1, 0)


def _expected_label(lab_xyz):
    return np.vectorize(EXPECTED_MAP.get)(lab_xyz).transpose(2, 1, 0)


@pytest.fixture()
def btcv(tmp_path, fake):
    raw = tmp_path / "raw"
    return raw, fake.make_btcv(raw)


def test_prepare_layout_values_and_split(btcv, tmp_path):
    raw, cases = btcv
    out = prepare_synapse(raw, tmp_path / "out", progress=False)
    lists = out / "lists" / "lists_Synapse"
    # case0001 is a TransUNet test case, 0005 and 0006 train (4 slices each).
    assert (lists / "test_vol.txt").read_text().split() == ["case0001"]
    assert (lists / "train.txt").read_text().split() == [f"case{c:04d}_slice{z:03d}" for c in (5, 6) for z in range(4)]
    hu, lab, aff = cases[5]
    for z in range(4):
        with np.load(out / "train_npz" / f"case0005_slice{z:03d}.npz") as f:
            assert f["image"].dtype == np.float32 and f["label"].dtype == np.uint8
            assert f["image"].shape == (5, 6)
            np.testing.assert_allclose(f["image"], _expected_image(hu)[z], atol=1e-6)
            np.testing.assert_array_equal(f["label"], _expected_label(lab)[z])
    hu, lab, aff = cases[1]
    with h5py.File(out / "test_vol_h5" / "case0001.npy.h5") as f:
        np.testing.assert_allclose(f["image"][:], _expected_image(hu), atol=1e-6)
        np.testing.assert_array_equal(f["label"][:], _expected_label(lab))
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["split"] == {"test": ["case0001"], "train": ["case0005", "case0006"]}
    assert meta["num_classes"] == 9 and meta["label_names"][0] == "aorta" and meta["label_names"][7] == "stomach"
    c = meta["cases"]["case0001"]
    np.testing.assert_allclose(c["affine"], aff, atol=1e-5)
    np.testing.assert_allclose(c["spacing"], [3.0, 0.9, 0.71], atol=1e-5)  # (sz, sy, sx)
    assert c["shape"] == [4, 5, 6]
    assert dataset_info("synapse", out).num_classes == 9


def test_reading_back_equals_preparing(btcv, tmp_path):
    raw, cases = btcv
    out = prepare_synapse(raw, tmp_path / "out", progress=False)
    train = SynapseDataset(out, "train")
    assert len(train) == 8
    item = train[6]  # case0006 slice 2
    hu, lab, _ = cases[6]
    assert item["case"] == "case0006" and item["image"].shape == (1, 5, 6)
    np.testing.assert_allclose(item["image"][0], _expected_image(hu)[2], atol=1e-6)
    np.testing.assert_array_equal(item["label"][0], _expected_label(lab)[2])
    vol = get_dataset("synapse", out, "test")[0]
    hu, lab, aff = cases[1]
    np.testing.assert_allclose(vol["image"], _expected_image(hu), atol=1e-6)
    np.testing.assert_array_equal(vol["label"], _expected_label(lab))
    np.testing.assert_allclose(vol["affine"], aff, atol=1e-5)
    assert vol["spacing"] == pytest.approx((3.0, 0.9, 0.71), abs=1e-5)


def test_raw_root_is_prepared_on_first_use(btcv, tmp_path, monkeypatch):
    raw, cases = btcv
    monkeypatch.setenv("RESFU_MED_HOME", str(tmp_path / "home"))
    vol = get_dataset("synapse", raw, "test", progress=False)[0]
    np.testing.assert_array_equal(vol["label"], _expected_label(cases[1][1]))
    assert (tmp_path / "home" / "prepared").is_dir()


def test_idempotent_and_overwrite(btcv, tmp_path):
    raw, _ = btcv
    out = prepare_synapse(raw, tmp_path / "out", progress=False)
    target = out / "train_npz" / "case0005_slice000.npz"
    before = target.stat().st_mtime_ns
    os.utime(target, ns=(before - 10**9, before - 10**9))
    prepare_synapse(raw, out, progress=False)
    assert target.stat().st_mtime_ns == before - 10**9  # skipped: finished cases are not rewritten
    prepare_synapse(raw, out, progress=False, overwrite=True)
    assert target.stat().st_mtime_ns != before - 10**9
    assert not list(out.rglob(".*.tmp*"))  # no temporaries left behind


def test_split_file_and_cli(btcv, tmp_path, capsys):
    raw, _ = btcv
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["case0001"], "test": ["0005", "case0006"]}))
    rc = main(["prepare", "--dataset", "synapse", "--data-root", str(raw), "--output", str(tmp_path / "o"),
               "--split-file", str(split), "--no-progress"])  # fmt: skip
    assert rc == 0
    lists = tmp_path / "o" / "lists" / "lists_Synapse"
    assert (lists / "test_vol.txt").read_text().split() == ["case0005", "case0006"]
    assert (lists / "train.txt").read_text().split()[0] == "case0001_slice000"


def test_reads_transunet_release_without_metadata(tmp_path):
    # TransUNet's own release: float labels, no dataset.json, no geometry.
    root = tmp_path / "Synapse"
    (root / "train_npz").mkdir(parents=True)
    (root / "test_vol_h5").mkdir()
    (root / "lists" / "lists_Synapse").mkdir(parents=True)
    img = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    np.savez(root / "train_npz" / "case0031_slice000.npz", image=img, label=np.array([[0, 1, 8, 2]] * 3, np.float32))
    (root / "lists" / "lists_Synapse" / "train.txt").write_text("case0031_slice000\n")
    with h5py.File(root / "test_vol_h5" / "case0008.npy.h5", "w") as f:
        f["image"] = np.zeros((2, 3, 4), np.float32)
        f["label"] = np.full((2, 3, 4), 5.0, np.float32)
    (root / "lists" / "lists_Synapse" / "test_vol.txt").write_text("case0008\n")
    item = SynapseDataset(root, "train")[0]
    assert item["case"] == "case0031" and item["label"].dtype == np.uint8
    np.testing.assert_array_equal(item["label"][0, 0], [0, 1, 8, 2])
    np.testing.assert_array_equal(item["image"][0], img)
    vol = get_dataset("synapse", root, "test")[0]
    assert vol["case"] == "case0008" and vol["spacing"] is None and vol["affine"] is None
    assert (vol["label"] == 5).all() and vol["label"].dtype == np.uint8
    with pytest.raises(InputError, match="val_vol.txt: list file not found"):
        SynapseDataset(root, "val")
