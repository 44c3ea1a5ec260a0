"""Bad inputs through the real command line with a real trained checkpoint: each gives ONE line
``resfu-med <command>: error: ...`` naming the file or argument, a non-zero exit and no traceback; in a folder the
other files are still processed. The unit-level checks live with each layer (tests/data, tests/engine); this is the
user's view of the whole tool."""

from __future__ import annotations

import gzip
import os

import nibabel as nib
import numpy as np
import pytest
import yaml

from _reliability import TINY, assert_one_line_error, ct_volume, make_btcv, run_cli, write_nifti
from resfu_med.engine.checkpoint import load_checkpoint, save_checkpoint


def _infer(src, out, ckpt, *extra):
    return ["infer", "-i", str(src), "-o", str(out), "--checkpoint", str(ckpt), "--device", "cpu",
            "--no-progress", *extra]


# -- infer: a folder of good and bad files ---------------------------------------------------------------------------

def _truncated(path):
    write_nifti(path, np.random.default_rng(0).normal(size=(40, 40, 12)).astype(np.float32))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


BAD_FILES = {
    "b_not_nifti.nii.gz": (lambda p: p.write_bytes(gzip.compress(b"DICOM? no, a text file")), "not a readable NIfTI"),
    "c_truncated.nii.gz": (_truncated, "truncated"),
    "d_flat_2d.nii.gz": (lambda p: write_nifti(p, np.zeros((40, 40), np.float32)), "expected a 3D image"),
    "e_four_d.nii.gz": (lambda p: write_nifti(p, np.zeros((40, 40, 4, 2), np.float32)), "expected a 3D image"),
    "f_nan.nii": (lambda p: write_nifti(p, np.where(ct_volume() > 100, np.nan, 0).astype(np.float32)), "NaN"),
    "g_zero_size.nii.gz": (lambda p: write_nifti(p, np.zeros((40, 0, 4), np.float32)), "empty axis"),
}


def test_infer_folder_reports_each_bad_file_and_segments_the_rest(checkpoint, tmp_path, capsys):
    src = tmp_path / "scans"
    write_nifti(src / "a_good.nii.gz", ct_volume(seed=1), np.diag([0.7, 0.7, 2.5, 1]))
    for name, (make, _) in BAD_FILES.items():
        make(src / name)
    write_nifti(src / "z_good.nii", ct_volume(seed=2))
    (src / "notes.txt").write_text("not an image, not a .nii name: ignored")
    rc, err = run_cli(_infer(src, tmp_path / "out", checkpoint), capsys)
    assert rc == 1 and "Traceback" not in err
    errors = [ln for ln in err.splitlines() if ": error:" in ln]
    assert len(errors) == len(BAD_FILES), errors
    for name, (_, words) in BAD_FILES.items():
        line = next((ln for ln in errors if name in ln), None)
        assert line is not None and line.startswith("resfu-med infer: error:") and words in line, (name, errors)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_good_seg.nii.gz", "z_good_seg.nii.gz"]
    seg = nib.load(str(tmp_path / "out" / "a_good_seg.nii.gz"))
    assert seg.shape == (40, 40, 6) and np.allclose(seg.affine, np.diag([0.7, 0.7, 2.5, 1]))
    assert seg.get_data_dtype() == np.uint8


# -- one-line whole-command errors -----------------------------------------------------------------------------------

def _other_architecture(ckpt, tmp_path):
    """A checkpoint whose weights belong to another network than the one its config describes."""
    state = load_checkpoint(ckpt)
    state["config"]["model"]["kwargs"]["features"] = [8, 8, 16, 16, 32, 8]
    path = tmp_path / "other-arch.pt"
    save_checkpoint(path, {k: v for k, v in state.items() if k not in ("format", "version")})
    return path


def _corrupt(ckpt, tmp_path):
    path = tmp_path / "corrupt.pt"
    data = ckpt.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _config(tmp_path, update):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**TINY, **update}))
    return path


def _train(tmp_path, *extra):
    return ["train", "--output", str(tmp_path / "run"), "--device", "cpu", "--no-progress", *extra]


def _scan(tmp_path):
    return write_nifti(tmp_path / "scan.nii.gz", ct_volume())


