"""ReSFU compiles as users compile: the default inductor backend, ``fullgraph=True``, channels-last, with backward.

Regression: ``torch.compile(BasicUNet(upsampler="resfu"), fullgraph=True)`` crashed in the backward of a channels-last
batch with ``assert_size_stride`` on ``aten.replication_pad2d_backward`` (eager returns another memory format than
the op's meta function declares). The ReSFU blocks now pad by clamped ``index_select``
(:func:`resfu_med.networks.blocks.padding.replicate_pad`), whose backward compiles for every memory format.

The whole-network check (a BasicUNet+ReSFU train step, inductor, channels-last, batch 2) was run by hand: it failed on
the old main with that assertion and passes now, but it compiles for 5-9 minutes on 2 CPU cores, so CI runs the
ReSFU upsampler itself (the module that held every replicate pad) plus the exact-equality check of the padding.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from resfu_med.networks import ReSFU
from resfu_med.networks.blocks.padding import replicate_pad


@pytest.mark.parametrize("shape,pad", [((2, 3, 7), [2, 1]), ((2, 3, 5, 6), [1, 2, 3, 0]),
                                       ((1, 2, 4, 5, 3), [1, 1, 0, 2, 2, 1])])
@pytest.mark.parametrize("channels_last", [False, True])
def test_replicate_pad_equals_f_pad_in_values_and_gradients(shape, pad, channels_last):
    x = torch.randn(shape, dtype=torch.float64)
    if channels_last and x.dim() in (4, 5):
        x = x.contiguous(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours, theirs = replicate_pad(a, pad), F.pad(b, pad, mode="replicate")
    assert torch.equal(ours, theirs)
    grad = torch.randn_like(theirs)
    ours.backward(grad)
    theirs.backward(grad)
    torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-12)


def test_replicate_pad_rejects_bad_pads():
    with pytest.raises(ValueError, match="pairs of non-negative"):
        replicate_pad(torch.zeros(1, 1, 4), [1])
    with pytest.raises(ValueError, match="pairs of non-negative"):
        replicate_pad(torch.zeros(1, 1, 4), [-1, 0])


@pytest.mark.slow
@pytest.mark.parametrize("channels_last", [True])
def test_resfu_inductor_fullgraph_backward_matches_eager(channels_last):
    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = ReSFU(in_channels=8, guide_channels=8, embed_dim=8, pcdc_channels=8)
    compiled = torch.compile(copy.deepcopy(eager), fullgraph=True)  # default backend: inductor
    x, guide = torch.randn(2, 8, 8, 8), torch.randn(2, 8, 16, 16)
    if channels_last:
        x, guide = x.contiguous(memory_format=torch.channels_last), guide.contiguous(memory_format=torch.channels_last)
    results = []
    for net in (eager, compiled):
        xi, gi = x.clone().requires_grad_(), guide.clone().requires_grad_()
        out = net(xi, gi)
        out.square().mean().backward()
        results.append((out.detach(), xi.grad, gi.grad, [p.grad.clone() for p in net.parameters()]))
    (o1, x1, g1, p1), (o2, x2, g2, p2) = results
    torch.testing.assert_close(o2, o1, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(x2, x1, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(g2, g1, rtol=1e-4, atol=1e-5)
    for a, b in zip(p2, p1):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
