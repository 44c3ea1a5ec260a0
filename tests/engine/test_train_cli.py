"""``resfu-med train`` on the command line: help, and one clear line + non-zero exit for each bad input."""

from __future__ import annotations

import json
import pytest
import torch

from resfu_med.cli import main


def _fails(capsys, argv, pattern):
    import re

    code = main(["train", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert len(err) == 1, err
    assert err[0].startswith("resfu-med train: error: ") and re.search(pattern, err[0]), err[0]
    return err[0]


def test_help_shows_defaults_and_examples(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for text in ("--dataset", "--resume", "--max-iters", "--amp", "torchrun", "examples:", "default: 150"):
        assert text in out


def test_wrong_dataset_name(capsys, tmp_path):
    _fails(capsys, ["--dataset", "brats", "--output", str(tmp_path / "r")], r"dataset must be one of synapse, acdc, msd, demo, got 'brats'")


def test_wrong_model_and_upsampler_names(capsys, tmp_path):
    _fails(capsys, ["--dataset", "demo", "--model", "vnet", "--output", str(tmp_path / "r")], r"model\.name must be one of")
    _fails(capsys, ["--dataset", "demo", "--upsampler", "magic", "--output", str(tmp_path / "r")],
           r"unknown upsampler 'magic'.*resfu, bilinear")


def test_missing_data_root(capsys, tmp_path):
    _fails(capsys, ["--dataset", "synapse", "--output", str(tmp_path / "r")], r"--data-root is required")
    _fails(capsys, ["--dataset", "synapse", "--data-root", str(tmp_path / "nowhere"), "--output", str(tmp_path / "r")],
           r"data root .*nowhere does not exist")
    assert not (tmp_path / "r").exists()  # nothing created for a failed start


def test_existing_output_without_overwrite_is_kept(capsys, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"precious")
    _fails(capsys, ["--dataset", "demo", "--output", str(run)], r"already exists.*--resume.*--overwrite")
    assert (run / "last.pt").read_bytes() == b"precious"


def test_bad_config_file(capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  epoch: 3\n")
    _fails(capsys, ["--dataset", "demo", "--config", str(cfg), "--output", str(tmp_path / "r")],
           r"unknown key 'train\.epoch'")
    cfg.write_text("train:\n  epochs: many\n")
    _fails(capsys, ["--dataset", "demo", "--config", str(cfg), "--output", str(tmp_path / "r")],
           r"train\.epochs must be int")


def test_bad_flag_values(capsys, tmp_path):
    _fails(capsys, ["--dataset", "demo", "--amp", "fp8", "--output", str(tmp_path / "r")], r"amp must be one of")
    _fails(capsys, ["--dataset", "demo", "--batch-size", "0", "--output", str(tmp_path / "r")], r"batch_size must be > 0")


def test_resume_without_checkpoint(capsys, tmp_path):
    _fails(capsys, ["--resume", "--output", str(tmp_path)], r"nothing to resume: .*last\.pt not found")


def test_resume_with_corrupt_checkpoint(capsys, tmp_path):
    (tmp_path / "last.pt").write_bytes(b"\x00" * 100)
    _fails(capsys, ["--resume", "--output", str(tmp_path)], r"last\.pt is corrupt")


def test_resume_and_overwrite_conflict(capsys, tmp_path):
    _fails(capsys, ["--resume", "--overwrite", "--output", str(tmp_path)], r"contradict")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_gpu(capsys, tmp_path):
    _fails(capsys, ["--dataset", "demo", "--device", "cuda", "--output", str(tmp_path / "r")], r"no CUDA device")


@pytest.fixture
def standin_data(monkeypatch):
    """Replace the data layer's entry points with the tiny in-memory stand-ins (dataset name 'synapse')."""
    import types

    import resfu_med.data as data
    from _train_helpers import NUM_CLASSES, _register, slice_dataset, volume_cases

    _register()

    def info(name, root=None):
        return types.SimpleNamespace(name=name, num_classes=NUM_CLASSES, label_names=["square", "other"],
                                     intensity={"kind": "mri", "mode": "minmax"}, modality="MRI", root=root)

    def get_dataset(name, root, split, transform=None, **kw):
        return slice_dataset(12) if split == "train" else volume_cases(1)

    monkeypatch.setattr(data, "dataset_info", info, raising=False)
    monkeypatch.setattr(data, "get_dataset", get_dataset, raising=False)
    monkeypatch.setattr(data, "get_transforms", lambda *a, **k: None, raising=False)


def test_cli_train_stop_resume_and_finish(capsys, tmp_path, standin_data):
    from _train_helpers import TINY

    from resfu_med.engine.checkpoint import load_checkpoint

    torch.set_num_threads(1)
    run = tmp_path.with_name(tmp_path.name + "-run")  # outside the data root: no command writes into an input folder
    base = ["--dataset", "synapse", "--data-root", str(tmp_path), "--model", TINY, "--img-size", "32",
            "--batch-size", "4", "--epochs", "2", "--output", str(run), "--no-progress"]
    assert main(["train", *base, "--max-iters", "4"]) == 0
    out = capsys.readouterr().out
    assert "stopped at iteration 4" in out
    assert load_checkpoint(run / "last.pt")["iteration"] == 4
    # config flags cannot change on resume; runtime ones can
    _fails(capsys, ["--resume", "--output", str(run), "--lr", "0.5"], r"train\.lr cannot change when resuming")
    assert main(["train", "--resume", "--output", str(run), "--no-progress", "--num-workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "finished" in out and "mean" in out
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["iteration"] == 6 and ckpt["epoch"] == 2 and (run / "best.pt").is_file()
    # the same run again without --resume/--overwrite is refused, with --overwrite it starts over
    _fails(capsys, base, r"already exists")
    assert main(["train", *base, "--max-iters", "1", "--overwrite"]) == 0
    # a run stopped by --max-iters before any validation still leaves best.pt: the final model, not the old run's
    assert load_checkpoint(run / "last.pt")["iteration"] == 1 and load_checkpoint(run / "best.pt")["iteration"] == 1
    assert json.loads((run / "history.json").read_text()) == [] and (run / "train.log").is_file()
