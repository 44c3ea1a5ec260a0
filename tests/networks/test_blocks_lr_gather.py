"""Grid-wise LR neighbour gather (the "w/o FNS" ablation) against explicit loops."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from resfu_med.networks.blocks import lr_neighbour_gather


@pytest.mark.parametrize("lr, hr", [((3, 4), (6, 8)), ((3, 5), (7, 11)), ((2, 3, 3), (2, 6, 7))])
def test_lr_gather_matches_loops(lr, hr):
    dims, K = len(lr), 3
    attn = torch.rand(2, K**dims, *hr, dtype=torch.float64)
    x = torch.randn(2, 3, *lr, dtype=torch.float64)
    got = lr_neighbour_gather(attn, x).numpy()
    a, xv = attn.numpy(), x.numpy()
    offsets = list(itertools.product(range(-1, 2), repeat=dims))
    for n in range(2):
        for i in np.ndindex(*hr):
            parent = [(c * h) // H for c, h, H in zip(i, lr, hr)]  # PyTorch "nearest": floor(i · h / H)
            expected = np.zeros(3)
            for t, off in enumerate(offsets):
                src = tuple(min(max(p + o, 0), h - 1) for p, o, h in zip(parent, off, lr))
                expected += a[(n, t, *i)] * xv[(n, slice(None), *src)]
            np.testing.assert_allclose(got[(n, slice(None), *i)], expected, rtol=1e-12, atol=1e-12)


def test_lr_gather_gradcheck():
    # Gradients flow through the checkpointed terms (recomputed in backward).
    attn = torch.rand(1, 9, 5, 4, dtype=torch.float64, requires_grad=True)
    x = torch.randn(1, 1, 2, 2, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lr_neighbour_gather, (attn, x), fast_mode=True)


def test_lr_gather_bad_inputs():
    with pytest.raises(ValueError):
        lr_neighbour_gather(torch.rand(1, 8, 8, 8), torch.randn(1, 2, 4, 4))
    with pytest.raises(ValueError):
        lr_neighbour_gather(torch.rand(1, 9, 2, 8), torch.randn(1, 2, 4, 4))
