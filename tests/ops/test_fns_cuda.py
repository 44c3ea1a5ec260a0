"""CUDA kernels against the reference (same grid as the CPU tests), half precision, deterministic backward.

Skipped cleanly without a GPU; the CUDA maths itself is also checked on CPU (``test_cuda_formulas_match_reference_on_cpu``)
and every ``.cu`` file is compile-checked by ``test_fns_nvcc.py``.
"""

from __future__ import annotations

import pytest
import torch

from resfu_med.ops import backend, build, fns_gather, fns_gather_reference

# Same rule as tests/conftest.py's requires_cuda (not imported: other test folders have their own conftest.py).
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
pytestmark = [pytest.mark.cuda, requires_cuda]

from test_fns_gather import CASES_2D, CASES_3D  # noqa: E402  (same parameter grid as the CPU kernel)


def _grads(attn, x, grad, **kw):
    out = fns_gather(attn, x, **kw)
    return (out, *torch.autograd.grad(out, (attn, x), grad))


def _reference(attn, x, grad):
    a = attn.detach().double().cpu().requires_grad_()
    v = x.detach().double().cpu().requires_grad_()
    out = fns_gather_reference(a, v)
    return (out, *torch.autograd.grad(out, (a, v), grad.double().cpu()))


def test_cuda_backend_selected():
    assert build.available("cuda"), build.last_error()
    assert backend("cuda") == "cuda"


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("k,lr,hr,nc", CASES_2D + CASES_3D)
def test_matches_reference_fp64(k, lr, hr, nc, deterministic):
    n, c = nc
    attn = torch.randn(n, k ** len(lr), *hr, dtype=torch.float64, device="cuda", requires_grad=True)
    x = torch.randn(n, c, *lr, dtype=torch.float64, device="cuda", requires_grad=True)
    grad = torch.randn(n, c, *hr, dtype=torch.float64, device="cuda")
    for got, want in zip(_grads(attn, x, grad, deterministic=deterministic), _reference(attn, x, grad)):
        torch.testing.assert_close(got.cpu(), want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.float16, 1e-2), (torch.bfloat16, 4e-2)])
@pytest.mark.parametrize("k,lr,hr", [(3, (14, 14), (32, 32)), (5, (5, 3), (17, 11)), (3, (3, 4, 4), (3, 8, 8))])
def test_low_precision(k, lr, hr, dtype, tol):
    attn = torch.softmax(torch.randn(2, k ** len(lr), *hr, device="cuda"), 1).to(dtype).requires_grad_()
    x = torch.randn(2, 8, *lr, device="cuda").to(dtype).requires_grad_()
    grad = torch.randn(2, 8, *hr, device="cuda").to(dtype)
    for got, want in zip(_grads(attn, x, grad, deterministic=True), _reference(attn, x, grad)):
        assert got.dtype == dtype
        torch.testing.assert_close(got.double().cpu(), want, rtol=tol, atol=tol * max(1.0, want.abs().max().item()))


@pytest.mark.parametrize("lr,hr", [((7, 7), (56, 56)), ((3, 6, 6), (6, 24, 24))])
def test_deterministic_backward_is_bit_identical(lr, hr):
    attn = torch.randn(2, 9 if len(lr) == 2 else 27, *hr, device="cuda", requires_grad=True)
    x = torch.randn(2, 16, *lr, device="cuda", requires_grad=True)
    grad = torch.randn(2, 16, *hr, device="cuda")
    runs = [_grads(attn, x, grad, deterministic=True) for _ in range(3)]
    for other in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0], other))
    atomic = _grads(attn, x, grad, deterministic=False)
    for a, b in zip(runs[0], atomic):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_non_contiguous_and_autocast_on_cuda():
    attn = torch.randn(2, 12, 16, 9, device="cuda").transpose(2, 3)[:, :9]
    x = torch.randn(2, 4, 10, 7, device="cuda")[:, ::2, ::2]
    want = fns_gather_reference(attn.double().cpu(), x.double().cpu())
    torch.testing.assert_close(fns_gather(attn, x).double().cpu(), want, rtol=1e-5, atol=1e-5)
    with torch.autocast("cuda", dtype=torch.float16):
        out = fns_gather(attn.half(), x.half())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double().cpu(), fns_gather_reference(attn.half().double().cpu(), x.half().double().cpu()), rtol=1e-5, atol=1e-5)
