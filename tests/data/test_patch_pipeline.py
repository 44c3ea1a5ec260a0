"""The 3D training data: training volumes stacked from prepared slices, and the patch pipeline (RandCropByPosNegLabeld)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch

from resfu_med.data import PreparedDataset, check_patch_size, get_dataset, get_patch_transforms
from resfu_med.errors import InputError


def _write_slices(root: Path, cases: dict[str, int], order_seed: int = 0, shape=(6, 5), skip=()) -> None:
    """Slices whose image value is ``100 * case index + z`` and label ``z % 3``, listed in a shuffled order."""
    (root / "train_npz").mkdir(parents=True)
    (root / "lists" / "lists_Synapse").mkdir(parents=True)
    names = []
    for ci, (case, depth) in enumerate(cases.items()):
        for z in range(depth):
            if (case, z) in skip:
                continue
            name = f"{case}_slice{z:03d}"
            buf = io.BytesIO()
            np.savez(buf, image=np.full(shape, 100.0 * ci + z, np.float32), label=np.full(shape, z % 3, np.uint8))
            (root / "train_npz" / f"{name}.npz").write_bytes(buf.getvalue())
            names.append(name)
    np.random.default_rng(order_seed).shuffle(names)
    (root / "lists" / "lists_Synapse" / "train.txt").write_text("\n".join(names) + "\n")


def test_training_volumes_are_stacked_in_slice_order(tmp_path):
    _write_slices(tmp_path, {"case0005": 4, "case0006": 3})
    ds = PreparedDataset(tmp_path, "train", volumes=True)
    items = {ds[i]["case"]: ds[i] for i in range(len(ds))}
    assert len(ds) == 2 and set(items) == {"case0005", "case0006"}
    a, b = items["case0005"], items["case0006"]
    assert a["image"].shape == (4, 6, 5) and b["image"].shape == (3, 6, 5)
    assert a["image"][:, 0, 0].tolist() == [0, 1, 2, 3] and b["image"][:, 0, 0].tolist() == [100, 101, 102]
    assert a["label"].dtype == np.uint8 and a["label"][:, 0, 0].tolist() == [0, 1, 2, 0]
    assert len(PreparedDataset(tmp_path, "train")) == 7  # without volumes=True: one item per slice


def test_stacking_refuses_gaps_and_mismatched_slices(tmp_path):
    _write_slices(tmp_path / "gap", {"case0005": 4}, skip={("case0005", 2)})
    with pytest.raises(InputError, match=r"train\.txt: case case0005 lists slices 0\.\.3 with gaps \(missing \[2\]\)"):
        PreparedDataset(tmp_path / "gap", "train", volumes=True)
    _write_slices(tmp_path / "odd", {"case0005": 3})
    buf = io.BytesIO()
    np.savez(buf, image=np.zeros((7, 5), np.float32), label=np.zeros((7, 5), np.uint8))
    (tmp_path / "odd" / "train_npz" / "case0005_slice001.npz").write_bytes(buf.getvalue())
    ds = PreparedDataset(tmp_path / "odd", "train", volumes=True)
    with pytest.raises(InputError, match=r"case0005_slice001\.npz: slice of shape \(7, 5\).*cannot stack"):
        ds[0]


def test_demo_training_volumes_match_the_test_geometry():
    train = get_dataset("demo", None, "train", volumes=True, progress=False)
    assert len(train) == 8  # the 8 demo training phantoms, each 40 x 128 x 128
    item = train[0]
    assert item["image"].shape == item["label"].shape == (40, 128, 128)
    assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0  # normalised like the slices
    assert set(np.unique(item["label"])) <= set(range(9))


def _volume(shape=(24, 40, 40), blob=(slice(3, 6), slice(30, 34), slice(4, 8))):
    label = np.zeros(shape, np.uint8)
    label[blob] = 2
    label[0:2, 0:2, 0:2] = 1
    return {"image": label.astype(np.float32) + 0.25, "label": label, "case": "c"}


@pytest.mark.parametrize("patch", [(8, 16, 16), (16, 8, 24)])
def test_patches_keep_image_and_label_aligned(patch):
    xform = get_patch_transforms("train", patch, num_samples=6, seed=3)
    for _ in range(5):  # rotations and flips drawn many times: image and label must move together
        patches = xform(_volume())
        assert len(patches) == 6
        for p in patches:
            assert tuple(p["image"].shape) == tuple(p["label"].shape) == (1, *patch)
            assert p["image"].dtype == torch.float32 and p["label"].dtype == torch.int64
            assert torch.equal(p["image"], p["label"].float() + 0.25)  # the image is label + 0.25 everywhere
            assert p["case"] == "c"


def test_positive_patches_centre_on_foreground():
    # A 3 x 4 x 4 blob in a 24 x 40 x 40 volume: a uniformly random 8 x 16 x 16 crop contains it with probability
    # (8 + 2)(16 + 3)(16 + 3) / (17 * 25 * 25) ~ 0.34 at most; pos = neg = 1 puts half of the centres on foreground.
    label = np.zeros((24, 40, 40), np.uint8)
    label[10:13, 5:9, 30:34] = 2
    vol = {"image": np.ones(label.shape, np.float32), "label": label}
    patches = get_patch_transforms("train", (8, 16, 16), num_samples=400, seed=0)(vol)
    centre_fg = np.mean([int(p["label"][0, 4, 8, 8] == 2) for p in patches])
    assert 0.4 < centre_fg < 0.6  # a random crop's centre hits the 48-voxel blob with probability < 0.005


def test_small_volumes_are_padded_and_val_keeps_the_volume():
    vol = {"image": np.ones((5, 10, 12), np.float32), "label": np.ones((5, 10, 12), np.uint8)}
    (p,) = get_patch_transforms("train", (16, 16, 16), num_samples=1, seed=0)(vol)
    assert tuple(p["image"].shape) == (1, 16, 16, 16) and float(p["image"].sum()) == 5 * 10 * 12
    v = get_patch_transforms("val", (16, 16, 16))(vol)
    assert tuple(v["image"].shape) == (1, 16, 16, 16) and int(v["label"].sum()) == 5 * 10 * 12


def test_patch_arguments_are_checked():
    assert check_patch_size([32, 96, 96], divisor=16) == (32, 96, 96)
    for bad in ([32, 96], [0, 16, 16], [16.5, 16, 16], "abc", None):
        with pytest.raises(ValueError, match="three positive integers"):
            check_patch_size(bad)
    with pytest.raises(ValueError, match=r"multiple of 16 \(the network halves its input 4 times\)"):
        check_patch_size([40, 96, 96], divisor=16)
    with pytest.raises(ValueError, match="phase"):
        get_patch_transforms("test")
    with pytest.raises(ValueError, match="num_samples"):
        get_patch_transforms("train", (16, 16, 16), num_samples=0)
