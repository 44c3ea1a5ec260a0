"""The ×2 stencil adjoint of linear upsampling equals ATen's backward (float64), and ``upsample_linear`` equals
``F.interpolate`` in values, first and second derivatives, for exact ×2 steps, mixed ×1/×2 axes and sizes where
ATen's backward runs instead."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from resfu_med.networks.blocks.linear_upsample import linear_mode, linear_upsample_adjoint, upsample_linear

CASES = [
    ((2, 3, 5), (10,)),
    ((2, 3, 1), (2,)),  # one LR sample: both outputs read it
    ((1, 4, 6, 7), (12, 14)),
    ((1, 2, 2, 5), (4, 10)),
    ((2, 3, 4, 6), (4, 12)),  # ×1 along one axis
    ((1, 2, 3, 4, 5), (6, 8, 10)),
    ((1, 2, 3, 4, 5), (3, 8, 10)),  # anisotropic 3D step (1, 2, 2)
    ((1, 3, 5, 7), (9, 13)),  # not ×2: ATen's backward
]


def _reference_grad(x: torch.Tensor, size, grad: torch.Tensor) -> torch.Tensor:
    x = x.detach().clone().requires_grad_()
    out = F.interpolate(x, size=list(size), mode=linear_mode(x.dim() - 2), align_corners=False)
    return torch.autograd.grad(out, x, grad)[0]


@pytest.mark.parametrize("shape,size", CASES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_adjoint_equals_atens_backward(shape, size, channels_last):
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64)
    grad = torch.randn(*shape[:2], *size, dtype=torch.float64)
    if channels_last and grad.dim() in (4, 5):
        grad = grad.contiguous(memory_format=torch.channels_last if grad.dim() == 4 else torch.channels_last_3d)
    torch.testing.assert_close(linear_upsample_adjoint(grad, shape[2:]), _reference_grad(x, size, grad), rtol=0, atol=1e-13)


@pytest.mark.parametrize("shape,size", CASES)
def test_upsample_linear_equals_interpolate_with_gradients(shape, size):
    torch.manual_seed(1)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    out = upsample_linear(x, size)
    want = F.interpolate(x, size=list(size), mode=linear_mode(x.dim() - 2), align_corners=False)
    assert torch.equal(out, want)
    assert torch.autograd.gradcheck(lambda t: upsample_linear(t, size), (x,))
    assert torch.autograd.gradgradcheck(lambda t: upsample_linear(t, size), (x,))


def test_upsample_linear_keeps_no_tensor_for_backward():
    x = torch.randn(1, 2, 4, 4, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        upsample_linear(x, (8, 8)).sum().backward()
    assert saved == []


def test_upsample_linear_rejects_other_ranks():
    with pytest.raises(ValueError, match="1-3 spatial dims"):
        upsample_linear(torch.zeros(2, 3), (4,))
