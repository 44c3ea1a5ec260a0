"""Property sweep of the FNS gather over every ratio: each (in, out) pair with in <= 32, out <= 8 * in, K in {1, 3, 5, 7}.

Issue 16: for K >= 5 at non-integer ratios the rounding of ``u = x + a`` in float64 can cross an integer, so one HR
pixel's K offsets span K + 2 LR taps; the CPU kernel's per-axis tables held K + 1 and wrote past their end (wrong
values, heap corruption). The sweep runs one spatial axis at a time (the others 1 -> 1, so cheap) against an
independent float64 NumPy formula of docs/fns_operator.md, forward and both gradients, on every backend: the C++ kernel, the CPU
mirror of the CUDA per-element formulas and the pure-PyTorch reference. Random 2D/3D shapes cover the axes together.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from resfu_med.ops import build, fns_gather_reference

needs_cpp = pytest.mark.skipif(not build.available("cpu", warn=False), reason=f"C++ extension not built: {build.last_error()}")

KS = (1, 3, 5, 7)
PAIRS = [(i, o) for i in range(1, 33) for o in range(i, 8 * i + 1)]


def axis_matrices(n_in: int, n_out: int, k: int) -> np.ndarray:
    """``(K, out, in)`` linear-interpolation matrices of one axis, one per offset (docs/fns_operator.md, written independently)."""
    r = k // 2
    offsets = np.arange(-r, r + 1, dtype=np.float64)[:, None]
    base = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5  # same float64 operation order as the kernels
    u = np.minimum(np.maximum(base + offsets, 0.0), n_in - 1)  # (K, out)
    lo = np.minimum(np.floor(u).astype(np.int64), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = u - lo
    mats = np.zeros((k, n_out, n_in))
    slab = np.arange(k)[:, None] * n_out * n_in + np.arange(n_out)[None] * n_in
    np.add.at(mats.reshape(-1), (slab + lo).ravel(), (1.0 - frac).ravel())  # lo == hi at the clamped border: add
    np.add.at(mats.reshape(-1), (slab + hi).ravel(), frac.ravel())
    return mats


def expected_1d(attn: np.ndarray, x: np.ndarray, grad: np.ndarray, mats: np.ndarray):
    """Forward and gradients for one sample of a 1-axis problem: attn (K, out) per offset, x (C, in), grad (C, out)."""
    sampled = mats @ x.T  # (K, out, C): value of every offset at every HR pixel
    out = (attn[:, :, None] * sampled).sum(0).T
    grad_attn = (sampled * grad.T[None]).sum(-1)
    grad_x = ((mats * attn[:, :, None]).sum(0).T @ grad.T).T
    return out, grad_attn, grad_x


def _problem(n_in: int, n_out: int, k: int, axis: int, spatial: int, gen: torch.Generator):
    """A (1, K^d, ...) problem whose spatial axis ``axis`` is n_in -> n_out and every other axis 1 -> 1."""
    lr, hr = [1] * spatial, [1] * spatial
    lr[axis], hr[axis] = n_in, n_out
    attn = torch.randn(1, k**spatial, *hr, dtype=torch.float64, generator=gen)
    x = torch.randn(1, 2, *lr, dtype=torch.float64, generator=gen)
    grad = torch.randn(1, 2, *hr, dtype=torch.float64, generator=gen)
    # Offsets on the length-1 axes clamp onto the single index: the 1-D problem sees the attention summed over them.
    per_axis = attn.view(1, *(k,) * spatial, n_out).sum(dim=[1 + a for a in range(spatial) if a != axis]).reshape(k, n_out)
    want = expected_1d(per_axis.numpy(), x.reshape(2, n_in).numpy(), grad.reshape(2, n_out).numpy(), axis_matrices(n_in, n_out, k))
    # grad_attn is the same for every offset of the length-1 axes: broadcast it back to the K^d layout.
    ga = torch.from_numpy(want[1]).view(*[k if a == axis else 1 for a in range(spatial)], n_out)
    ga = ga.expand(*(k,) * spatial, n_out).reshape(1, k**spatial, *hr)
    return attn, x, grad, (torch.from_numpy(want[0]).view(1, 2, *hr), ga, torch.from_numpy(want[2]).view(1, 2, *lr))


def _as3d(*tensors):
    return [t.unsqueeze(2) if t.dim() == 4 else t for t in tensors]


def run_backend(name: str, attn, x, grad):
    """``(out, grad_attn, grad_x)`` of one backend, in the input shapes."""
    kd = 1 if x.dim() == 4 else round(attn.shape[1] ** (1 / 3))
    if name == "cpp":
        a, v, g = _as3d(attn, x, grad)
        out = torch.ops.resfu_med.fns_gather_forward(a, v, kd, False)
        ga, gx = torch.ops.resfu_med.fns_gather_backward(g, a, v, kd, False, True, True)
    elif name.startswith("mirror"):  # the CUDA kernels' formulas run serially on CPU: gather or atomic-style grad_x
        a, v, g = _as3d(attn, x, grad)
        out, ga, gx = build.load_testing().fns_gather_elementwise(g, a, v, kd, name == "mirror-gather")
    else:
        a, v = attn.clone().requires_grad_(), x.clone().requires_grad_()
        out = fns_gather_reference(a, v)
        ga, gx = torch.autograd.grad(out, (a, v), grad)
    return out.reshape(grad.shape), ga.reshape(attn.shape), gx.reshape(x.shape)


def _check(got, want, what):
    for name, g, w in zip(("out", "grad_attn", "grad_x"), got, want):
        err = (g - w).abs().max().item()
        if not err <= 1e-10 * max(1.0, w.abs().max().item()):  # `not <=` also catches NaN
            pytest.fail(f"{what}: {name} error {err:.3g}")


def _compiled_backends() -> list[str]:
    return ["cpp", "mirror-gather", "mirror-scatter"] if build.available("cpu", warn=False) else []


@pytest.fixture
def one_thread():
    # These problems are tiny: extra threads only add parallel-region overhead (painful on a busy shared machine).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("k", KS)
def test_every_ratio_one_axis(k, one_thread):
    # Alternate the swept axis between H and W of the 2D op. Compiled backends see every pair; the reference (slow
    # Python, no tables to overflow) every 16th.
    gen = torch.Generator().manual_seed(k)
    for index, (n_in, n_out) in enumerate(PAIRS):
        attn, x, grad, want = _problem(n_in, n_out, k, index % 2, 2, gen)
        for name in _compiled_backends() + (["reference"] if index % 16 == 0 else []):
            _check(run_backend(name, attn, x, grad), want, f"{name} K={k} {n_in}->{n_out} axis {index % 2}")


@needs_cpp
def test_every_ratio_depth_axis(one_thread):
    # 3D op, swept axis = depth (kernel_depth = K): covers the depth table; every 4th pair keeps K^3 taps affordable.
    gen = torch.Generator().manual_seed(11)
    for k in (3, 5):
        for n_in, n_out in PAIRS[k::4]:
            attn, x, grad, want = _problem(n_in, n_out, k, 0, 3, gen)
            for name in _compiled_backends():
                _check(run_backend(name, attn, x, grad), want, f"{name} 3D K={k} {n_in}->{n_out} depth")


def _random_shapes(spatial: int, count: int, seed: int):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        k = int(rng.choice([3, 5, 7] if spatial == 2 else [3, 5]))
        lr = [int(rng.integers(1, 13 if spatial == 2 else 6)) for _ in range(spatial)]
        hr = [int(n * rng.uniform(1.0, 4.5)) or 1 for n in lr]
        yield k, tuple(lr), tuple(max(h, n) for h, n in zip(hr, lr))


@needs_cpp  # without the kernel there is nothing to compare with the reference (it would pass comparing nothing)
@pytest.mark.parametrize("spatial,count", [(2, 24), (3, 12)])
def test_random_shapes_all_backends(spatial, count, one_thread):
    gen = torch.Generator().manual_seed(spatial)
    for k, lr, hr in _random_shapes(spatial, count, seed=spatial):
        n = 2
        attn = torch.randn(n, k**spatial, *hr, dtype=torch.float64, generator=gen)
        x = torch.randn(n, 3, *lr, dtype=torch.float64, generator=gen)
        grad = torch.randn(n, 3, *hr, dtype=torch.float64, generator=gen)
        want = run_backend("reference", attn, x, grad)
        for name in _compiled_backends():
            _check(run_backend(name, attn, x, grad), want, f"{name} K={k} {lr}->{hr}")
