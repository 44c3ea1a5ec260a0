"""Volumetric evaluation: slice-wise prediction (TransUNet's loop), the evaluation reports and the CLI's files."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from eval_standins import BinModel, config, expected_labels, smooth_volume
from scipy.ndimage import zoom

import resfu_med.data
from resfu_med.cli import main
from resfu_med.engine import predictor
from resfu_med.engine.evaluator import evaluate_model, save_prediction
from resfu_med.engine.validation import validate
from resfu_med.engine.inferer import predict_slices


def transunet_loop(model, image, size):
    """TransUNet's test_single_volume, one slice at a time, written out plainly."""
    pred = np.zeros(image.shape, np.uint8)
    for z in range(image.shape[0]):
        s = image[z]
        x, y = s.shape
        s = zoom(s, (size / x, size / y), order=3)
        with torch.no_grad():
            out = torch.argmax(torch.softmax(model(torch.from_numpy(s)[None, None].float()), 1), 1)[0].numpy()
        pred[z] = zoom(out, (x / size, y / size), order=0)
    return pred


@pytest.mark.parametrize("shape,batch", [((5, 16, 16), 2), ((4, 23, 30), 3), ((3, 40, 12), 8)])
def test_predict_slices_matches_transunet_loop(shape, batch):
    model = BinModel(4).eval()
    image = smooth_volume(shape)
    labels, _ = predict_slices(model, image, 16, batch_size=batch)
    np.testing.assert_array_equal(labels, transunet_loop(model, image, 16))
    if shape[1:] == (16, 16):  # no zoom: the answer is known exactly
        np.testing.assert_array_equal(labels, expected_labels(image, 4))


def test_predict_slices_probabilities_and_roi():
    model = BinModel(3).eval()
    image = smooth_volume((3, 16, 16))
    labels, probs = predict_slices(model, image, 16, roi=8, overlap=0.5, probabilities=True)
    np.testing.assert_array_equal(labels, expected_labels(image, 3))
    assert probs.shape == (3, 3, 16, 16)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)


def make_case(name, seed, spacing=(2.0, 0.5, 0.5), missing_class=None):
    image = smooth_volume((4, 16, 16), seed)
    label = expected_labels(image, 4)
    if missing_class is not None:  # the ground truth has the class where the model sees background
        label = label.copy()
        label[0, :3, :3] = missing_class
        image = image.copy()
        image[0, :3, :3] = 0.0
    return {"image": image, "label": label, "case": name, "spacing": spacing, "affine": None}


def test_evaluate_model_reports():
    cases = [make_case("a", 1), make_case("b", 2, spacing=None)]
    res = evaluate_model(BinModel(4).eval(), cases, config(4), progress=False)
    assert res.transunet.cases == ["a", "b"] and res.spacing.cases == ["a"] and res.no_spacing == ["b"]
    present = [(expected_labels(c["image"], 4) == k).any() for c in cases for k in (1, 2, 3)]
    # perfect predictions: (1, 0) where the class is present; absent and not predicted → (0, 0)
    np.testing.assert_array_equal(res.transunet.dice.ravel(), np.array(present, float))
    np.testing.assert_array_equal(res.transunet.hd95, 0.0)
    assert not res.failures


def test_evaluate_model_missed_class_and_failed_case():
    bad = {"image": np.zeros((16, 16), np.float32), "label": np.zeros((16, 16), np.uint8), "case": "flat"}
    good = make_case("m", 3, missing_class=3)
    lines = []
    res = evaluate_model(BinModel(4).eval(), [bad, good], config(4), progress=False, log=lines.append)
    assert [c for c, _ in res.failures] == ["flat"] and len(lines) == 1 and "flat" in lines[0]
    assert res.transunet.cases == ["m"]
    pred = expected_labels(good["image"], 4)
    gt3, p3 = good["label"] == 3, pred == 3
    inter = (gt3 & p3).sum()
    dice3 = 2 * inter / (gt3.sum() + p3.sum()) if p3.any() else 0.0
    assert res.transunet.dice[0, 2] == pytest.approx(dice3)


def test_validation_dice_equals_evaluation_dice():
    # training's model selection (validate) and resfu-med evaluate score the same predictions the same way
    cases = [make_case("a", 1), make_case("m", 3, missing_class=3)]
    d = validate(BinModel(4).eval(), cases, config(4))["dice"]
    res = evaluate_model(BinModel(4).eval(), cases, config(4), progress=False)
    np.testing.assert_allclose(d, res.transunet.dice.mean(0))