CASES = {
    # id: (argv builder (tmp_path, checkpoint) -> argv, command, words the line must contain)
    "infer-missing-path": (lambda t, c: _infer(t / "nowhere.nii.gz", t / "o", c), "infer", ["nowhere.nii.gz"]),
    "infer-empty-folder": (lambda t, c: (t / "empty").mkdir() or _infer(t / "empty", t / "o", c), "infer",
                           ["empty", "no .nii"]),
    "infer-unwritable-output": (lambda t, c: ((t / "afile").write_text("x"), _infer(_scan(t), t / "afile" / "o", c))[-1],
                                "infer", ["afile", "not writable"]),
    "infer-output-exists": (lambda t, c: ((t / "o").mkdir(), (t / "o" / "scan_seg.nii.gz").write_bytes(b"mine"))
                            and _infer(_scan(t), t / "o", c), "infer", ["scan_seg.nii.gz", "--overwrite"]),
    "infer-corrupt-checkpoint": (lambda t, c: _infer(_scan(t), t / "o", _corrupt(c, t)), "infer",
                                 ["corrupt.pt", "corrupt"]),
    "infer-checkpoint-other-architecture": (lambda t, c: _infer(_scan(t), t / "o", _other_architecture(c, t)),
                                            "infer", ["other-arch.pt", "does not match"]),
    "infer-missing-argument": (lambda t, c: ["infer", "-i", str(_scan(t)), "--checkpoint", str(c)], "infer",
                               ["-o/--output"]),
    "evaluate-checkpoint-other-class-count": (lambda t, c: ["evaluate", "--checkpoint", str(c), "--dataset", "acdc",
                                                            "--device", "cpu"], "evaluate", ["9 classes", "acdc", "4"]),
    "evaluate-output-exists": (lambda t, c: ((t / "ev").mkdir(), (t / "ev" / "metrics.json").write_text("{}"))
                               and ["evaluate", "--checkpoint", str(c), "--dataset", "demo", "--output", str(t / "ev"),
                                    "--device", "cpu"], "evaluate", ["metrics.json", "--overwrite"]),
    "train-output-exists": (lambda t, c: ((t / "run").mkdir(), (t / "run" / "last.pt").write_bytes(b"old"))
                            and _train(t, "--dataset", "demo"), "train", ["run", "--overwrite", "--resume"]),
    "train-unwritable-output": (lambda t, c: ((t / "afile").write_text("x"),
                                ["train", "--dataset", "demo", "--config", str(_config(t, {})), "--output",
                                 str(t / "afile" / "run"), "--device", "cpu", "--no-progress"])[-1], "train",
                                ["afile", "not writable"]),
    "train-resume-corrupt-checkpoint": (lambda t, c: ((t / "run").mkdir(), (t / "run" / "last.pt").write_bytes(
        c.read_bytes()[:1000])) and _train(t, "--resume"), "train", ["last.pt", "corrupt"]),
    "train-config-unknown-key": (lambda t, c: _train(t, "--dataset", "demo", "--config",
                                                     str(_config(t, {"train": {"epochz": 3}}))),
                                 "train", ["bad.yaml", "train.epochz"]),
    "train-config-wrong-type": (lambda t, c: _train(t, "--dataset", "demo", "--config",
                                                    str(_config(t, {"train": {"batch_size": "two"}}))),
                                "train", ["bad.yaml", "train.batch_size", "int"]),
    "train-config-not-yaml": (lambda t, c: ((t / "bad.yaml").write_text("train: [unclosed"),
                              _train(t, "--dataset", "demo", "--config", str(t / "bad.yaml")))[-1], "train", ["bad.yaml"]),
    "train-unknown-dataset": (lambda t, c: _train(t, "--dataset", "brats"), "train",
                              ["brats", "synapse, acdc, msd, demo"]),
    "train-unknown-model": (lambda t, c: _train(t, "--dataset", "demo", "--model", "segformer"), "train",
                            ["segformer", "transunet", "unet"]),
    "train-unknown-upsampler": (lambda t, c: _train(t, "--dataset", "demo", "--upsampler", "lanczos"), "train",
                                ["lanczos", "resfu", "bilinear", "dysample"]),
    "train-missing-data-root": (lambda t, c: _train(t, "--dataset", "synapse", "--data-root", str(t / "nope")),
                                "train", ["nope"]),
    "train-img-size-too-small": (lambda t, c: _train(t, "--dataset", "demo", "--img-size", "30"), "train",
                                 ["--img-size 30", "unet"]),
    "train-bad-number": (lambda t, c: _train(t, "--dataset", "demo", "--batch-size", "0"), "train", ["batch_size"]),
    "train-unet3d-bad-patch": (lambda t, c: _train(t, "--dataset", "demo", "--model", "unet3d", "--patch-size", "20",
                                                   "32", "32"), "train", ["--patch-size", "[20, 32, 32]", "of 16"]),
    "prepare-unknown-dataset": (lambda t, c: ["prepare", "--dataset", "kits", "--data-root", str(t)], "prepare",
                                ["kits", "synapse"]),
    "prepare-missing-path": (lambda t, c: ["prepare", "--dataset", "synapse", "--data-root", str(t / "btcv"),
                                           "--output", str(t / "p"), "--no-progress"], "prepare", ["btcv"]),
    "prepare-empty-folder": (lambda t, c: ((t / "btcv" / "img").mkdir(parents=True), (t / "btcv" / "label").mkdir())
                             and ["prepare", "--dataset", "synapse", "--data-root", str(t / "btcv"), "--output",
                                  str(t / "p"), "--no-progress"], "prepare", ["img", "no imgXXXX"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_one_line_error(case, checkpoint, tmp_path, capsys):
    build, command, words = CASES[case]
    argv = build(tmp_path, checkpoint)
    rc, err = run_cli(argv, capsys)
    # infer also prints its per-file summary ("1 input(s): 0 segmented, 0 skipped, 1 failed") for a per-file error
    assert_one_line_error(rc, err, command, *words, strict=case != "infer-output-exists")
    if case == "infer-output-exists":
        assert (tmp_path / "o" / "scan_seg.nii.gz").read_bytes() == b"mine"
    if case == "train-output-exists":
        assert (tmp_path / "run" / "last.pt").read_bytes() == b"old"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder(checkpoint, tmp_path, capsys):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        rc, err = run_cli(_infer(_scan(tmp_path), out, checkpoint), capsys)
    finally:
        out.chmod(0o755)
    assert_one_line_error(rc, err, "infer", str(out), "not writable")


# -- prepare: bad pairs in a raw release -----------------------------------------------------------------------------

AFF = np.diag([0.8, 0.8, 3.0, 1.0])


def _bad_label_shape(raw):
    write_nifti(raw / "label" / "label0005.nii.gz", np.zeros((40, 40, 5), np.uint8), AFF)


def _bad_label_affine(raw):
    write_nifti(raw / "label" / "label0005.nii.gz", np.zeros((40, 40, 6), np.uint8), np.diag([0.9, 0.8, 3.0, 1.0]))


def _bad_label_values(raw):
    lab = np.zeros((40, 40, 6), np.uint8)
    lab[3, 3, 3] = 14  # BTCV labels are 0..13
    write_nifti(raw / "label" / "label0005.nii.gz", lab, AFF)


def _nan_image(raw):
    img = ct_volume(seed=5).astype(np.float32)
    img[1, 2, 3] = np.nan
    write_nifti(raw / "img" / "img0005.nii.gz", img, AFF)


@pytest.mark.parametrize("damage,file,words", [
    (_bad_label_shape, "label0005.nii.gz", "shape"),
    (_bad_label_affine, "label0005.nii.gz", "does not belong to this image"),
    (_bad_label_values, "label0005.nii.gz", "outside 0..13"),
    (_nan_image, "img0005.nii.gz", "NaN"),
])
def test_prepare_bad_pair_named_and_other_cases_prepared(damage, file, words, tmp_path, capsys):
    raw = make_btcv(tmp_path / "raw", ids=(1, 5, 6))
    damage(raw)
    out = tmp_path / "prep"
    argv = ["prepare", "--dataset", "synapse", "--data-root", str(raw), "--output", str(out), "--no-progress"]
    rc, err = run_cli(argv, capsys)
    assert_one_line_error(rc, err, "prepare", file, words)
    # default (nnU-Net's): stop at the first bad case, nothing half-written; the cases before it are kept
    assert (out / "meta" / "case0001.json").is_file()
    assert not (out / "meta" / "case0005.json").exists()
    assert not (out / "dataset.json").exists(), "an incomplete preparation must not look finished"
    # --continue-on-error: the other cases are prepared and the bad one is named (a rerun after fixing the file
    # only redoes that one)
    rc, err = run_cli(argv + ["--continue-on-error"], capsys)
    assert rc != 0 and file in err
    assert (out / "meta" / "case0006.json").is_file()
    assert not (out / "meta" / "case0005.json").exists()
    assert not (out / "dataset.json").exists(), "an incomplete preparation must not look finished"


def test_prepare_affine_within_tolerance_is_accepted(tmp_path, capsys):
    raw = make_btcv(tmp_path / "raw", ids=(1, 5))
    lab = nib.load(str(raw / "label" / "label0005.nii.gz"))
    write_nifti(raw / "label" / "label0005.nii.gz", np.asarray(lab.dataobj), AFF + 1e-6)
    rc, err = run_cli(["prepare", "--dataset", "synapse", "--data-root", str(raw), "--output", str(tmp_path / "p"),
                       "--no-progress"], capsys)
    assert rc == 0, err
