"""Backend selection, the environment override, the one-time fallback warning, tracing, autocast and compile."""

from __future__ import annotations

import importlib
import threading
import warnings
from pathlib import Path

import pytest
import torch

from resfu_med.ops import backend, build, fns_gather, fns_gather_reference, use_backend

fns_module = importlib.import_module("resfu_med.ops.fns_gather")  # the package attribute is the function

needs_cpp = pytest.mark.skipif(not build.available("cpu", warn=False), reason=f"C++ extension not built: {build.last_error()}")


def _small(dtype=torch.float32):
    return torch.softmax(torch.randn(2, 9, 10, 12, dtype=dtype), 1), torch.randn(2, 3, 5, 4, dtype=dtype)


@pytest.fixture
def fresh_env():
    # The environment is read once per process; make these tests read it again, before and after.
    fns_module._reread_environment()
    yield
    fns_module._reread_environment()


def test_env_forces_reference(monkeypatch, fresh_env):
    monkeypatch.setenv("RESFU_MED_BACKEND", "reference")
    assert backend() == "reference"
    attn, x = _small(torch.float64)
    torch.testing.assert_close(fns_gather(attn, x), fns_gather_reference(attn, x), rtol=0, atol=0)


def test_env_rejects_unknown_and_mismatched_backends(monkeypatch, fresh_env):
    monkeypatch.setenv("RESFU_MED_BACKEND", "triton")
    with pytest.raises(ValueError, match="RESFU_MED_BACKEND"):
        backend()
    fns_module._reread_environment()
    monkeypatch.setenv("RESFU_MED_BACKEND", "cuda")
    with pytest.raises(ValueError, match="cpu"):
        backend("cpu")


def test_env_is_read_once(monkeypatch, fresh_env):
    monkeypatch.delenv("RESFU_MED_BACKEND", raising=False)
    first = backend()
    monkeypatch.setenv("RESFU_MED_BACKEND", "reference")
    assert backend() == first  # no environment read per call; use_backend() switches within a process


@needs_cpp
def test_env_forces_cpp(monkeypatch, fresh_env):
    monkeypatch.setenv("RESFU_MED_BACKEND", "cpp")
    assert backend() == "cpp"


def test_use_backend_context_manager(fresh_env):
    native = backend()
    with use_backend("reference"):
        assert backend() == "reference"
        with use_backend(native):
            assert backend() == native
        assert backend() == "reference"
    assert backend() == native
    with pytest.raises(ValueError, match="use_backend"):
        with use_backend("triton"):
            pass
    with use_backend("cuda"), pytest.raises(ValueError, match="cpu"):
        backend("cpu")


def test_use_backend_is_per_thread(fresh_env):
    seen = []
    with use_backend("reference"):
        worker = threading.Thread(target=lambda: seen.append(backend()))
        worker.start()
        worker.join()
    assert seen == [backend()]


def _failed_build_state(monkeypatch, tmp_path, fail_kind="cpu"):
    real = build._cpp_load

    def load(**kwargs):
        if kwargs["name"].startswith(f"resfu_med_{fail_kind}_"):
            raise RuntimeError("Error building extension 'x': simulated compiler error")
        return real(**kwargs)

    monkeypatch.setenv("RESFU_MED_HOME", str(tmp_path))
    monkeypatch.delenv(build.ENV_REQUIRE, raising=False)
    monkeypatch.setattr(build, "_state", dict(build._state, tried=False, ok=False, cuda=False, error=None, cuda_error=None, log=None, warned=False))
    monkeypatch.setattr(build, "_cpp_load", load)


