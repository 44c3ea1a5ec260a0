"""One ``--device`` rule for every command: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` (train used to reject ``cuda:1``,
which infer accepted)."""

from __future__ import annotations

import pytest
import torch

from resfu_med.cli import main
from resfu_med.engine.config import DEFAULTS, merge_config
from resfu_med.engine.device import resolve_device
from resfu_med.errors import InputError

NO_CUDA = not torch.cuda.is_available()


def test_cpu_and_auto():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == resolve_device("auto")


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "mps", "tpu:0"])
def test_not_a_device_is_one_line(name):
    with pytest.raises(InputError, match=rf"--device '?{name}'?"):
        resolve_device(name)


@pytest.mark.skipif(not NO_CUDA, reason="checks the message on a machine without CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu(name):
    with pytest.raises(InputError, match=rf"--device {name}: no CUDA device is available"):
        resolve_device(name)


def test_config_accepts_every_device_spelling_resolve_device_accepts():
    for name in ("auto", "cpu", "cuda", "cuda:1"):
        assert merge_config(DEFAULTS, {"device": name})["device"] == name
    with pytest.raises(InputError, match="device must be auto, cpu, cuda or cuda:N, got 'gpu'"):
        merge_config(DEFAULTS, {"device": "gpu"})


@pytest.mark.skipif(not NO_CUDA, reason="checks the message on a machine without CUDA")
def test_train_and_infer_treat_cuda_1_alike(tmp_path, capsys):
    scan = tmp_path / "scan.nii.gz"
    scan.write_bytes(b"")
    codes = [main(["train", "--dataset", "demo", "--device", "cuda:1", "--output", str(tmp_path / "run")]),
             main(["infer", "-i", str(scan), "-o", str(tmp_path / "segs"), "--checkpoint", str(tmp_path / "x.pt"),
                   "--device", "cuda:1"])]
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ": error:" in ln]
    assert codes == [2, 2] and len(errors) == 2
    assert all(ln.endswith("--device cuda:1: no CUDA device is available (use --device cpu)") for ln in errors), errors
