"""The C++ CPU kernels against the pure-PyTorch reference (fp64, 1e-10), gradcheck, bf16, borders, bad input.

The CUDA kernels' per-element formulas are also run on CPU (test-only library, op ``fns_gather_elementwise``) and
checked here.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from resfu_med.ops import backend, build, fns_gather, fns_gather_reference

pytestmark = pytest.mark.skipif(not build.available("cpu", warn=False), reason=f"C++ extension not built: {build.last_error()}")

RATIOS_2D = [((5, 4), (5, 4)), ((5, 6), (10, 12)), ((3, 4), (12, 16)), ((2, 3), (16, 24)), ((14, 14), (32, 32)), ((7, 7), (16, 16)), ((5, 3), (17, 11))]
RATIOS_3D = [((2, 3, 3), (2, 3, 3)), ((3, 4, 4), (3, 8, 8)), ((2, 3, 3), (4, 6, 6)), ((2, 2, 3), (8, 8, 6)), ((3, 3, 2), (5, 7, 6))]
BATCH_CHANNELS = [(1, 1), (2, 3), (3, 2)]
CASES_2D = [(k, lr, hr, BATCH_CHANNELS[i % 3]) for i, (k, (lr, hr)) in enumerate(itertools.product((1, 3, 5, 7), RATIOS_2D))]
CASES_3D = [(k, lr, hr, BATCH_CHANNELS[i % 3]) for i, (k, (lr, hr)) in enumerate(itertools.product((1, 3, 5), RATIOS_3D))]
CASES_3D.append((7, (2, 2, 2), (4, 4, 4), (1, 2)))


def _inputs(k, lr, hr, nc, dtype=torch.float64):
    n, c = nc
    attn = torch.randn(n, k ** len(lr), *hr, dtype=dtype, requires_grad=True)
    x = torch.randn(n, c, *lr, dtype=dtype, requires_grad=True)
    return attn, x


def _reference_all(attn, x, grad):
    out = fns_gather_reference(attn, x)
    return (out, *torch.autograd.grad(out, (attn, x), grad))


def _kernel_all(attn, x, grad, **kw):
    out = fns_gather(attn, x, **kw)
    return (out, *torch.autograd.grad(out, (attn, x), grad))


def test_backend_is_cpp():
    assert backend() == "cpp"


@pytest.mark.parametrize("k,lr,hr,nc", CASES_2D + CASES_3D)
def test_matches_reference_fp64(k, lr, hr, nc):
    attn, x = _inputs(k, lr, hr, nc)
    grad = torch.randn(nc[0], nc[1], *hr, dtype=torch.float64)
    for got, want in zip(_kernel_all(attn, x, grad), _reference_all(attn, x, grad)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


# K = 11 > kMaxAxisTaps: the CUDA kernels' per-element fallback.
ELEMENTWISE_CASES = CASES_2D[::3] + [c for c in CASES_3D if c[0] <= 3][::2] + [(5, (2, 3, 3), (4, 6, 6), (1, 2)), (11, (4, 3), (9, 7), (1, 2))]


@pytest.mark.parametrize("k,lr,hr,nc", ELEMENTWISE_CASES)
def test_cuda_formulas_match_reference_on_cpu(k, lr, hr, nc):
    # The per-element functions the CUDA kernels run (incl. the deterministic gather grad_x), executed on CPU.
    attn, x = _inputs(k, lr, hr, nc)
    grad = torch.randn(nc[0], nc[1], *hr, dtype=torch.float64)
    want = _reference_all(attn, x, grad)
    a, xx, g = attn.detach(), x.detach(), grad
    if len(lr) == 2:
        a, xx, g = a.unsqueeze(2), xx.unsqueeze(2), g.unsqueeze(2)
    for deterministic in (True, False):
        got = build.load_testing().fns_gather_elementwise(g, a, xx, 1 if len(lr) == 2 else k, deterministic)
        for gt, wt in zip(got, want):
            torch.testing.assert_close(gt.reshape(wt.shape), wt, rtol=1e-10, atol=1e-10)


def test_2d_op_equals_3d_op_with_depth_one():
    # With d = D = 1 every depth offset clamps onto the single slice, so the 3D op equals the 2D op applied to the
    # attention summed over the depth offsets.
    attn3 = torch.randn(2, 27, 1, 10, 12, dtype=torch.float64)
    x = torch.randn(2, 3, 1, 5, 4, dtype=torch.float64)
    out3 = fns_gather(attn3, x)
    out2 = fns_gather(attn3.view(2, 3, 9, 10, 12).sum(1), x[:, :, 0])
    torch.testing.assert_close(out3[:, :, 0], out2, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", ["2d", "3d"])
def test_last_lr_row_and_column_receive_their_gradient(shape):
    # Neighbour offset +R pushes many HR pixels past the last LR row/column; clamping gives them to the last index.
    if shape == "2d":
        attn, x = _inputs(3, (5, 3), (17, 11), (2, 2))
    else:
        attn, x = _inputs(3, (3, 3, 2), (5, 7, 6), (1, 2))
    grad = torch.randn(x.shape[0], x.shape[1], *attn.shape[2:], dtype=torch.float64)
    _, _, gx = _kernel_all(attn, x, grad)
    _, _, rx = _reference_all(attn, x, grad)
    for axis in range(2, x.dim()):
        last_k, last_r = gx.select(axis, -1), rx.select(axis, -1)
        assert last_r.abs().max() > 0.1
        torch.testing.assert_close(last_k, last_r, rtol=1e-10, atol=1e-10)


def test_hand_computed_border_gradient_on_2x2():
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], dtype=torch.float64, requires_grad=True)
    attn = torch.zeros(1, 9, 4, 4, dtype=torch.float64)
    attn[:, 7] = 1.0  # offset (+1, 0)
    fns_gather(attn, x).sum().backward()
    torch.testing.assert_close(x.grad[0, 0], torch.tensor([[0.5, 0.5], [7.5, 7.5]], dtype=torch.float64))


@pytest.mark.parametrize("lr,hr", [((5, 3), (17, 11)), ((3, 3, 2), (4, 6, 5))])
def test_gradcheck(lr, hr):
    attn, x = _inputs(3, lr, hr, (1, 2))
    assert torch.autograd.gradcheck(lambda a, v: fns_gather(a, v), (attn, x), eps=1e-6, atol=1e-8)


def test_non_contiguous_inputs():
    attn_full = torch.randn(2, 12, 16, 9, dtype=torch.float64).transpose(2, 3)[:, :9]  # (2, 9, 9, 16), strided
    x_full = torch.randn(2, 4, 10, 7, dtype=torch.float64)[:, ::2, ::2]  # (2, 2, 5, 7)
    attn, x = attn_full.requires_grad_(), x_full.requires_grad_()
    assert not attn.is_contiguous() and not x.is_contiguous()
    grad = torch.randn(2, 2, 9, 16, dtype=torch.float64).transpose(2, 3).contiguous().transpose(2, 3)
    for got, want in zip(_kernel_all(attn, x, grad), _reference_all(attn, x, grad)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("k,lr,hr", [(3, (7, 7), (16, 16)), (3, (3, 4, 4), (3, 8, 8))])
def test_bf16_inputs_accumulate_in_fp32(k, lr, hr):
    attn = torch.softmax(torch.randn(2, k ** len(lr), *hr), 1).to(torch.bfloat16).requires_grad_()
    x = torch.randn(2, 8, *lr).to(torch.bfloat16).requires_grad_()
    grad = torch.randn(2, 8, *hr).to(torch.bfloat16)
    got = _kernel_all(attn, x, grad)
    a64, x64 = attn.detach().double().requires_grad_(), x.detach().double().requires_grad_()
    want = _reference_all(a64, x64, grad.double())
    for g, w in zip(got, want):
        assert g.dtype == torch.bfloat16
        torch.testing.assert_close(g.double(), w, rtol=2e-2, atol=2e-2 * max(1.0, w.abs().max().item()) / 4)


def test_deterministic_flag_equals_default_on_cpu():
    attn, x = _inputs(3, (5, 3), (17, 11), (2, 3))
    grad = torch.randn(2, 3, 17, 11, dtype=torch.float64)
    a = _kernel_all(attn, x, grad)
    b = _kernel_all(attn, x, grad, deterministic=True)
    for u, v in zip(a, b):
        assert torch.equal(u, v)


@pytest.mark.parametrize("n", [1, 3])
def test_results_do_not_depend_on_thread_count(n):
    # The backward splits LR rows into one band per thread: grad_x must still sum every element in one fixed order.
    attn, x = _inputs(5, (3, 7, 6), (5, 19, 15), (n, 5))
    grad = torch.randn(n, 5, 5, 19, 15, dtype=torch.float64)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2, 4):
            torch.set_num_threads(count)
            results.append(_kernel_all(attn, x, grad))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for u, v in zip(results[0], other):
            assert torch.equal(u, v)


def _bad_inputs():
    f = torch.float32
    yield "rank", torch.ones(1, 9, 4), torch.ones(1, 1, 2, 2)
    yield "rank", torch.ones(1, 9, 4, 4), torch.ones(1, 1, 2, 2, 2)
    yield "K", torch.ones(1, 4, 4, 4), torch.ones(1, 1, 2, 2)
    yield "K", torch.ones(1, 8, 4, 4), torch.ones(1, 1, 2, 2)
    yield "K", torch.ones(1, 9, 4, 4, 4), torch.ones(1, 1, 2, 2, 2)
    yield "batch", torch.ones(2, 9, 4, 4), torch.ones(1, 1, 2, 2)
    yield "smaller", torch.ones(1, 9, 4, 4), torch.ones(1, 1, 5, 2)
    yield "smaller", torch.ones(1, 27, 4, 4, 4), torch.ones(1, 1, 2, 2, 5)
    yield "dtype", torch.ones(1, 9, 4, 4, dtype=torch.float64), torch.ones(1, 1, 2, 2, dtype=f)
    yield "dtype", torch.ones(1, 9, 4, 4, dtype=torch.int64), torch.ones(1, 1, 2, 2, dtype=torch.int64)
    yield "empty", torch.ones(0, 9, 4, 4), torch.ones(0, 1, 2, 2)
    yield "empty", torch.ones(1, 9, 4, 4), torch.ones(1, 0, 2, 2)
    yield "empty", torch.ones(1, 9, 0, 4), torch.ones(1, 1, 0, 2)
    if torch.device("meta") is not None:
        yield "device", torch.ones(1, 9, 4, 4, device="meta"), torch.ones(1, 1, 2, 2)


@pytest.mark.parametrize("what,attn,x", list(_bad_inputs()), ids=[c[0] for c in _bad_inputs()])
def test_bad_input_raises_value_error_naming_shapes(what, attn, x):
    with pytest.raises(ValueError, match=r"attn .*x ") as err:
        fns_gather(attn, x)
    assert str(tuple(x.shape)) in str(err.value)