def test_save_prediction(tmp_path):
    labels = np.zeros((3, 4, 5), np.uint8)
    labels[1, 2, 3] = 7
    p = save_prediction(tmp_path / "x_pred.nii.gz", labels, spacing=(2.5, 0.5, 0.75))
    img = nib.load(str(p))
    assert img.shape == (5, 4, 3) and img.get_data_dtype() == np.uint8
    assert np.asarray(img.dataobj)[3, 2, 1] == 7
    np.testing.assert_allclose(img.header.get_zooms(), (0.75, 0.5, 2.5))


@pytest.fixture
def fake_layers(monkeypatch):
    """The data layer and checkpoint loader replaced by stand-ins whose answers we know."""

    class Info:
        name, num_classes, label_names, root = "standin", 4, ["liver", "kidney", "spleen"], None

    cases = [make_case("case1", 1), make_case("case2", 2)]
    monkeypatch.setattr(resfu_med.data, "dataset_info", lambda name, root=None: Info(), raising=False)
    monkeypatch.setattr(resfu_med.data, "get_dataset", lambda name, root, split, transform=None: cases, raising=False)
    monkeypatch.setattr(predictor, "load_for_inference", lambda path, device="cpu": (BinModel(4).eval(), config(4)))
    return cases


def test_cli_evaluate_writes_json_csv_nifti(fake_layers, tmp_path, capsys):
    out = tmp_path / "ev"
    rc = main(["evaluate", "--checkpoint", "x.pt", "--output", str(out), "--save-predictions", "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "TransUNet protocol (voxel units)" in printed and "spacing-aware (mm)" in printed and "liver" in printed
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["meta"]["dataset"] == "standin" and doc["meta"]["split"] == "test" and doc["meta"]["failures"] == []
    tu = doc["reports"]["transunet"]
    assert [c["name"] for c in tu["classes"]] == ["liver", "kidney", "spleen"]
    assert set(tu["cases"]) == {"case1", "case2"}
    assert (out / "metrics_transunet_voxel.csv").read_text().count("\n") == 1 + 2 * 3 + 3 + 1
    assert sorted(p.name for p in (out / "predictions").iterdir()) == ["case1_pred.nii.gz", "case2_pred.nii.gz"]
    # a second run refuses to overwrite the results
    assert main(["evaluate", "--checkpoint", "x.pt", "--output", str(out), "--no-progress"]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", "x.pt", "--output", str(out), "--overwrite",
                 "--no-progress"]) == 0


def test_cli_evaluate_class_count_mismatch(fake_layers, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(predictor, "load_for_inference", lambda path, device="cpu": (BinModel(3).eval(), config(3)))
    rc = main(["evaluate", "--checkpoint", "x.pt", "--output", str(tmp_path / "e")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "3 classes" in err[0] and "4" in err[0]


def test_cli_evaluate_unknown_dataset(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(predictor, "load_for_inference", lambda path, device="cpu": (BinModel(4).eval(), config(4)))
    rc = main(["evaluate", "--checkpoint", "x.pt", "--dataset", "nope", "--output", str(tmp_path / "e")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "nope" in err[0] and "synapse" in err[0]


def test_cli_evaluate_keeps_the_trained_class_names_or_takes_new_ones(fake_layers, monkeypatch, tmp_path):
    # a checkpoint trained with --class-names (a copy labelled in another order) keeps its names in the tables
    monkeypatch.setattr(predictor, "load_for_inference",
                        lambda path, device="cpu": (BinModel(4).eval(), config(4, class_names=["a", "b", "c"])))
    assert main(["evaluate", "--checkpoint", "x.pt", "--output", str(tmp_path / "e1"), "--no-progress"]) == 0
    names = [c["name"] for c in json.loads((tmp_path / "e1" / "metrics.json").read_text())["reports"]["transunet"]["classes"]]
    assert names == ["a", "b", "c"]
    assert main(["evaluate", "--checkpoint", "x.pt", "--output", str(tmp_path / "e2"), "--no-progress",
                 "--class-names", "x", "y", "z"]) == 0
    names = [c["name"] for c in json.loads((tmp_path / "e2" / "metrics.json").read_text())["reports"]["transunet"]["classes"]]
    assert names == ["x", "y", "z"]
    assert main(["evaluate", "--checkpoint", "x.pt", "--output", str(tmp_path / "e3"), "--class-names", "x"]) == 2
