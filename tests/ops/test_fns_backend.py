"""Backend selection, the environment override, the one-time fallback warning, tracing, autocast and compile."""

from __future__ import annotations

import warnings

import pytest
import torch

from resfu_med.ops import backend, build, fns_gather, fns_gather_reference

needs_cpp = pytest.mark.skipif(not build.available("cpu", warn=False), reason=f"C++ extension not built: {build.last_error()}")


def _small(dtype=torch.float32):
    return torch.softmax(torch.randn(2, 9, 10, 12, dtype=dtype), 1), torch.randn(2, 3, 5, 4, dtype=dtype)


def test_env_forces_reference(monkeypatch):
    monkeypatch.setenv("RESFU_MED_BACKEND", "reference")
    assert backend() == "reference"
    attn, x = _small(torch.float64)
    torch.testing.assert_close(fns_gather(attn, x), fns_gather_reference(attn, x), rtol=0, atol=0)


def test_env_rejects_unknown_and_mismatched_backends(monkeypatch):
    monkeypatch.setenv("RESFU_MED_BACKEND", "triton")
    with pytest.raises(ValueError, match="RESFU_MED_BACKEND"):
        backend()
    monkeypatch.setenv("RESFU_MED_BACKEND", "cuda")
    with pytest.raises(ValueError, match="cpu"):
        backend("cpu")


@needs_cpp
def test_env_forces_cpp(monkeypatch):
    monkeypatch.setenv("RESFU_MED_BACKEND", "cpp")
    assert backend() == "cpp"


def _failed_build_state(monkeypatch):
    def fail(**kwargs):
        raise RuntimeError("Error building extension 'x': simulated compiler error")

    monkeypatch.setattr(build, "_state", {"tried": False, "ok": False, "cuda": False, "error": None, "warned": False})
    monkeypatch.setattr(build, "_cpp_load", fail)


def test_build_failure_falls_back_with_one_warning(monkeypatch):
    _failed_build_state(monkeypatch)
    monkeypatch.delenv("RESFU_MED_BACKEND", raising=False)
    attn, x = _small(torch.float64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fns_gather(attn, x)
        fns_gather(attn, x)
        assert backend() == "reference"
    relevant = [w for w in caught if "FNS kernels could not be built" in str(w.message)]
    assert len(relevant) == 1 and "simulated compiler error" in str(relevant[0].message)
    torch.testing.assert_close(out, fns_gather_reference(attn, x), rtol=0, atol=0)


def test_forced_compiled_backend_after_failed_build_raises(monkeypatch):
    _failed_build_state(monkeypatch)
    monkeypatch.setenv("RESFU_MED_BACKEND", "cpp")
    with pytest.raises(RuntimeError, match="simulated compiler error"):
        backend()


def test_build_directory_is_keyed_by_sources_and_torch(tmp_path, monkeypatch):
    monkeypatch.setenv("RESFU_MED_HOME", str(tmp_path))
    sources = build.source_files(with_cuda=False)
    first = build.build_directory(sources, with_cuda=False)
    assert first.parent == tmp_path / "torch_extensions"
    assert build.build_directory(sources, with_cuda=True) != first
    assert all(p.is_file() for p in sources)
    monkeypatch.setattr(torch, "__version__", "0.0.0-other")
    assert build.build_directory(sources, with_cuda=False) != first


@needs_cpp
def test_jit_trace():
    class Up(torch.nn.Module):
        def forward(self, attn, x):
            return fns_gather(attn, x)

    attn, x = _small()
    traced = torch.jit.trace(Up(), (attn, x))
    assert "fns_gather_forward" in str(traced.graph)
    attn2, x2 = _small()
    torch.testing.assert_close(traced(attn2, x2), fns_gather_reference(attn2, x2), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_autocast_cpu_bf16_runs_in_fp32(dtype):
    attn, x = _small(dtype)
    attn.requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fns_gather(attn, x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), fns_gather_reference(attn.detach().double(), x.double()), rtol=1e-5, atol=1e-5)
    out.sum().backward()
    assert attn.grad is not None and attn.grad.dtype == dtype


@needs_cpp
def test_torch_compile_with_autograd():
    attn, x = _small(torch.float64)
    attn.requires_grad_()
    x.requires_grad_()
    fn = torch.compile(lambda a, v: fns_gather(a, v) * 2.0, backend="aot_eager")
    out = fn(attn, x)
    ga, gx = torch.autograd.grad(out.sum(), (attn, x))
    ref = fns_gather_reference(attn, x) * 2.0
    ra, rx = torch.autograd.grad(ref.sum(), (attn, x))
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ga, ra, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gx, rx, rtol=1e-10, atol=1e-10)


def test_build_directory_differs_between_checkouts(tmp_path, monkeypatch):
    # build.ninja holds absolute source paths: two checkouts sharing one folder would rebuild each other's library
    monkeypatch.setenv("RESFU_MED_HOME", str(tmp_path))
    sources = build.source_files(with_cuda=False)
    first = build.build_directory(sources, with_cuda=False)
    other = tmp_path / "other-checkout"
    other.mkdir()
    for name in build._HEADERS:  # same content, other folder
        (other / name).write_bytes((build._csrc_dir() / name).read_bytes())
    monkeypatch.setattr(build, "_csrc_dir", lambda: other)
    assert build.build_directory(sources, with_cuda=False) != first