def test_build_failure_falls_back_with_one_warning_naming_the_log(monkeypatch, tmp_path, fresh_env):
    _failed_build_state(monkeypatch, tmp_path)
    monkeypatch.delenv("RESFU_MED_BACKEND", raising=False)
    attn, x = _small(torch.float64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fns_gather(attn, x)
        fns_gather(attn, x)
        assert backend() == "reference"
    relevant = [w for w in caught if "could not be built" in str(w.message)]
    assert len(relevant) == 1 and "simulated compiler error" in str(relevant[0].message)
    log = build.build_log()
    assert log is not None and log.is_file() and str(log) in str(relevant[0].message)
    assert "simulated compiler error" in log.read_text()
    torch.testing.assert_close(out, fns_gather_reference(attn, x), rtol=0, atol=0)


def test_require_kernel_makes_a_failed_build_fatal(monkeypatch, tmp_path, fresh_env):
    _failed_build_state(monkeypatch, tmp_path)
    monkeypatch.setenv(build.ENV_REQUIRE, "1")
    with pytest.raises(RuntimeError, match="simulated compiler error.*build log"):
        fns_gather(*_small(torch.float64))


def test_ci_requires_the_kernel():
    assert f"export {build.ENV_REQUIRE}=1" in (Path(__file__).resolve().parents[2] / ".ci" / "run").read_text()


@needs_cpp
def test_cuda_build_failure_keeps_the_cpu_kernel(monkeypatch, tmp_path, fresh_env):
    home = build.build_directory(build.source_files("cpu")).parents[1]  # the CPU library already loaded (one copy only)
    _failed_build_state(monkeypatch, tmp_path, fail_kind="cuda")
    monkeypatch.setattr(build, "_want_cuda", lambda: True)
    monkeypatch.setenv("RESFU_MED_HOME", str(home))
    assert build.available("cpu", warn=False)
    with pytest.warns(RuntimeWarning, match="CUDA FNS kernel could not be built.*build log"):
        assert not build.available("cuda")
    assert backend("cpu") == "cpp"


def test_forced_compiled_backend_after_failed_build_raises(monkeypatch, tmp_path, fresh_env):
    _failed_build_state(monkeypatch, tmp_path)
    with use_backend("cpp"), pytest.raises(RuntimeError, match="simulated compiler error"):
        backend()


def test_build_directory_is_keyed_by_sources_torch_and_cuda_targets(tmp_path, monkeypatch):
    monkeypatch.setenv("RESFU_MED_HOME", str(tmp_path))
    sources = build.source_files("cpu")
    first = build.build_directory(sources, "cpu")
    assert first.parent == tmp_path / "torch_extensions"
    assert all(p.is_file() for p in sources + build.source_files("cuda") + build.source_files("testing"))
    cuda = build.build_directory(build.source_files("cuda"), "cuda")
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    assert build.build_directory(build.source_files("cuda"), "cuda") != cuda  # never load an image for other GPUs
    assert build.build_directory(sources, "cpu") == first
    monkeypatch.setattr(torch, "__version__", "0.0.0-other")
    assert build.build_directory(sources, "cpu") != first


@needs_cpp
def test_production_library_is_parallel_and_has_no_test_op():
    library = next(build.build_directory(build.source_files("cpu"), "cpu").glob("*.so")).read_bytes()
    assert b"fns_gather_elementwise" not in library and not hasattr(torch.ops.resfu_med, "fns_gather_elementwise")
    if torch.backends.openmp.is_available():
        assert b"GOMP_parallel" in library  # compiled with OpenMP: at::parallel_for is not its serial branch


@needs_cpp
@pytest.mark.parametrize("spatial", [2, 3])
def test_opcheck(spatial):
    shape = ((2, 9, 7, 10), (2, 3, 3, 4)) if spatial == 2 else ((1, 27, 3, 6, 5), (1, 2, 2, 3, 3))
    attn = torch.randn(*shape[0], dtype=torch.float64, requires_grad=True)
    x = torch.randn(*shape[1], dtype=torch.float64, requires_grad=True)
    a, v = (attn.unsqueeze(2), x.unsqueeze(2)) if spatial == 2 else (attn, x)
    kd = 1 if spatial == 2 else 3
    torch.library.opcheck(torch.ops.resfu_med.fns_gather_forward.default, (a, v, kd, False))
    grad = torch.randn(v.shape[0], v.shape[1], *a.shape[2:], dtype=torch.float64)
    for need in [(True, True), (True, False), (False, True)]:
        torch.library.opcheck(torch.ops.resfu_med.fns_gather_backward.default, (grad, a.detach(), v.detach(), kd, False, *need))


@needs_cpp
def test_backward_computes_only_the_needed_gradients():
    attn, x = _small(torch.float64)
    a, v, g = attn.unsqueeze(2), x.unsqueeze(2), torch.randn(2, 3, 1, 10, 12, dtype=torch.float64)
    ga, gx = torch.ops.resfu_med.fns_gather_backward(g, a, v, 1, False, True, False)
    assert ga.shape == a.shape and gx.numel() == 0
    ga, gx = torch.ops.resfu_med.fns_gather_backward(g, a, v, 1, False, False, True)
    assert ga.numel() == 0 and gx.shape == v.shape
    attn.requires_grad_()
    (grad_attn,) = torch.autograd.grad(fns_gather(attn, x).sum(), attn)
    torch.testing.assert_close(grad_attn, torch.autograd.grad(fns_gather_reference(attn, x).sum(), attn)[0])


@needs_cpp
def test_double_backward_raises_a_clear_error():
    attn, x = _small(torch.float64)
    attn.requires_grad_()
    (g,) = torch.autograd.grad(fns_gather(attn, x).pow(2).sum(), attn, create_graph=False)
    assert g.shape == attn.shape
    with pytest.raises(RuntimeError, match="double backward.*use_backend"):
        torch.autograd.grad(fns_gather(attn, x).pow(2).sum(), attn, create_graph=True)


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
    sources = build.source_files("cpu")
    first = build.build_directory(sources, "cpu")
    other = tmp_path / "other-checkout"
    other.mkdir()
    for name in build._HEADERS:  # same content, other folder
        (other / name).write_bytes((build._csrc_dir() / name).read_bytes())
    monkeypatch.setattr(build, "_csrc_dir", lambda: other)
    assert build.build_directory(sources, "cpu") != first


def test_constant_backend_marker_matches_dynamos_decorator():
    # fns_gather marks its backend lookup constant for torch.compile without importing torch._dynamo (0.5 s of CPU
    # per process); this is exactly what torch's own decorator does, or the marker has drifted.
    module = importlib.import_module("resfu_med.ops.fns_gather")

    def probe():
        return 0

    marked = torch.compiler.assume_constant_result(probe)
    assert vars(marked) == {"_dynamo_marked_constant": True}
    assert vars(module._backend_for) == vars(marked)


def test_importing_the_op_does_not_import_dynamo():
    import subprocess
    import sys

    code = "import sys, resfu_med.ops; print('torch._dynamo' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False", out.stderr
