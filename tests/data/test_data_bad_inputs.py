"""Every bad input gives an InputError naming the file; the CLI prints one line; prepared cases are never lost."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from resfu_med.cli import main
from resfu_med.data import prepare_synapse, read_image
from resfu_med.errors import InputError


@pytest.fixture()
def raw(tmp_path, fake):
    root = tmp_path / "raw"
    fake.make_btcv(root, ids=(1, 5))
    return root


def _prep(raw, tmp_path):
    return prepare_synapse(raw, tmp_path / "out", progress=False)


def test_missing_folder(tmp_path):
    with pytest.raises(InputError, match="nowhere: folder not found"):
        prepare_synapse(tmp_path / "nowhere", tmp_path / "out", progress=False)


def test_missing_label_folder(raw, tmp_path):
    for f in (raw / "label").iterdir():
        f.unlink()
    (raw / "label").rmdir()
    with pytest.raises(InputError, match=r"raw/label: folder not found"):
        _prep(raw, tmp_path)


def test_image_without_label(raw, tmp_path):
    (raw / "label" / "label0005.nii.gz").unlink()
    with pytest.raises(InputError, match=r"img0005.nii.gz: no matching label file .*label0005.nii.gz"):
        _prep(raw, tmp_path)


def test_shape_mismatch(raw, tmp_path, fake):
    fake.write_nifti(raw / "label" / "label0005.nii.gz", np.zeros((6, 5, 3), np.uint8), fake.odd_affine(15))
    with pytest.raises(InputError, match=r"label0005.nii.gz: shape \(6, 5, 3\) differs from image"):
        _prep(raw, tmp_path)


def test_affine_mismatch(raw, tmp_path, fake):
    fake.write_nifti(raw / "label" / "label0005.nii.gz", np.zeros((6, 5, 4), np.uint8), fake.odd_affine(40))
    with pytest.raises(InputError, match=r"label0005.nii.gz: its voxel grid is up to .* mm away from the image"):
        _prep(raw, tmp_path)


@pytest.mark.parametrize("bad", [14, 2.5, -1])
def test_labels_outside_expected_set(raw, tmp_path, fake, bad):
    lab = np.zeros((6, 5, 4), np.float32)
    lab[0, 0, 0] = bad
    fake.write_nifti(raw / "label" / "label0005.nii.gz", lab, fake.odd_affine(15, spacing=(0.75, 0.9, 3.0)))
    with pytest.raises(InputError, match=r"label0005.nii.gz: label values outside 0..13"):
        _prep(raw, tmp_path)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_inf(raw, tmp_path, fake, bad):
    img = np.zeros((6, 5, 4), np.float32)
    img[1, 2, 3] = bad
    fake.write_nifti(raw / "img" / "img0005.nii.gz", img, fake.odd_affine(15, spacing=(0.75, 0.9, 3.0)))
    with pytest.raises(InputError, match=r"img0005.nii.gz: 1 voxel\(s\) are NaN or infinite"):
        _prep(raw, tmp_path)


def test_truncated_and_non_nifti(raw, tmp_path):
    path = raw / "img" / "img0005.nii.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"img0005.nii.gz: (truncated|not a readable)"):
        read_image(path)
    path.write_bytes(gzip.compress(b"this is not an image" * 30))
    with pytest.raises(InputError, match=r"img0005.nii.gz: not a (readable )?NIfTI"):
        read_image(path)
    with pytest.raises(InputError, match="no such file"):
        read_image(raw / "img" / "img0099.nii.gz")


def test_wrong_rank(tmp_path, fake):
    path = fake.write_nifti(tmp_path / "flat.nii.gz", np.zeros((4, 5), np.float32), np.eye(4))
    with pytest.raises(InputError, match=r"flat.nii.gz: expected a 3D image"):
        read_image(path)


def test_empty_split(raw, tmp_path):
    (tmp_path / "split.json").write_text(json.dumps({"train": ["case0001", "case0005"], "test": []}))
    with pytest.raises(InputError, match=r"split.json: the 'test' split is empty"):
        prepare_synapse(raw, tmp_path / "out", split_file=tmp_path / "split.json", progress=False)
    (raw / "img" / "img0001.nii.gz").unlink()
    (raw / "label" / "label0001.nii.gz").unlink()
    with pytest.raises(InputError, match=r"'test' split is empty"):  # no TransUNet test case in the release
        _prep(raw, tmp_path)


def test_cli_one_line_and_prepared_cases_kept(raw, tmp_path, fake, capsys):
    out = tmp_path / "out"
    assert main(["prepare", "--dataset", "synapse", "--data-root", str(raw), "--output", str(out), "--no-progress"]) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.parent.name != "lists"}
    # A new, broken case (sorted after the good ones) appears; the rerun fails on it.
    fake.make_btcv(raw, ids=(6,))
    (raw / "img" / "img0006.nii.gz").write_bytes(b"garbage")
    capsys.readouterr()
    assert main(["prepare", "--dataset", "synapse", "--data-root", str(raw), "--output", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "img0006.nii.gz" in err and err.startswith("resfu-med prepare: error:")
    for p, data in before.items():
        assert p.read_bytes() == data, f"{p} was touched"
    assert not list(out.rglob("case0006*")) and not list(out.rglob(".*.tmp*"))
