"""Helpers of the reliability suite: the tiny run config, small raw releases and NIfTI files, and the checker of the
one-line error contract (imported by the tests and by ``conftest.py``).

Everything runs through the real command line (``resfu_med.cli.main`` in-process, or ``python -m resfu_med`` in a
subprocess where a real process is needed: kills). The model is tiny (features 4..16, 32x32 slices) so a training
iteration costs ~0.1 s on one core.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

__all__ = ["TINY", "ITERS", "write_config", "train_argv", "run_cli", "assert_one_line_error", "write_nifti",
           "make_btcv", "ct_volume", "subprocess_env"]

#: A ReSFU U-Net small enough for tests; validation off so a run is only training iterations.
TINY = {
    "model": {"name": "unet", "upsampler": "resfu", "kwargs": {"features": [4, 4, 8, 8, 16, 4]}},
    "data": {"img_size": 32, "num_workers": 0},
    "train": {"batch_size": 2, "epochs": 2, "checkpoint_every": 3, "eval": False},
}
#: iterations of the reference run (the lr schedule spans the 2 epochs regardless, so stopping early changes nothing)
ITERS = 24


def write_config(path: Path, cfg: dict | None = None) -> Path:
    path.write_text(yaml.safe_dump(cfg or TINY))
    return path


def train_argv(run: Path, config: Path, *extra: str) -> list[str]:
    """``resfu-med train`` arguments of the tiny deterministic CPU run."""
    return ["train", "--dataset", "demo", "--config", str(config), "--output", str(run), "--max-iters", str(ITERS),
            "--device", "cpu", "--deterministic", "--no-progress", *extra]


def subprocess_env() -> dict[str, str]:
    """Environment of CLI subprocesses: one thread (as in-process, so results compare bit for bit)."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run_cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """Run ``resfu-med ARGV`` in-process; returns ``(exit status, stderr)`` (argparse exits count as statuses)."""
    from resfu_med.cli import main

    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse
        rc = exc.code if isinstance(exc.code, int) else 1
    return rc, capsys.readouterr().err


def assert_one_line_error(rc: int, err: str, command: str, *words: str, strict: bool = True) -> str:
    """The error contract: non-zero exit, no traceback, ONE ``resfu-med <command>: error:`` line naming ``words``.

    ``strict``: stderr holds nothing else (``False`` allows the progress/banner lines a started run prints).
    """
    assert rc != 0, f"exit status 0; stderr: {err}"
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ": error:" in ln]
    assert len(errors) == 1, f"expected one error line, got {lines}"
    if strict:
        assert len(lines) == 1, f"expected stderr to be one line, got {lines}"
    line = errors[0]
    assert line.startswith(f"resfu-med {command}: error:"), line
    for w in words:
        assert str(w) in line, f"{w!r} not in {line!r}"
    return line


def write_nifti(path: Path, data_xyz: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data_xyz), np.eye(4) if affine is None else affine), str(path))
    return path


def ct_volume(shape=(40, 40, 6), seed: int = 0) -> np.ndarray:
    """A CT-like int16 volume (HU) ``(x, y, z)`` with a bright blob."""
    rng = np.random.default_rng(seed)
    vol = rng.normal(-50, 30, size=shape)
    x, y = np.mgrid[: shape[0], : shape[1]]
    vol[(x - shape[0] / 2) ** 2 + (y - shape[1] / 2) ** 2 < (shape[0] / 5) ** 2] += 200
    return vol.astype(np.int16)


def make_btcv(root: Path, ids=(1, 5), shape=(40, 40, 6)) -> Path:
    """A raw BTCV release: ``img/imgXXXX.nii.gz`` + ``label/labelXXXX.nii.gz`` (case 1 is a TransUNet test case)."""
    aff = np.diag([0.8, 0.8, 3.0, 1.0])
    for i in ids:
        img = ct_volume(shape, seed=i)
        lab = np.zeros(shape, np.uint8)
        lab[img > 100] = 6  # liver
        write_nifti(root / "img" / f"img{i:04d}.nii.gz", img, aff)
        write_nifti(root / "label" / f"label{i:04d}.nii.gz", lab, aff)
    return root
