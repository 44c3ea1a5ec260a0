"""Plan-pipeline slice inference: Gaussian sliding windows at the planned spacing, predictions on the image grid.

A pointwise model (a 1x1 convolution thresholding the intensity) is the independent expectation: its answer at any
pixel is known without the network, so resampling, padding and window blending can be checked exactly or nearly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from resfu_med.engine.inferer import predict_slices_planned, predict_volume
from resfu_med.errors import CheckpointError


class Threshold(torch.nn.Module):
    """Class 1 where the intensity is above 0.5: logits (0, 20 * (x - 0.5)) — pointwise, so windows cannot matter."""

    def forward(self, x):
        return torch.cat([torch.zeros_like(x), 20 * (x - 0.5)], dim=1)


def _blocks(shape, seed=0):
    rng = np.random.default_rng(seed)
    image = np.zeros(shape, np.float32)
    for _ in range(6):
        z = rng.integers(shape[0])
        y, x = rng.integers(0, shape[1] - 8), rng.integers(0, shape[2] - 8)
        image[z, y:y + 8, x:x + 8] = 1.0
    return image


PLAN = {"spacing": [1.0, 1.0], "patch_size": [32, 32], "median_shape": [32, 32], "batch_size": 2, "divisor": 16}


@pytest.mark.parametrize("shape", [(3, 20, 27), (3, 32, 32), (3, 90, 71)])  # smaller than, equal to, larger than the patch
def test_any_slice_size_at_the_planned_spacing_is_exact(shape):
    image = _blocks(shape)
    labels, probs = predict_slices_planned(Threshold(), image, PLAN, spacing=(2.0, 1.0, 1.0), probabilities=True)
    assert labels.shape == shape and probs.shape == (2, *shape)
    np.testing.assert_array_equal(labels, (image > 0.5).astype(np.uint8))
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)


def test_anisotropic_spacing_comes_back_on_the_image_grid():
    image = _blocks((2, 60, 40), seed=1)
    seen = []

    class Recording(Threshold):
        def forward(self, x):
            seen.append(tuple(x.shape[-2:]))
            return super().forward(x)

    # 0.5 mm rows and 2 mm columns, planned at 1 mm: the network sees 30 x 80 pixels, the labels come back 60 x 40
    labels, _ = predict_slices_planned(Recording(), image, PLAN, spacing=(3.0, 0.5, 2.0))
    assert labels.shape == image.shape
    assert all(s == (32, 32) for s in seen)  # windows of the planned patch only
    truth = (image > 0.5).astype(np.uint8)
    assert (labels == truth).mean() > 0.97  # the block borders move by at most a resampled pixel
    assert labels.sum() > 0.8 * truth.sum()


def test_predict_volume_applies_the_checkpoint_plan():
    image = _blocks((2, 50, 50))
    config = {"model": {"name": "unet"}, "data": {"pipeline": "plan", "plan": PLAN, "num_classes": 2, "img_size": 32}}
    labels, _ = predict_volume(Threshold(), image, config, spacing=(1.0, 1.0, 1.0))
    np.testing.assert_array_equal(labels, (image > 0.5).astype(np.uint8))
    bad = {**config, "data": {**config["data"], "plan": {**PLAN, "patch_size": [30.5, 30]}}}
    with pytest.raises(CheckpointError, match="data.plan.patch_size"):
        predict_volume(Threshold(), image, bad)
