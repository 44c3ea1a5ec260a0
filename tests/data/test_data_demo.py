"""Demo phantoms: determinism, raw BTCV conventions, learnable content, the cached prepared copy."""

from __future__ import annotations

import json

import numpy as np
import pytest

from resfu_med.data import ensure_demo_data, get_dataset, make_demo_dataset, read_image
from resfu_med.data.demo import demo_case_names

SMALL = dict(n_cases=3, n_test=1, shape=(40, 40, 10))


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_bit_identical_for_one_seed(tmp_path):
    a = _files(make_demo_dataset(tmp_path / "a", seed=7, **SMALL))
    b = _files(make_demo_dataset(tmp_path / "b", seed=7, **SMALL))
    c = _files(make_demo_dataset(tmp_path / "c", seed=8, **SMALL))
    assert sorted(a) == ["dataset.json", "img/img0001.nii.gz", "img/img0005.nii.gz", "img/img0006.nii.gz",
                         "label/label0001.nii.gz", "label/label0005.nii.gz", "label/label0006.nii.gz"]  # fmt: skip
    assert a == b
    assert a["img/img0005.nii.gz"] != c["img/img0005.nii.gz"]


def test_split_names_use_synapse_ids():
    train, test = demo_case_names(12, 4)
    assert test == ["case0001", "case0002", "case0003", "case0004"]
    assert train == ["case0005", "case0006", "case0007", "case0009", "case0010", "case0011", "case0012", "case0013"]
    with pytest.raises(ValueError, match="n_test"):
        demo_case_names(3, 3)


def test_default_size_case_is_btcv_like(tmp_path):
    root = make_demo_dataset(tmp_path / "d", n_cases=2, n_test=1)
    img, geo = read_image(root / "img" / "img0001.nii.gz")
    lab, _ = read_image(root / "label" / "label0001.nii.gz")
    aff = geo.affine
    assert img.shape == (40, 128, 128) and geo.nifti_header.get_data_dtype() == np.int16
    assert img.min() >= -1024 and img.max() > 500  # air outside, bone inside
    assert not np.allclose(aff[:3, :3], np.diag(np.diag(aff[:3, :3])))  # rotated
    assert aff[0, 0] < 0 and aff[1, 1] < 0 and aff[2, 2] > 0  # BTCV-like axis flips
    zooms = geo.nifti_header.get_zooms()
    assert zooms[2] > 1.4 * zooms[0]  # anisotropic
    assert set(np.unique(lab).astype(int)) == set(range(14))  # all 13 raw organs
    # Organ HU is realistic: liver ~60, aorta ~200 with contrast, fat ~-100.
    assert 40 < np.median(img[lab == 6]) < 80 and np.median(img[lab == 8]) > 170
    assert sum(p.stat().st_size for p in root.rglob("*.nii.gz")) < 2 * 1.5e6  # 12 cases stay well under 20 MB
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["split"] == {"train": ["case0005"], "test": ["case0001"]}


def test_ensure_demo_data_caches(tmp_path, monkeypatch):
    import resfu_med.data.demo as demo

    monkeypatch.setattr(demo, "make_demo_dataset", lambda out, seed: make_demo_dataset(out, seed=seed, **SMALL))
    monkeypatch.setenv("RESFU_MED_HOME", str(tmp_path / "home"))
    root = ensure_demo_data()
    assert root.is_relative_to(tmp_path / "home")
    stamp = (root / "dataset.json").stat().st_mtime_ns
    assert ensure_demo_data() == root and (root / "dataset.json").stat().st_mtime_ns == stamp
    vol = get_dataset("demo", None, "test")[0]
    assert vol["case"] == "case0001" and vol["image"].shape == (10, 40, 40)
    assert 0.0 <= vol["image"].min() and vol["image"].max() <= 1.0
    assert set(np.unique(vol["label"])) <= set(range(9)) and len(np.unique(vol["label"])) == 9  # all 8 classes
    assert len(get_dataset("demo", None, "train")) == 2 * 10
