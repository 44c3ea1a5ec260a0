"""Synapse as TransUNet distributes it: ``train_npz/`` + ``test_vol_h5/`` and nothing else (the list files live in
TransUNet's code repository: ``lists/lists_Synapse/train.txt``, ``test_vol.txt``), class names of copies labelled in
another order, and the in-slice orientation of the released arrays against the raw BTCV NIfTI voxel grid.

Layout as read by TransUNet's ``datasets/dataset_synapse.py``: ``train_npz/case0005_slice000.npz`` with keys ``image``
and ``label`` (2D ``(H, W)``), ``test_vol_h5/case0001.npy.h5`` with datasets ``image`` and ``label`` ``(Z, H, W)``.
"""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from resfu_med.data import dataset_info, get_dataset, prepare_synapse
from resfu_med.data.registry import _prepared_root
from resfu_med.data.synapse import SYNAPSE_CLASSES, SYNAPSE_LABEL_MAP
from resfu_med.engine.predictor import InferOptions, infer_file
from resfu_med.engine.preparation import complete_config
from resfu_med.errors import InputError

# the order of SAMed's preprocessing (hitachinsk/SAMed, preprocess/README.md): raw BTCV value order
SAMED_ORDER = ["spleen", "right kidney", "left kidney", "gallbladder", "liver", "stomach", "aorta", "pancreas"]


def _release(root, train=(("case0031", 3), ("case0005", 2), ("case0010", 2)), test=("case0008", "case0001"), seed=0):
    """TransUNet's download as its authors ship it: float32 images in [0, 1], float32 labels, no lists/."""
    rng = np.random.default_rng(seed)
    (root / "train_npz").mkdir(parents=True)
    (root / "test_vol_h5").mkdir()
    for case, depth in train:  # written in TransUNet's list order, which is not sorted
        for z in range(depth):
            np.savez(root / "train_npz" / f"{case}_slice{z:03d}.npz", image=rng.random((8, 8), np.float32),
                     label=rng.integers(0, 9, (8, 8)).astype(np.float32))  # fmt: skip
    for case in test:
        with h5py.File(root / "test_vol_h5" / f"{case}.npy.h5", "w") as f:
            f["image"] = rng.random((3, 8, 8), np.float32)
            f["label"] = rng.integers(0, 9, (3, 8, 8)).astype(np.float32)
    (root / "train_npz" / "._case0005_slice000.npz").write_bytes(b"\x00\x05\x16\x07")  # macOS AppleDouble
    return root


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_download_without_lists_is_read_with_sorted_lists_from_the_files(tmp_path, capsys):
    root = _release(tmp_path / "Synapse")
    before = _files(root)
    assert _prepared_root("synapse", root, progress=False) == root  # not mistaken for raw BTCV (img/ label/)
    train = get_dataset("synapse", root, "train")
    assert [it["case"] for it in train.data] == ["case0005"] * 2 + ["case0010"] * 2 + ["case0031"] * 3
    assert [it["path"].rsplit("/", 1)[1] for it in train.data][:3] == [
        "case0005_slice000.npz", "case0005_slice001.npz", "case0010_slice000.npz"]  # fmt: skip
    item = train[0]
    assert item["image"].shape == (1, 8, 8) and item["label"].dtype == np.uint8
    test = get_dataset("synapse", root, "test")
    assert [test[i]["case"] for i in range(len(test))] == ["case0001", "case0008"]
    get_dataset("synapse", root, "train")
    err = capsys.readouterr().err
    assert err.count("has no lists/ folder") == 1  # said once, in one line
    assert "7 train_npz/ slices" in err and "2 test_vol_h5/ volumes" in err
    with pytest.raises(InputError, match="split 'val' needs a list file"):
        get_dataset("synapse", root, "val")
    assert _files(root) == before  # the input folder stays untouched
    info = dataset_info("synapse", root)
    assert info.label_names == SYNAPSE_CLASSES and info.num_classes == 9


def test_user_lists_win(tmp_path):
    root = _release(tmp_path / "Synapse")
    lists = root / "lists" / "lists_Synapse"  # copied from TransUNet's repository: its (unsorted) order is kept
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("case0031_slice000\ncase0031_slice001\ncase0005_slice000\n")
    (lists / "test_vol.txt").write_text("case0008\n")
    assert [it["path"].rsplit("/", 1)[1] for it in get_dataset("synapse", root, "train").data] == [
        "case0031_slice000.npz", "case0031_slice001.npz", "case0005_slice000.npz"]  # fmt: skip
    assert [v["case"] for v in get_dataset("synapse", root, "test")] == ["case0008"]


def test_class_names_of_a_copy_in_another_order(tmp_path):
    root = _release(tmp_path / "SAMedSynapse")
    (root / "dataset.json").write_text(json.dumps({"label_names": SAMED_ORDER}))
    assert dataset_info("synapse", root).label_names == SAMED_ORDER
    (root / "dataset.json").unlink()
    cfg = {"data": {"dataset": "synapse", "root": str(root), "img_size": 32, "class_names": SAMED_ORDER},
           "model": {"name": "unet", "upsampler": None}}
    assert complete_config(cfg)["data"]["label_names"] == SAMED_ORDER
    cfg["data"] = {"dataset": "synapse", "root": str(root), "img_size": 32, "class_names": SAMED_ORDER[:7]}
    with pytest.raises(InputError, match="--class-names: 7 name"):
        complete_config(cfg)


