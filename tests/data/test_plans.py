"""The dataset fingerprint and plans written by ``prepare`` (data/plans.py), checked against hand-computed values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from resfu_med.data.layout import CaseSource, PreparedCase, write_prepared
from resfu_med.data.plans import make_plan, read_plans
from resfu_med.errors import InputError

# (shape (Z, Y, X), spacing (sz, sy, sx)) of the training cases, and one test case that must not shape the plan.
TRAIN = {"a": ((10, 96, 80), (2.0, 0.5, 0.5)), "b": ((20, 60, 60), (1.0, 1.0, 1.0)), "c": ((12, 90, 90), (3.0, 0.8, 0.8))}
TEST = {"d": ((5, 500, 500), (9.0, 0.1, 0.1))}


def _prepare(root: Path) -> Path:
    cases = {**TRAIN, **TEST}

    def load(src: CaseSource) -> PreparedCase:
        shape, spacing = cases[src.case]
        label = np.zeros(shape, np.uint8)
        label[:, :4, :5] = 1  # 20 voxels per slice of class 1 with intensity 2, 1 voxel per slice of class 2 (4)
        label[:, -1, -1] = 2
        image = np.where(label == 1, 2.0, np.where(label == 2, 4.0, 0.0)).astype(np.float32)
        return PreparedCase(image, label, np.diag([*spacing[::-1], 1.0]), spacing)

    sources = [CaseSource(c, "train" if c in TRAIN else "test", root / f"{c}.nii.gz", root / f"{c}_seg.nii.gz")
               for c in cases]
    for src in sources:  # the source files are only stamped (size, mtime), never read here
        for f in (src.image, src.label):
            f.touch()
    return write_prepared(root / "prepared", sources, load, info={"dataset": "synthetic", "modality": "CT",
                                                                   "label_names": ["liver", "vessel", "tumour"]},
                          list_name="Synthetic", progress=False)


def test_plan_of_a_synthetic_dataset_is_the_hand_computed_one(tmp_path):
    root = _prepare(tmp_path)
    plans = read_plans(root)
    fp = plans["fingerprint"]
    assert fp["num_cases"] == 3  # the test case is left out
    assert fp["spacing"]["median"] == [2.0, 0.8, 0.8] and fp["spacing"]["max"] == [3.0, 1.0, 1.0]
    assert fp["shape"]["median"] == [12, 90, 80] and fp["shape"]["min"] == [10, 60, 60]
    depth = 10 + 20 + 12
    assert fp["class_voxels"] == {"liver": 20 * depth, "vessel": depth, "tumour": 0}
    n1, n2 = 20 * depth, depth
    mean = (2.0 * n1 + 4.0 * n2) / (n1 + n2)
    assert fp["intensity"]["voxels"] == n1 + n2 and fp["intensity"]["modality"] == "CT"
    assert fp["intensity"]["mean"] == pytest.approx(mean)
    assert fp["intensity"]["std"] == pytest.approx(np.sqrt((4.0 * n1 + 16.0 * n2) / (n1 + n2) - mean ** 2))
    assert (fp["intensity"]["min"], fp["intensity"]["max"]) == (2.0, 4.0)
    # 2D: target (0.8, 0.8); slices resampled: Y 96*0.5/0.8 = 60, 60/0.8 = 75, 90 -> median 75; X 50, 75, 90 -> 75;
    # patch rounded up to 16: 80 x 80 = 6,400 pixels; batch 65,536 // 6,400 = 10.
    assert plans["plans"]["2d"] == {"spacing": [0.8, 0.8], "median_shape": [75, 75], "patch_size": [80, 80],
                                    "batch_size": 10, "divisor": 16}
    # 3D: target (2, 0.8, 0.8); Z 10*2/2 = 10, 20/2 = 10, 12*3/2 = 18 -> 10, rounded up to 16;
    # batch 2,097,152 // (16*80*80 = 102,400) = 20, capped at 8.
    assert plans["plans"]["3d"] == {"spacing": [2.0, 0.8, 0.8], "median_shape": [10, 75, 75],
                                    "patch_size": [16, 80, 80], "batch_size": 8, "divisor": 16}
    assert "fingerprint" not in json.loads((root / "dataset.json").read_text())["cases"]["a"]


def test_plan_is_capped_by_the_memory_budget():
    # 512² slices at 0.5 mm: 512 x 512 > 256², the side spanning the most mm loses 16 (first axis on ties) until
    # the patch holds at most 65,536 pixels: 256 x 256; batch 65,536 // 65,536 = 1, raised to the minimum 2.
    plan = make_plan(np.array([[512.0, 512.0]] * 3), np.array([[0.5, 0.5]] * 3), "2d")
    assert plan["patch_size"] == [256, 256] and plan["batch_size"] == 2
    # anisotropic in-plane spacing: the coarse axis (2 mm, 64 px = 128 mm) vs the fine one (0.5 mm, 400 px = 200 mm)
    plan = make_plan(np.array([[64.0, 400.0]]), np.array([[2.0, 0.5]]), "2d")
    assert plan["median_shape"] == [64, 400] and plan["patch_size"] == [64, 400]


def test_plans_are_rebuilt_for_cases_prepared_before_fingerprints(tmp_path):
    root = _prepare(tmp_path)
    first = read_plans(root)
    for meta in (root / "meta").glob("*.json"):  # an older prepare recorded no fingerprint
        record = json.loads(meta.read_text())
        record.pop("fingerprint")
        meta.write_text(json.dumps(record))
    (root / "plans.json").unlink()
    _prepare(tmp_path)  # the finished cases are skipped, their fingerprint read back from the prepared files
    assert read_plans(root) == first


@pytest.mark.parametrize("key, value, message", [
    ("patch_size", [100, 80], r"plans\.2d\.patch_size must be 2 positive integers, each a multiple of 16"),
    ("spacing", [0.8, -1], r"plans\.2d\.spacing must be 2 positive numbers"),
    ("batch_size", "8", r"plans\.2d\.batch_size must be a positive integer"),
    ("patchsize", [64, 64], r"plans\.2d\.patchsize is not a plan key"),
])
def test_a_bad_edit_is_one_line_naming_the_file_and_the_key(tmp_path, key, value, message):
    root = _prepare(tmp_path)
    path = root / "plans.json"
    plans = json.loads(path.read_text())
    plans["plans"]["2d"][key] = value
    path.write_text(json.dumps(plans, indent=2))
    with pytest.raises(InputError, match=message) as err:
        read_plans(root)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    path.write_text("{not json")
    with pytest.raises(InputError, match="plans.json: not valid JSON"):
        read_plans(root)


def test_the_plan_travels_from_prepare_into_the_config_and_every_checkpoint(tmp_path, fake):
    from resfu_med.data import prepare_dataset
    from resfu_med.engine.checkpoint import load_checkpoint
    from resfu_med.engine.config import resolve_config
    from resfu_med.engine.preparation import complete_config
    from resfu_med.engine.trainer import Trainer

    fake.make_msd(tmp_path / "raw")
    out = prepare_dataset("msd", tmp_path / "raw", tmp_path / "prepared", progress=False)
    plans = read_plans(out)
    assert plans["plans"]["2d"]["spacing"] and plans["fingerprint"]["class_voxels"].keys() == {"organ", "tumour"}
    cfg = resolve_config("msd", overrides={
        "model": {"name": "unet", "upsampler": "bilinear", "kwargs": {"features": [4, 4, 8, 8, 16, 4]}},
        "data": {"root": str(out), "num_workers": 0},
        "train": {"epochs": 1, "batch_size": 2, "eval": False, "max_iters": 1}})
    cfg = complete_config(cfg)
    assert cfg["plan"] == plans
    run = tmp_path / "run"
    run.mkdir()
    Trainer(cfg, run, progress=False).fit()
    assert load_checkpoint(run / "last.pt")["config"]["plan"] == plans
    assert json.loads((run / "config.json").read_text())["plan"] == plans


def test_dynunet_kernels_and_strides_come_from_the_planned_spacing(tmp_path, fake):
    from resfu_med.data import prepare_dataset
    from resfu_med.engine.config import resolve_config
    from resfu_med.engine.preparation import complete_config

    fake.make_msd(tmp_path / "raw")  # voxels of 0.7 x 0.9 x 3.0 mm (x, y, z): (sz, sy, sx) = (3.0, 0.9, 0.7)
    out = prepare_dataset("msd", tmp_path / "raw", tmp_path / "prepared", progress=False)
    assert read_plans(out)["plans"]["3d"]["spacing"] == pytest.approx([3.0, 0.9, 0.7])

    def kwargs(**model):
        cfg = resolve_config("msd", overrides={"model": {"name": "dynunet", "upsampler": "bilinear", **model},
                                               "data": {"root": str(out), "patch_size": [16, 32, 32]}})
        return complete_config(cfg)["model"]["kwargs"]

    # nnU-Net's rule by hand: z (3 mm, over twice the finest 0.7 mm) is not halved and gets 1-voxel kernels until the
    # in-plane axes have been halved twice (1.8 and 1.4 mm, then 3.6 and 2.8 mm); y and x stop at 4 voxels.
    k = kwargs()
    assert k["strides"] == [[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 1, 1]]
    assert k["kernel_size"] == [[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]]
    # the user's own kernels and strides win over the plan
    mine = {"kernel_size": [3, 3, 3], "strides": [1, 2, 2], "upsample_kernel_size": [2, 2]}
    assert kwargs(kwargs=mine)["strides"] == [1, 2, 2]
