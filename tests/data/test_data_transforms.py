"""TransUNet augmentation as MONAI transforms: branches, label handling, resizing, seeding; intensity specs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from resfu_med.data import get_transforms, make_intensity_transform


def _slice(h=16, w=16):
    rng = np.random.default_rng(0)
    label = rng.integers(0, 9, size=(1, h, w)).astype(np.uint8)
    image = rng.random((1, h, w)).astype(np.float32)
    return {"image": image, "label": label, "case": "case0005"}


def _dihedral(a):
    out = []
    for k in range(4):
        r = np.rot90(a, k)
        out += [r, r[::-1], r[:, ::-1]]
    return out


def test_train_branches_and_label_values():
    d = _slice()
    xform = get_transforms("synapse", "train", img_size=16, seed=3)
    kinds = {"dihedral": 0, "rotated": 0}
    for _ in range(100):
        out = xform(dict(d))
        assert out["image"].shape == (1, 16, 16) and out["image"].dtype == torch.float32
        assert out["label"].dtype == torch.int64 and out["case"] == "case0005"
        lab = out["label"][0].numpy()
        assert set(np.unique(lab)) <= set(range(9))  # nearest only: no new label values
        img = out["image"][0].numpy()
        match = [i for i, cand in enumerate(_dihedral(d["image"][0])) if np.allclose(img, cand)]
        if match:
            kinds["dihedral"] += 1
            np.testing.assert_array_equal(lab, _dihedral(d["label"][0])[match[0]])  # label moves with the image
        else:
            kinds["rotated"] += 1
    # TransUNet: rot90+flip w.p. 1/2, else a rotation w.p. 1/2 (else unchanged, which counts as dihedral): 3/4 vs 1/4.
    assert 0.6 < kinds["dihedral"] / 100 < 0.9


def test_seeded_pipelines_agree():
    d = _slice()
    a = [get_transforms("demo", "train", 24, seed=11)(dict(d)) for _ in range(1)]
    x1, x2 = get_transforms("demo", "train", 24, seed=11), get_transforms("demo", "train", 24, seed=11)
    for _ in range(5):
        o1, o2 = x1(dict(d)), x2(dict(d))
        assert torch.equal(o1["image"], o2["image"]) and torch.equal(o1["label"], o2["label"])
    assert a[0]["image"].shape == (1, 24, 24)


def test_val_resizes_with_nearest_labels():
    d = {"image": np.full((1, 8, 8), 0.25, np.float32), "label": np.zeros((1, 8, 8), np.uint8), "case": "c"}
    d["label"][0, :4, :] = 3  # top half class 3
    out = get_transforms("acdc", "val", img_size=32)(d)
    assert out["image"].shape == (1, 32, 32)
    np.testing.assert_allclose(out["image"].numpy(), 0.25, atol=1e-5)
    lab = out["label"][0].numpy()
    assert (lab[:16] == 3).all() and (lab[16:] == 0).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match="phase"):
        get_transforms("synapse", "test")
    with pytest.raises(ValueError, match="kind"):
        make_intensity_transform({"kind": "pet"})
    with pytest.raises(ValueError, match="a_max"):
        make_intensity_transform({"kind": "ct", "a_min": 5, "a_max": 5})


def test_intensity_specs_hand_computed():
    x = np.array([[-1000.0, -125.0, 0.0], [75.0, 275.0, 1000.0]])
    np.testing.assert_allclose(make_intensity_transform({"kind": "ct", "a_min": -125, "a_max": 275})(x),
                               [[0, 0, 0.3125], [0.5, 1, 1]], atol=1e-7)  # fmt: skip
    np.testing.assert_allclose(make_intensity_transform({"kind": "mri", "mode": "minmax"})(x),
                               (x + 1000) / 2000, atol=1e-6)  # fmt: skip
    np.testing.assert_allclose(make_intensity_transform({"kind": "mri", "mode": "zscore"})(x),
                               (x - x.mean()) / x.std(), atol=1e-5)  # fmt: skip
