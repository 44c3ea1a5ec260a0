"""The quick preset for every dataset, and the MRI normalisation's round trip: prepared dataset.json → checkpoint →
inference → exported bundle all apply the same robust z-score."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from resfu_med.cli import main
from resfu_med.data.intensity import MRI_ROBUST_SPEC, make_intensity_transform, robust_zscore
from resfu_med.engine.config import resolve_config
from resfu_med.errors import InputError


@pytest.mark.parametrize("dataset", ["msd", "synapse", "acdc"])
def test_quick_preset_on_every_dataset(dataset):
    cfg = resolve_config(dataset, overrides={"data": {"root": "x"}}, preset="quick")
    t = cfg["train"]
    assert cfg["model"]["name"] == "unet" and cfg["model"]["upsampler"] == "resfu"
    assert cfg["model"]["kwargs"]["upsampler_kwargs"]["embed_dim"] == 8  # the slim ReSFU
    assert t["optimizer"] == "adamw" and t["iterations"] == 1500 and t["warmup_iters"] > 0
    assert t["fg_oversample"] == 0.5 and t["eval"] is False and cfg["data"]["img_size"] is None
    # warm-up, constant, linear decay to 0 over the last 20 % (measured against constant on whole volumes)
    assert t["schedule"] == "constant-decay" and t["decay_fraction"] == 0.2
    assert cfg["data"]["pipeline"] == "plan"  # native-resolution patches of the plan on every dataset
    # flags still win over the preset
    cfg = resolve_config(dataset, overrides={"train": {"fg_oversample": 0.0}, "model": {"upsampler": "bilinear"}},
                         preset="quick")
    assert cfg["train"]["fg_oversample"] == 0.0 and "upsampler_kwargs" not in cfg["model"]["kwargs"]


def test_paper_protocol_stays_the_default():
    syn = resolve_config("synapse")
    assert syn["model"]["name"] == "transunet" and syn["train"]["optimizer"] == "sgd"
    assert syn["train"]["schedule"] == "poly" and syn["train"]["warmup_iters"] == 0
    assert syn["train"]["fg_oversample"] is None and resolve_config("acdc")["train"]["fg_oversample"] is None
    assert resolve_config("msd")["train"]["fg_oversample"] == 0.33
    # the paper's figures are quoted on the 224² zoom protocol: synapse and acdc keep it; msd follows nnU-Net's plan
    assert syn["data"]["pipeline"] == "zoom" and syn["data"]["img_size"] == 224
    assert resolve_config("acdc")["data"]["pipeline"] == "zoom" and resolve_config("demo")["data"]["pipeline"] == "zoom"
    assert resolve_config("msd")["data"]["pipeline"] == "plan"
    assert resolve_config("synapse", overrides={"data": {"pipeline": "plan"}})["data"]["pipeline"] == "plan"
    with pytest.raises(InputError, match="unknown preset"):
        resolve_config("msd", preset="slow")
    with pytest.raises(InputError, match="fg_oversample must be <= 1"):
        resolve_config("msd", overrides={"train": {"fg_oversample": 1.5}})
    with pytest.raises(InputError, match="train.schedule must be one of"):
        resolve_config("msd", overrides={"train": {"schedule": "step"}})
    with pytest.raises(InputError, match="decay_fraction must be <= 1"):
        resolve_config("msd", overrides={"train": {"decay_fraction": 1.5}})


@pytest.mark.parametrize("dataset,preset", [("msd", None), ("synapse", "quick")])
def test_img_size_with_the_plan_pipeline_is_refused_not_ignored(dataset, preset):
    # the plan's patch sets a 2D model's input: an explicit --img-size would be dropped silently
    with pytest.raises(InputError, match=r"--img-size \(data.img_size\) applies to --pipeline zoom only"):
        resolve_config(dataset, overrides={"data": {"img_size": 64}}, preset=preset)
    cfg = resolve_config(dataset, overrides={"data": {"img_size": 64, "pipeline": "zoom"}}, preset=preset)
    assert cfg["data"]["img_size"] == 64 and cfg["data"]["pipeline"] == "zoom"
    # 3D models take --patch-size; their img_size is not used either way
    assert resolve_config(dataset, overrides={"data": {"img_size": 64}, "model": {"name": "unet3d"}}, preset=preset)


def test_robust_zscore_by_hand_and_scanner_invariance():
    rng = np.random.default_rng(0)
    body = rng.normal(300, 50, (6, 7, 8))
    body[0, 0, 0] = 1e5  # one hot voxel: clipped away by the 99.5th percentile
    vol = np.where(rng.random(body.shape) < 0.3, 0.0, body)
    got = make_intensity_transform(MRI_ROBUST_SPEC)(vol)
    mask = vol != 0
    v = np.clip(vol[mask], *np.percentile(vol[mask], [0.5, 99.5]))
    expect = np.zeros_like(vol)
    expect[mask] = (v - v.mean()) / v.std()
    np.testing.assert_allclose(got, expect, atol=1e-5)
    # another scanner's gain and offset on the body voxels: the same normalised image (min-max would shift it)
    other = np.where(mask, 3.0 * vol + 200.0, 0.0)
    np.testing.assert_allclose(robust_zscore(other), got, atol=1e-4)
    # min-max lets the one hot voxel squash the whole body into a sliver of [0, 1]; the robust body keeps unit spread
    assert np.sort(make_intensity_transform({"kind": "mri", "mode": "minmax"})(vol)[mask])[-2] < 0.01
    assert got[mask].std() == pytest.approx(1.0, abs=0.05)
    assert np.array_equal(robust_zscore(np.zeros((2, 3))), np.zeros((2, 3)))


def _write_msd_mri(root, n=3, size=32, depth=4):
    rng = np.random.default_rng(1)
    training = []
    for i in range(n):
        img = np.zeros((size, size, depth), np.float32)
        img[4:28, 4:28] = rng.normal(500 + 100 * i, 40, (24, 24, depth))  # body; zero air around it
        lab = np.zeros(img.shape, np.uint8)
        lab[10:16, 10:16, 1:3] = 1
        lab[20:23, 20:23, 2] = 2
        for folder, arr in (("imagesTr", img), ("labelsTr", lab)):
            (root / folder).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(arr, np.eye(4)), str(root / folder / f"c{i}.nii.gz"))
        training.append({"image": f"./imagesTr/c{i}.nii.gz", "label": f"./labelsTr/c{i}.nii.gz"})
    meta = {"name": "T", "modality": {"0": "T1"}, "labels": {"0": "background", "1": "a", "2": "b"},
            "training": training, "split": {"train": ["c0", "c1"], "test": ["c2"]}}
    (root / "dataset.json").write_text(json.dumps(meta))


@pytest.mark.slow
def test_normalisation_round_trip_through_checkpoint_and_bundle(tmp_path, monkeypatch):
    from monai.bundle import ConfigParser

    from resfu_med.engine.checkpoint import load_checkpoint
    from resfu_med.engine.predictor import _intensity

    monkeypatch.setenv("RESFU_MED_HOME", str(tmp_path / "home"))
    raw = tmp_path / "raw"
    _write_msd_mri(raw)
    assert main(["prepare", "--dataset", "msd", "--data-root", str(raw), "--output", str(tmp_path / "prep"),
                 "--no-progress"]) == 0
    assert json.loads((tmp_path / "prep" / "dataset.json").read_text())["intensity"] == MRI_ROBUST_SPEC
    run = tmp_path / "run"
    assert main(["train", "--dataset", "msd", "--data-root", str(tmp_path / "prep"), "--preset", "quick",
                 "--upsampler", "bilinear", "--max-iters", "2", "--output", str(run), "--no-progress"]) == 0
    cfg = load_checkpoint(run / "last.pt")["config"]
    assert cfg["data"]["intensity"] == MRI_ROBUST_SPEC and cfg["data"]["img_size"] == 32  # native size
    assert cfg["train"]["fg_oversample"] == 0.5 and cfg["train"]["epochs"] == 750  # 1500 iterations, 2 per epoch
    vol = nib.load(str(raw / "imagesTr" / "c2.nii.gz")).get_fdata()
    expect = robust_zscore(vol)
    np.testing.assert_allclose(_intensity(cfg)[0](vol), expect, atol=1e-6)  # what `resfu-med infer` applies
    assert main(["export-bundle", "--checkpoint", str(run / "last.pt"), "--output", str(tmp_path / "b"),
                 "--no-torchscript"]) == 0
    inference = json.loads((tmp_path / "b" / "configs" / "inference.json").read_text())
    steps = [t for t in json.dumps(inference).split('"_target_": ')[1:] if "RobustZScored" in t]
    assert steps, "the bundle's preprocessing must name the robust z-score"
    from resfu_med.bundle import intensity_transforms

    compose = ConfigParser({"t": {"_target_": "Compose",
                                  "transforms": intensity_transforms(cfg["data"]["intensity"])}}).get_parsed_content("t")
    np.testing.assert_allclose(np.asarray(compose({"image": vol[None].copy()})["image"])[0], expect, atol=1e-5)
    assert main(["train", "--resume", "--output", str(run), "--preset", "quick", "--no-progress"]) == 2

