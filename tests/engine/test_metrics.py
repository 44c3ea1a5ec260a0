"""Dice/HD95 per class against hand-computed values and a brute-force surface-distance reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from resfu_med.metrics import ClassMetric, spacing_metrics, transunet_metrics


def brute_hd95(a: np.ndarray, b: np.ndarray, spacing=None) -> float:
    """HD95 from first principles: surface voxels = mask voxels with a face-neighbour outside the mask or the array;
    every surface voxel of one mask to its nearest surface voxel of the other, both ways, 95th percentile."""

    def surface(m):
        padded = np.pad(m, 1, constant_values=False)
        inner = np.ones_like(m, dtype=bool)
        for ax in range(m.ndim):
            for step in (-1, 1):
                inner &= np.roll(padded, step, axis=ax)[tuple(slice(1, -1) for _ in range(m.ndim))]
        return np.argwhere(m & ~inner).astype(float)

    sp = np.ones(a.ndim) if spacing is None else np.asarray(spacing, float)
    sa, sb = surface(a) * sp, surface(b) * sp
    d = cdist(sa, sb)
    return float(np.percentile(np.hstack([d.min(1), d.min(0)]), 95))


def cube(shape, start, size):
    m = np.zeros(shape, dtype=np.uint8)
    m[tuple(slice(s, s + size) for s in start)] = 1
    return m


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 3])
def test_plates_shifted_by_k_give_hd95_k(axis, k):
    # One-voxel-thick plates perpendicular to the shift: every surface distance is exactly k.
    shape = (12, 14, 16)
    a = np.zeros(shape, np.uint8)
    b = np.zeros(shape, np.uint8)
    idx = [slice(3, 9)] * 3
    idx[axis] = 2
    a[tuple(idx)] = 1
    idx[axis] = 2 + k
    b[tuple(idx)] = 1
    [(dice, hd)] = transunet_metrics(a, b, 2)
    assert dice == 0.0 and hd == pytest.approx(k)
    spacing = (2.5, 0.7, 1.2)
    [m] = spacing_metrics(a, b, 2, spacing)
    assert m.dice == 0.0 and m.empty == ""
    assert m.hd95 == pytest.approx(k * spacing[axis])


@pytest.mark.parametrize("k,axis", [(1, 0), (2, 1), (3, 2)])
def test_cubes_offset_by_k(k, axis):
    s = 8
    shape = (20, 20, 20)
    start = [5, 5, 5]
    a = cube(shape, start, s)
    start[axis] += k
    b = cube(shape, start, s)
    [(dice, hd)] = transunet_metrics(a, b, 2)
    # overlap s^2 (s - k) of two s^3 cubes: Dice = 2 s^2 (s-k) / (2 s^3)
    assert dice == pytest.approx((s - k) / s)
    assert hd == pytest.approx(brute_hd95(a > 0, b > 0))
    assert 0 < hd <= k  # the Hausdorff distance of a pure shift is k; its 95th percentile cannot exceed it
    spacing = (3.0, 0.8, 1.5)
    [m] = spacing_metrics(a, b, 2, spacing)
    assert m.dice == pytest.approx((s - k) / s)
    assert m.hd95 == pytest.approx(brute_hd95(a > 0, b > 0, spacing))
    assert m.hd95 <= k * spacing[axis] + 1e-9


def test_sphere_vs_shrunken_sphere():
    n, r_big, r_small = 25, 9, 6
    zz, yy, xx = np.mgrid[:n, :n, :n] - n // 2
    dist = np.sqrt(zz**2 + yy**2 + xx**2)
    big, small = dist <= r_big, dist <= r_small
    pred = small.astype(np.uint8)
    gt = big.astype(np.uint8)
    [(dice, hd)] = transunet_metrics(pred, gt, 2)
    assert dice == pytest.approx(2 * small.sum() / (small.sum() + big.sum()))
    assert hd == pytest.approx(brute_hd95(small, big))
    assert abs(hd - (r_big - r_small)) <= 1.0  # concentric surfaces r_big - r_small apart, up to voxelisation
    [m] = spacing_metrics(pred, gt, 2, (2.0, 2.0, 2.0))
    assert m.hd95 == pytest.approx(2 * hd)


def test_identical_masks():
    a = cube((10, 10, 10), (2, 2, 2), 5)
    assert transunet_metrics(a, a, 2) == [(1.0, 0.0)]
    assert spacing_metrics(a, a, 2, (1, 2, 3)) == [ClassMetric(1.0, 0.0, "")]


def test_empty_mask_rules():
    shape = (6, 8, 8)
    pred = np.zeros(shape, np.uint8)
    gt = np.zeros(shape, np.uint8)
    pred[1:3, 1:3, 1:3] = 1  # class 1: predicted, absent from gt
    gt[3:5, 4:6, 4:6] = 2  # class 2: in gt, not predicted
    # class 3: neither; class 4: both (identical)
    pred[5, 0, 0] = gt[5, 0, 0] = 4
    assert transunet_metrics(pred, gt, 5) == [(1.0, 0.0), (0.0, 0.0), (0.0, 0.0), (1.0, 0.0)]
    got = spacing_metrics(pred, gt, 5, (1.0, 1.0, 1.0))
    assert [m.empty for m in got] == ["gt", "pred", "both", ""]
    assert got[0].dice == 0.0 and math.isnan(got[0].hd95)
    assert got[1].dice == 0.0 and math.isnan(got[1].hd95)
    assert math.isnan(got[2].dice) and math.isnan(got[2].hd95)
    assert got[3] == ClassMetric(1.0, 0.0, "")


def test_classes_are_scored_independently():
    gt = np.zeros((8, 16, 16), np.uint8)
    gt[2:6, 2:6, 2:6] = 1
    gt[2:6, 8:12, 8:12] = 2
    pred = gt.copy()
    pred[pred == 2] = 0
    pred[2:6, 8:12, 9:13] = 2  # class 2 shifted by 1 column: Dice 3/4
    out = transunet_metrics(pred, gt, 3)
    assert out[0] == (1.0, 0.0)
    assert out[1][0] == pytest.approx(0.75)


def test_2d_inputs_work():
    a = np.zeros((10, 10), np.uint8)
    b = np.zeros((10, 10), np.uint8)
    a[2:6, 2:6] = 1
    b[2:6, 4:8] = 1
    [(dice, hd)] = transunet_metrics(a, b, 2)
    assert dice == pytest.approx(0.5)
    assert hd == pytest.approx(brute_hd95(a > 0, b > 0))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: transunet_metrics(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)), 2), "same shape"),
        (lambda: transunet_metrics(np.zeros((4, 4, 4)), np.zeros((4, 4, 4)), 1), "num_classes"),
        (lambda: spacing_metrics(np.zeros((4, 4, 4)), np.zeros((4, 4, 4)), 2, (1, 1)), "spacing"),
        (lambda: spacing_metrics(np.zeros((4, 4, 4)), np.zeros((4, 4, 4)), 2, (1, 0, 1)), "spacing"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()
