"""TorchScript / ONNX export reproduce the PyTorch model (TorchScript exactly, ONNX within 1e-4)."""

from __future__ import annotations

import pytest
import torch
from bundle_helpers import TINY_UNET

from resfu_med.bundle import export_onnx, export_torchscript, onnx_available, run_onnx
from resfu_med.cli import main
from resfu_med.ops import use_backend


def _nets():
    from monai.networks.nets import BasicUNet

    yield "monai-basicunet-2d", BasicUNet(spatial_dims=2, **TINY_UNET), (1, 1, 32, 32)
    yield "monai-basicunet-3d", BasicUNet(spatial_dims=3, **TINY_UNET), (1, 1, 16, 16, 32)


NETS = list(_nets())


@pytest.mark.parametrize("name, net, shape", NETS, ids=[n[0] for n in NETS])
def test_torchscript_round_trip_exact(tmp_path, name, net, shape):
    net = net.eval()
    example = torch.rand(*shape)
    info = export_torchscript(net, tmp_path / "model.ts", example)
    assert info["method"] == "script" and info["max_abs_diff"] == 0.0
    loaded = torch.jit.load(str(tmp_path / "model.ts"))
    # Scripted, not traced: another batch and size than the example give the same answer as the eager model.
    other = torch.rand(2, *shape[1:-1], shape[-1] + 16)
    with torch.no_grad():
        assert torch.equal(loaded(other), net(other))


def test_untraceable_script_falls_back_to_trace(tmp_path):
    class Dynamic(torch.nn.Module):  # **kwargs are not scriptable
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 2, 3, padding=1)

        def forward(self, x, **kwargs):
            return self.conv(x) * 2

    net = Dynamic().eval()
    x = torch.rand(1, 1, 8, 8)
    with pytest.warns(UserWarning, match="cannot be scripted"):
        info = export_torchscript(net, tmp_path / "m.ts", x)
    assert info["method"] == "trace" and info["max_abs_diff"] == 0.0
    with torch.no_grad():
        assert torch.equal(torch.jit.load(str(tmp_path / "m.ts"))(x), net.conv(x) * 2)


def _resfu_unet():
    from resfu_med.networks import BasicUNet

    torch.manual_seed(0)
    return BasicUNet(spatial_dims=2, in_channels=1, out_channels=3, features=(16,) * 6, upsampler="resfu").eval()


def test_resfu_network_torchscript_trace_exact(tmp_path):
    # ReSFU networks do not script; they are traced at the window size, through the FNS reference.
    net, example = _resfu_unet(), torch.rand(2, 1, 32, 32)
    info = export_torchscript(net, tmp_path / "model.ts", example)
    assert info["method"] == "trace" and info["max_abs_diff"] == 0.0
    other = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        traced = torch.jit.load(str(tmp_path / "model.ts"))(other)
        with _reference():
            assert torch.equal(traced, net(other))
        torch.testing.assert_close(traced, net(other), atol=1e-5, rtol=0)  # the default (C++) backend: rounding only


@pytest.mark.skipif(not onnx_available(), reason="onnx / onnxruntime not installed")
def test_resfu_network_onnx(tmp_path):
    net = _resfu_unet()
    info = export_onnx(net, tmp_path / "model.onnx", torch.rand(1, 1, 32, 32))
    assert info["max_abs_diff"] <= 1e-4
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(run_onnx(tmp_path / "model.onnx", x), net(x), atol=1e-4, rtol=0)


def _reference():
    return use_backend("reference")


@pytest.mark.skipif(not onnx_available(), reason="onnx / onnxruntime not installed")
@pytest.mark.parametrize("name, net, shape", NETS[:1], ids=[n[0] for n in NETS[:1]])
def test_onnx_matches(tmp_path, name, net, shape):
    net = net.eval()
    example = torch.rand(*shape)
    info = export_onnx(net, tmp_path / "model.onnx", example)
    assert info["max_abs_diff"] <= 1e-4
    batch = torch.rand(3, *shape[1:])  # dynamic batch axis
    with torch.no_grad():
        torch.testing.assert_close(run_onnx(tmp_path / "model.onnx", batch), net(batch), atol=1e-4, rtol=0)


def test_cli_export_torchscript(tmp_path, checkpoint, capsys):
    path, net = checkpoint
    assert main(["export", "--checkpoint", str(path), "--format", "torchscript", "--output", str(tmp_path / "m.ts")]) == 0
    assert "max |exported - pytorch| = 0" in capsys.readouterr().out
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(torch.jit.load(str(tmp_path / "m.ts"))(x), net(x))


@pytest.mark.skipif(not onnx_available(), reason="onnx / onnxruntime not installed")
def test_cli_export_onnx(tmp_path, checkpoint):
    path, net = checkpoint
    assert main(["export", "--checkpoint", str(path), "--format", "onnx", "--output", str(tmp_path / "m.onnx")]) == 0
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(run_onnx(tmp_path / "m.onnx", x), net(x), atol=1e-4, rtol=0)
