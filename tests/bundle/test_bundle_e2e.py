"""End to end: a short demo training, ``resfu-med export-bundle``, MONAI's verifier, ``python -m monai.bundle run``
on a demo NIfTI, and the same file through ``resfu-med infer``: identical labels, the input's geometry."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

from resfu_med.bundle import schema_path
from resfu_med.cli import main

pytestmark = pytest.mark.slow

# A small ReSFU U-Net on 32² slices: the demo preset's architecture, narrower, so two iterations take seconds.
TINY_DEMO = {
    "model": {"name": "unet", "upsampler": "resfu", "kwargs": {"features": [16, 16, 16, 16, 16, 16]}},
    "data": {"img_size": 32, "num_workers": 0},
    "train": {"batch_size": 2},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``resfu-med train --dataset demo --max-iters 2`` with the tiny model; returns the checkpoint."""
    root = tmp_path_factory.mktemp("e2e")
    cfg = root / "tiny.json"
    cfg.write_text(json.dumps(TINY_DEMO))
    run_dir = root / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model on shared CI cores: one thread is several times faster
    try:
        assert main(["train", "--dataset", "demo", "--config", str(cfg), "--max-iters", "2", "--no-eval",
                     "--device", "cpu", "--no-progress", "--output", str(run_dir)]) == 0
    finally:
        torch.set_num_threads(threads)
    return run_dir / "last.pt"


def _demo_scan(folder):
    from resfu_med.data import ensure_demo_data

    raw = ensure_demo_data().parent / "raw" / "img"
    scan = sorted(raw.glob("*.nii.gz"))[0]
    folder.mkdir()
    shutil.copy(scan, folder / scan.name)
    return folder / scan.name


def _python_m(args, cwd):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_exported_bundle_runs_with_monai_and_matches_infer(tmp_path, trained):
    from monai.bundle import verify_metadata

    bundle = tmp_path / "demo_bundle"
    assert main(["export-bundle", "--checkpoint", str(trained), "--output", str(bundle), "--no-torchscript"]) == 0
    scan = _demo_scan(tmp_path / "scans")

    # MONAI's own tools only: its verifier with the shipped schema (raises if invalid; in-process to spare a
    # start-up, the command line is the same function), then the inference workflow as a command.
    verify_metadata(meta_file=str(bundle / "configs" / "metadata.json"), filepath=str(schema_path()))
    _python_m(["monai.bundle", "run", "--config_file", "configs/inference.json", "--dataset_dir",
               str(tmp_path / "scans"), "--output_dir", str(tmp_path / "bundle_out")], cwd=bundle)

    assert main(["infer", "-i", str(tmp_path / "scans"), "-o", str(tmp_path / "infer_out"), "--checkpoint",
                 str(trained), "--device", "cpu", "--no-progress"]) == 0

    name = scan.name.replace(".nii.gz", "_seg.nii.gz")
    ours, theirs, source = (nib.load(p) for p in (tmp_path / "bundle_out" / name, tmp_path / "infer_out" / name, scan))
    assert ours.shape == source.shape == theirs.shape
    np.testing.assert_allclose(ours.affine, source.affine, atol=1e-5)
    labels = np.asarray(ours.dataobj)
    np.testing.assert_array_equal(labels, np.asarray(theirs.dataobj))
    assert labels.dtype == np.uint8 and labels.max() < 9
    assert len(np.unique(labels)) > 1  # even after two iterations the untrained classes appear: not vacuous
