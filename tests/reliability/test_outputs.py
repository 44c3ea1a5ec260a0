"""Never destroy the user's data (issue 15, items 2 and 5): the output-folder policy of every command.

An output folder is new, or one resfu-med made for the same command, or ``--overwrite`` was given; it is never an
input folder, inside one or around one; a failed run leaves no empty folder; an unwritable output is one line.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from _reliability import assert_one_line_error, ct_volume, make_btcv, run_cli, write_nifti


def _digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` and its content hash: equal before and after means nothing was touched."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _msd_task(root: Path) -> Path:
    """A raw MSD task: dataset.json + imagesTr/labelsTr (one CT case) + imagesTs."""
    vol = ct_volume()
    write_nifti(root / "imagesTr" / "spleen_1.nii.gz", vol)
    write_nifti(root / "labelsTr" / "spleen_1.nii.gz", (vol > 100).astype("uint8"))
    write_nifti(root / "imagesTs" / "spleen_2.nii.gz", vol)
    (root / "dataset.json").write_text(json.dumps({
        "name": "Spleen", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "spleen"},
        "numTraining": 1, "numTest": 1,
        "training": [{"image": "./imagesTr/spleen_1.nii.gz", "label": "./labelsTr/spleen_1.nii.gz"}],
        "test": ["./imagesTs/spleen_2.nii.gz"],
    }))
    return root


@pytest.mark.parametrize("where", ["same", "inside", "around"])
def test_prepare_never_writes_into_the_raw_folder(where, tmp_path, capsys):
    raw = _msd_task(tmp_path / "data" / "Task09_Spleen")
    before = _digest(tmp_path / "data")
    out = {"same": raw, "inside": raw / "prepared", "around": tmp_path / "data"}[where]
    rc, err = run_cli(["prepare", "--dataset", "msd", "--data-root", str(raw), "--output", str(out), "--no-progress"],
                      capsys)
    assert_one_line_error(rc, err, "prepare", str(out), "input folder")
    assert _digest(tmp_path / "data") == before, "the raw release was modified"
    assert not (raw / "prepared").exists()


def test_prepare_refuses_a_foreign_folder_and_reuses_its_own(tmp_path, capsys):
    raw = make_btcv(tmp_path / "raw", ids=(1, 5))
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    argv = ["prepare", "--dataset", "synapse", "--data-root", str(raw), "--output", str(out), "--no-progress"]
    rc, err = run_cli(argv, capsys)
    assert_one_line_error(rc, err, "prepare", str(out), "notes.txt", "--overwrite")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    fresh = tmp_path / "fresh"
    argv[argv.index(str(out))] = str(fresh)
    assert run_cli(argv, capsys)[0] == 0
    assert run_cli(argv, capsys)[0] == 0, "a folder prepare made is prepare's to reuse"
    argv[argv.index(str(fresh))] = str(out)
    assert run_cli([*argv, "--overwrite"], capsys)[0] == 0
    assert (out / "notes.txt").read_text() == "my notes", "--overwrite replaces prepare's files, not the user's"


def test_infer_output_never_in_the_input_folder_and_no_empty_folder_on_failure(checkpoint, tmp_path, capsys):
    scans = tmp_path / "scans"
    write_nifti(scans / "a.nii.gz", ct_volume())
    before = _digest(scans)
    for out in (scans, scans / "segs"):
        rc, err = run_cli(["infer", "-i", str(scans), "-o", str(out), "--checkpoint", str(checkpoint),
                           "--device", "cpu"], capsys)
        assert_one_line_error(rc, err, "infer", str(out), "input folder")
    assert _digest(scans) == before
    # a refused checkpoint: nothing created, not even the (nested) output folder
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    out = tmp_path / "a" / "b" / "segs"
    rc, err = run_cli(["infer", "-i", str(scans), "-o", str(out), "--checkpoint", str(tmp_path / "bad.pt"),
                       "--device", "cpu"], capsys)
    assert_one_line_error(rc, err, "infer", "bad.pt")
    assert not (tmp_path / "a").exists()


def test_evaluate_refuses_a_foreign_output_folder(checkpoint, tmp_path, capsys):
    out = tmp_path / "results"
    out.mkdir()
    (out / "thesis.tex").write_text("x")
    rc, err = run_cli(["evaluate", "--checkpoint", str(checkpoint), "--dataset", "demo", "--output", str(out),
                       "--device", "cpu"], capsys)
    assert_one_line_error(rc, err, "evaluate", str(out), "thesis.tex", "--overwrite")
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]


def test_export_bundle_output_policy(checkpoint, tmp_path, capsys):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "data.csv").write_text("1,2")
    rc, err = run_cli(["export-bundle", "--checkpoint", str(checkpoint), "--output", str(foreign)], capsys)
    assert_one_line_error(rc, err, "export-bundle", str(foreign), "data.csv", "--overwrite")
    # the checkpoint's own folder contains the input
    run = tmp_path / "run"
    shutil.copytree(checkpoint.parent, run)
    rc, err = run_cli(["export-bundle", "--checkpoint", str(run / "last.pt"), "--output", str(run)], capsys)
    assert_one_line_error(rc, err, "export-bundle", str(run), "contains the input")
    # a failed export leaves no folder
    (tmp_path / "bad.pt").write_bytes(b"junk")
    rc, err = run_cli(["export-bundle", "--checkpoint", str(tmp_path / "bad.pt"), "--output",
                       str(tmp_path / "x" / "bundle")], capsys)
    assert_one_line_error(rc, err, "export-bundle", "bad.pt")
    assert not (tmp_path / "x").exists()


def test_export_never_replaces_a_file_without_overwrite(checkpoint, tmp_path, capsys):
    target = tmp_path / "model.ts"
    target.write_bytes(b"precious")
    rc, err = run_cli(["export", "--checkpoint", str(checkpoint), "--output", str(target)], capsys)
    assert_one_line_error(rc, err, "export", str(target), "--overwrite")
    assert target.read_bytes() == b"precious"
    copy = tmp_path / "c.pt"
    shutil.copy(checkpoint, copy)
    rc, err = run_cli(["export", "--checkpoint", str(copy), "--output", str(copy), "--overwrite"], capsys)
    assert_one_line_error(rc, err, "export", str(copy), "input file")


@pytest.mark.parametrize("command", ["prepare", "export-bundle"])
def test_read_only_output_is_one_line(command, checkpoint, tmp_path, capsys, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.geteuid() == 0:  # root writes anyway: the folder reads as read-only to the access check as it would to a user
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == locked else real_access(p, mode))
    try:
        if command == "prepare":
            argv = ["prepare", "--dataset", "synapse", "--data-root", str(make_btcv(tmp_path / "raw", ids=(1,))),
                    "--output", str(locked / "out"), "--no-progress"]
        else:
            argv = ["export-bundle", "--checkpoint", str(checkpoint), "--output", str(locked / "out")]
        rc, err = run_cli(argv, capsys)
    finally:
        locked.chmod(0o755)
    assert_one_line_error(rc, err, command, str(locked / "out"), "not writable")
    assert not (locked / "out").exists()


def test_train_that_fails_before_starting_leaves_no_folder(tiny_config, tmp_path, capsys):
    from _reliability import train_argv

    (tmp_path / "weights.npz").write_bytes(b"")
    run = tmp_path / "new" / "run"
    rc, err = run_cli(train_argv(run, tiny_config, "--pretrained", str(tmp_path / "weights.npz")), capsys)
    assert_one_line_error(rc, err, "train", "--pretrained", strict=False)
    assert not (tmp_path / "new").exists()
