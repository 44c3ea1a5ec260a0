"""``resfu-med infer`` / ``evaluate`` on bad input: one clear line each, non-zero exit, the other files still done."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
from eval_standins import BinModel, config, save_nifti, smooth_volume

from resfu_med.cli import main
from resfu_med.engine import predictor


@pytest.fixture
def model(monkeypatch):
    monkeypatch.setattr(predictor, "load_for_inference", lambda path, device="cpu": (BinModel(3).eval(), config(3)))


def good(path):
    return save_nifti(path, np.transpose(smooth_volume((3, 16, 16)), (2, 1, 0)))


def truncated(path):
    # large enough that the header survives the cut and the voxel data does not
    save_nifti(path, np.random.default_rng(0).random((32, 32, 8)).astype(np.float32))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) * 2 // 3])
    return path


def not_nifti(path):
    path.write_bytes(gzip.compress(b"this is not an image"))
    return path


def flat_2d(path):
    nib.save(nib.Nifti1Image(np.zeros((16, 16), np.float32), np.eye(4)), str(path))
    return path


def four_d(path):
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 3, 2), np.float32), np.eye(4)), str(path))
    return path


def with_nan(path):
    data = np.transpose(smooth_volume((3, 16, 16)), (2, 1, 0)).copy()
    data[2, 3, 1] = np.nan
    return save_nifti(path, data)


def zero_size(path):
    nib.save(nib.Nifti1Image(np.zeros((16, 0, 3), np.float32), np.eye(4)), str(path))
    return path


def run(argv, capsys):
    rc = main(argv)
    cap = capsys.readouterr()
    return rc, [line for line in cap.err.splitlines() if "error" in line]


@pytest.mark.parametrize(
    "make, words",
    [
        (truncated, "corrupt or truncated"),
        (not_nifti, "not a readable NIfTI"),
        (flat_2d, "expected a 3D image"),
        (four_d, "expected a 3D image"),
        (with_nan, "NaN"),
        (zero_size, "empty axis"),
    ],
)
def test_bad_file_in_folder_is_reported_and_others_processed(make, words, tmp_path, model, capsys):
    src = tmp_path / "in"
    src.mkdir()
    good(src / "a_good.nii.gz")
    bad = make(src / "b_bad.nii.gz")
    good(src / "c_good.nii.gz")
    rc, errors = run(["infer", "-i", str(src), "-o", str(tmp_path / "out"), "--checkpoint", "x.pt",
                      "--no-progress"], capsys)
    assert rc == 1
    assert len(errors) == 1 and str(bad) in errors[0] and words in errors[0], errors
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_good_seg.nii.gz", "c_good_seg.nii.gz"]


@pytest.mark.parametrize(
    "argv_of, words",
    [
        (lambda t: ["-i", str(t / "missing.nii.gz"), "-o", str(t / "o")], "no such file or folder"),
        (lambda t: ["-i", str(t / "empty"), "-o", str(t / "o")], "contains no .nii"),
        (lambda t: ["-i", str(t / "in"), "-o", str(t / "blocker" / "o")], "not writable"),
        (lambda t: ["-i", str(t / "in"), "-o", str(t / "o"), "--device", "gpu7"], "--device"),
    ],
)
def test_whole_command_errors(argv_of, words, tmp_path, model, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "in").mkdir()
    good(tmp_path / "in" / "x.nii.gz")
    (tmp_path / "blocker").write_text("a file where a folder is needed")
    rc, errors = run(["infer", *argv_of(tmp_path), "--checkpoint", "x.pt", "--no-progress"], capsys)
    assert rc == 2 and len(errors) == 1 and words in errors[0], errors


def test_existing_output_needs_overwrite(tmp_path, model, capsys):
    src = good(tmp_path / "x.nii.gz")
    out = tmp_path / "o"
    out.mkdir()
    seg = out / "x_seg.nii.gz"
    seg.write_bytes(b"precious")
    argv = ["infer", "-i", str(src), "-o", str(out), "--checkpoint", "x.pt", "--no-progress"]
    rc, errors = run(argv, capsys)
    assert rc == 1 and len(errors) == 1 and "--overwrite" in errors[0] and str(seg) in errors[0]
    assert seg.read_bytes() == b"precious"
    rc, errors = run(argv + ["--continue-prediction"], capsys)
    assert rc == 0 and not errors and seg.read_bytes() == b"precious"
    rc, errors = run(argv + ["--overwrite"], capsys)
    assert rc == 0 and nib.load(str(seg)).shape == (16, 16, 3)


def test_checkpoint_class_count_mismatch(tmp_path, monkeypatch, capsys):
    # the network outputs 5 classes, its config says 3: a checkpoint of another class count
    monkeypatch.setattr(predictor, "load_for_inference",
                        lambda path, device="cpu": (BinModel(3, out_channels=5).eval(), config(3)))
    src = tmp_path / "in"
    src.mkdir()
    good(src / "a.nii.gz")
    good(src / "b.nii.gz")
    rc, errors = run(["infer", "-i", str(src), "-o", str(tmp_path / "o"), "--checkpoint", "x.pt",
                      "--no-progress"], capsys)
    assert rc == 2 and len(errors) == 1 and "outputs 5 classes" in errors[0] and "num_classes=3" in errors[0]
    assert not list((tmp_path / "o").glob("*.nii.gz"))


def test_missing_checkpoint(tmp_path, capsys):
    src = good(tmp_path / "x.nii.gz")
    rc, errors = run(["infer", "-i", str(src), "-o", str(tmp_path / "o"), "--checkpoint",
                      str(tmp_path / "nope.pt")], capsys)
    assert rc == 2 and len(errors) == 1 and "nope.pt" in errors[0]


def test_bad_overlap_is_an_argument_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["infer", "-i", "x", "-o", "y", "--checkpoint", "c", "--overlap", "1.5"])
    assert exc.value.code == 2 and "--overlap" in capsys.readouterr().err


def test_roi_of_wrong_rank(tmp_path, model, capsys):
    src = good(tmp_path / "x.nii.gz")
    rc, errors = run(["infer", "-i", str(src), "-o", str(tmp_path / "o"), "--checkpoint", "x.pt",
                      "--roi-size", "8", "8", "8"], capsys)
    assert rc == 2 and len(errors) == 1 and "--roi-size" in errors[0] and "2D" in errors[0]
