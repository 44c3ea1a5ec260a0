"""ReSFU's shape-only constants are built once (issue 27, fewer small operations per step).

The out-of-image neighbour mask depends only on shapes and the device; the forward pass used to rebuild it every call
(~15 small operations, a kernel launch apiece on a GPU), and the input prescaling ran ~9 tiny per-sample operations
on CPU where one pass over the input decides. Checked here: the
cached constants equal what they replace, are reused, and the forward pass of a ReSFU module runs fewer operations
than before — with the values and gradients of the frozen module (tests/networks/resfu_reference_v1.py).
"""

from __future__ import annotations

import collections

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from resfu_med.networks.blocks import pointwise
from resfu_med.networks.resfu import ReSFU, _outside_mask, _prescale, border_mask
from tests.networks import resfu_reference_v1 as v1

SMALL = {"embed_dim": 8, "groups": 4, "pcdc_channels": 8, "compressor_channels": 8}
# aten operations that launch no kernel (views, metadata, host reads): not counted
_NO_KERNEL = {"view", "detach", "unsqueeze", "squeeze", "select", "slice", "expand", "split", "lift_fresh",
              "_local_scalar_dense", "alias", "t", "permute", "reshape", "_unsafe_view", "as_strided"}


class _CountOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name not in _NO_KERNEL:
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))


def _forward_ops(module, x, guide) -> collections.Counter:
    module(x, guide)  # first call: builds the cached constants
    with _CountOps() as counter:
        module(x, guide)
    return counter.ops


@pytest.mark.parametrize("hr,dil,k", [((5, 7), (1, 2), 3), ((4, 6, 6), (2, 2, 3), 3), ((9, 9), (3, 3), 5)])
def test_outside_mask_is_the_inverted_border_mask_and_cached(hr, dil, k):
    got = _outside_mask(hr, dil, k, torch.device("cpu"))
    assert torch.equal(got, ~border_mask(hr, dil, k))
    assert _outside_mask(hr, dil, k, torch.device("cpu")) is got  # built once


@pytest.mark.parametrize("scale", [1.0, 2.0**16, 2.0**16 + 1, 1e30, -1e30])
def test_prescale_fast_path_gives_the_frozen_result(scale):
    t = torch.randn(3, 4, 5, 5)
    t[1] *= scale  # one sample large, the others not
    torch.testing.assert_close(_prescale(t), v1._prescale(t), rtol=0, atol=0)
    small = torch.randn(2, 4, 5, 5)
    assert _prescale(small) is small  # nothing to scale: no copy


def test_prescale_keeps_nan_behaviour():
    t = torch.randn(2, 3, 4, 4)
    t[0, 0, 0, 0] = float("nan")
    torch.testing.assert_close(_prescale(t), v1._prescale(t), equal_nan=True, rtol=0, atol=0)


@pytest.mark.parametrize("dims", [2, 3])
def test_forward_runs_fewer_operations_with_the_frozen_values(dims, monkeypatch):
    # the count is about kernel launches on a GPU, where the 1x1 convolutions stay convolutions (pointwise.py)
    monkeypatch.setattr(pointwise, "PRODUCT_DEVICES", ())
    torch.manual_seed(0)
    new = ReSFU(8, 8, spatial_dims=dims, **SMALL).double()
    old = v1.ReSFUv1(8, 8, spatial_dims=dims, **SMALL).double()
    old.load_state_dict(new.state_dict())
    lr, hr = (10,) * dims, (20,) * dims  # half of HR >= the guided filter's window: no hand-padded box sums
    x = torch.randn(2, 8, *lr, dtype=torch.float64, requires_grad=True)
    guide = torch.randn(2, 8, *hr, dtype=torch.float64, requires_grad=True)
    got, want = new(x, guide), old(x, guide)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    grad = torch.randn_like(got)
    for g, w in zip(torch.autograd.grad(got, (x, guide), grad), torch.autograd.grad(want, (x, guide), grad)):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)
    ops_new, ops_old = _forward_ops(new, x, guide), _forward_ops(old, x, guide)
    # no mask building (comparisons, and, not), one pass of prescaling per input
    assert ops_new["bitwise_and"] == 0 and ops_new["bitwise_not"] == 0 and ops_new["ge"] == 0
    assert sum(ops_new.values()) <= 0.8 * sum(ops_old.values()), (sum(ops_new.values()), sum(ops_old.values()))
