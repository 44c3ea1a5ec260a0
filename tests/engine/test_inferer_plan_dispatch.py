"""``predict_volume`` applies the 2D plan a checkpoint records (``data.pipeline: plan``, ``data.plan``): windows of
the plan's patch at the plan's spacing, labels on the image's own grid; a bad recorded plan is one line naming the
key. (The window inference itself is tested in test_inferer_planned.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from eval_standins import Threshold, window_spy
from resfu_med.engine.inferer import predict_volume
from resfu_med.errors import CheckpointError

PLAN = {"spacing": [1.0, 1.0], "patch_size": [32, 48], "median_shape": [32, 48], "batch_size": 2, "divisor": 16}
CONFIG = {"model": {"name": "unet"}, "data": {"pipeline": "plan", "plan": PLAN, "num_classes": 2, "img_size": 48}}


def _blocks(shape):
    image = np.zeros(shape, np.float32)
    image[:, 10:30, 12:40] = 1.0
    return image


@pytest.mark.parametrize("shape,spacing", [((2, 20, 27), (3.0, 1.0, 1.0)), ((2, 90, 71), None),
                                           ((2, 60, 40), (3.0, 0.5, 2.0))])
def test_the_checkpoint_plan_sets_window_and_spacing(monkeypatch, shape, spacing):
    seen = window_spy(monkeypatch)
    image = _blocks(shape)
    labels, _ = predict_volume(Threshold(), image, CONFIG, spacing=spacing, roi=[8, 8])  # the plan wins over roi
    assert labels.shape == shape
    sp = spacing or (1.0, 1.0, 1.0)
    assert all(r == (32, 48) for _, r in seen)
    assert seen[0][0] == (round(shape[1] * sp[1]), round(shape[2] * sp[2]))  # resampled to 1 mm
    truth = (image > 0.5).astype(np.uint8)
    assert (labels == truth).mean() > 0.97


def test_a_bad_recorded_plan_is_one_line():
    bad = {**CONFIG, "data": {**CONFIG["data"], "plan": {**PLAN, "patch_size": [30.5, 30]}}}
    with pytest.raises(CheckpointError, match=r"data.plan.patch_size"):
        predict_volume(Threshold(), _blocks((1, 20, 20)), bad)
