"""Sliding-window slice inference at a plan's spacing (``predict_slices(..., target_spacing=...)``): slices smaller
and larger than the window, anisotropic spacing, predictions back on the image's own grid."""

from __future__ import annotations

import numpy as np
import pytest

from eval_standins import Threshold, window_spy
from resfu_med.engine.inferer import predict_slices


@pytest.mark.parametrize("shape", [(20, 24), (100, 70)])  # smaller than the 32² window; larger (several windows)
def test_slices_smaller_and_larger_than_the_window_at_their_own_spacing(monkeypatch, shape):
    rng = np.random.default_rng(0)
    image = (rng.random((3, *shape)) > 0.6).astype(np.float32)
    seen = window_spy(monkeypatch)
    labels, probs = predict_slices(Threshold().eval(), image, 32, spacing=(0.8, 0.8), target_spacing=(0.8, 0.8),
                                   probabilities=True)
    assert seen == [(shape, (32, 32))]  # the slice as it is: padded by the sliding window, never zoomed
    assert labels.shape == image.shape and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, image > 0.5)
    assert probs.shape == (2, *image.shape)
    np.testing.assert_allclose(probs.sum(0), 1.0, rtol=1e-5)


def test_anisotropic_slices_are_predicted_at_the_planned_spacing_and_come_back_on_their_grid(monkeypatch):
    image = np.zeros((2, 40, 40), np.float32)
    image[:, 10:30, 8:32] = 1.0  # 20 rows x 2 mm = 40 mm, 24 columns x 0.5 mm = 12 mm
    seen = window_spy(monkeypatch)
    labels, _ = predict_slices(Threshold().eval(), image, 32, spacing=(2.0, 0.5), target_spacing=(1.0, 1.0))
    # resampled to 1 mm: 40 x 2 / 1 = 80 rows, 40 x 0.5 / 1 = 20 columns; windows of the plan's patch (32²)
    assert seen == [((80, 20), (32, 32))]
    assert labels.shape == image.shape
    truth = image > 0.5
    dice = 2 * (labels.astype(bool) & truth).sum() / (labels.sum() + truth.sum())
    assert dice > 0.95
    # on the image's own grid: the same centre, and identical away from the rectangle's edges
    np.testing.assert_allclose(np.argwhere(labels[0]).mean(0), np.argwhere(truth[0]).mean(0), atol=0.5)
    inner, outer = np.zeros_like(truth), np.ones_like(truth)
    inner[:, 12:28, 11:29] = True
    outer[:, 8:32, 5:35] = False
    assert labels[inner].all() and not labels[outer].any()


def test_target_spacing_needs_the_slices_spacing():
    with pytest.raises(ValueError, match="spacing"):
        predict_slices(Threshold().eval(), np.zeros((1, 8, 8), np.float32), 32, target_spacing=(1.0, 1.0))
    with pytest.raises(ValueError, match="2 positive numbers"):
        predict_slices(Threshold().eval(), np.zeros((1, 8, 8), np.float32), 32, spacing=(1.0, 0.0),
                       target_spacing=(1.0, 1.0))