class _MemorisedRelease(torch.nn.Module):
    """A 'perfectly trained' 2D model of the release: it recognises each training slice exactly as the release
    stores it (orientation included) and outputs that slice's label; any other view of a slice is an error."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, num_classes: int = 9):
        super().__init__()
        self.register_buffer("images", torch.from_numpy(images.astype(np.float32)))
        self.register_buffer("labels", torch.from_numpy(labels.astype(np.int64)))
        self.num_classes = num_classes

    def forward(self, x):
        d = ((x[:, 0, None] - self.images[None]) ** 2).flatten(2).sum(-1)  # (N, Z)
        best, idx = d.min(dim=1)
        assert float(best.max()) < 1e-8, "a slice the model never saw: in-slice orientation differs from the release"
        return torch.nn.functional.one_hot(self.labels[idx], self.num_classes).permute(0, 3, 1, 2).float() * 10


def test_release_orientation_matches_raw_btcv_and_infer_writes_it_back(tmp_path, fake):
    # An asymmetric volume: an L-shaped "liver" (raw 6) touching the first x columns, a "spleen" (raw 1) blob
    # elsewhere, under BTCV-like flipped axes. In-slice X != Y content, so a transpose or flip would be caught.
    hu = np.full((16, 16, 5), -1000, np.int16)
    lab = np.zeros((16, 16, 5), np.uint8)
    lab[0:10, 0:3, :] = 6
    lab[0:3, 0:12, :] = 6
    lab[11:14, 9:15, 1:4] = 1
    hu[lab == 6], hu[lab == 1] = 60, 200
    hu[:, :, 2] += 5  # every slice different
    hu[:, :, 3] += 10
    hu[:, :, 4] += 15
    hu[:, :, 1] += 20
    aff = np.diag([-0.8, -0.8, 2.5, 1.0])
    img_path = fake.write_nifti(tmp_path / "raw" / "img" / "img0005.nii.gz", hu, aff)
    lab_path = fake.write_nifti(tmp_path / "raw" / "label" / "label0005.nii.gz", lab, aff)
    fake.write_nifti(tmp_path / "raw" / "img" / "img0001.nii.gz", hu, aff)
    fake.write_nifti(tmp_path / "raw" / "label" / "label0001.nii.gz", lab, aff)

    # The release's arrays, as the public preprocessing makes them: ITK's array order (z, y, x) of the NIfTI, the
    # order TransUNet's test.py assumes when it writes predictions with sitk.GetImageFromArray.
    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(img_path))).astype(np.float32)
    release_image = (np.clip(ct, -125, 275) + 125) / 400
    raw_label = sitk.GetArrayFromImage(sitk.ReadImage(str(lab_path)))
    release_label = np.zeros_like(raw_label)
    for raw_value, cls in SYNAPSE_LABEL_MAP.items():
        release_label[raw_label == raw_value] = cls

    # Layout 1 (raw BTCV prepared by resfu-med) and layout 2 (TransUNet's release) hold the same slices.
    out = prepare_synapse(tmp_path / "raw", tmp_path / "prepared", progress=False)
    with h5py.File(out / "test_vol_h5" / "case0001.npy.h5") as f:
        np.testing.assert_allclose(f["image"][:], release_image, atol=1e-6)
        np.testing.assert_array_equal(f["label"][:], release_label)

    # A model trained on the release, run by `resfu-med infer` on the raw NIfTI, writes its segmentation onto the
    # NIfTI's own voxel grid: the raw organs come back where they are.
    model = _MemorisedRelease(release_image, release_label).eval()
    config = {"model": {"name": "transunet"}, "data": {"num_classes": 9, "img_size": 16,
                                                       "intensity": {"kind": "ct", "a_min": -125.0, "a_max": 275.0}}}
    (tmp_path / "seg").mkdir()
    seg_path = infer_file(img_path, tmp_path / "seg", model, config, InferOptions(progress=False))[0]
    import nibabel as nib

    seg = nib.load(str(seg_path))
    np.testing.assert_allclose(seg.affine, aff)
    expected = np.zeros_like(lab)
    expected[lab == 6], expected[lab == 1] = SYNAPSE_LABEL_MAP[6], SYNAPSE_LABEL_MAP[1]
    np.testing.assert_array_equal(np.asarray(seg.dataobj), expected)


def test_prepare_on_the_download_says_it_needs_none(tmp_path):
    from resfu_med.cli import main

    root = _release(tmp_path / "Synapse")
    with pytest.raises(InputError, match="TransUNet's preprocessed release .* needs no prepare"):
        prepare_synapse(root, tmp_path / "out", progress=False)
    assert main(["prepare", "--dataset", "synapse", "--data-root", str(root), "--output", str(tmp_path / "o")]) == 2


def test_an_interrupted_prepare_is_not_taken_for_the_download(tmp_path, fake):
    raw = tmp_path / "raw"
    fake.make_btcv(raw)
    out = prepare_synapse(raw, tmp_path / "out", progress=False)
    import shutil

    shutil.rmtree(out / "lists")  # as if stopped before the lists were written
    (out / "dataset.json").unlink()
    with pytest.raises(InputError, match="unfinished `resfu-med prepare` output"):
        get_dataset("synapse", out, "train")
