"""ReSFU compiles as users compile: the default inductor backend, ``fullgraph=True``, channels-last, with backward.

Regression: ``torch.compile(BasicUNet(upsampler="resfu"), fullgraph=True)`` crashed in the backward of a channels-last
batch with ``assert_size_stride`` on ``aten.replication_pad2d_backward`` (eager returns another memory format than
the op's meta function declares). The ReSFU blocks now pad by clamped ``index_select``
(:func:`resfu_med.networks.blocks.padding.replicate_pad`), whose backward compiles for every memory format.

Here: the padding equals ``F.pad(mode="replicate")`` exactly, in values and gradients. The compiled train steps of
whole ReSFU networks (inductor, fullgraph, both memory formats, batch 1 and 2) are in test_compile_networks.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

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
