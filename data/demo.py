"""Procedural abdominal CT phantoms: the embedded demo dataset (a raw BTCV-style release, then Synapse ``prepare``).

Each case is a ``128 × 128 × 40`` (x, y, z) int16 CT volume in HU with the 13 raw BTCV labels. Anatomy is laid out in
millimetres in a patient frame (``u`` → patient left, ``v`` → posterior, ``w`` → superior) and rasterised at a per-case
anisotropic spacing (in-plane 2.7–3.0 mm, slices 4.5–5 mm, so the field of view covers an abdomen) under an affine with
the usual BTCV axis flips and a small random in-plane rotation. Organs are ellipsoids or tubes whose boundaries are
pushed around by smooth random fields; positions, sizes and HU follow real anatomy (liver right, spleen left-posterior,
kidneys beside the spine, aorta anterior-left of the spine, pancreas across the midline in front of it), with thin and
small structures (aorta, IVC, portal vein, pancreas, gallbladder, adrenals, esophagus), bowel loops with gas as
distractors, partial-volume blur and Gaussian noise. Everything derives from one seed, and files are written
byte-deterministically, so two generations with the same seed are bit-identical.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from scipy import ndimage

from resfu_med.atomic import atomic_write_json

from .io import Geometry, write_image
from .synapse import RAW_BTCV_LABELS, SYNAPSE_TEST_CASES

__all__ = ["make_demo_dataset", "demo_case_names", "DEMO_VERSION", "DEMO_SEED"]

DEMO_VERSION = 1
DEMO_SEED = 1234

# name: (raw label, HU) of the labelled structures, painted in this order (later ones win where they overlap).
_ORGAN_HU = {"liver": (6, 60), "spleen": (1, 50), "kidney_r": (2, 150), "kidney_l": (3, 150), "stomach": (7, 35),
             "gallbladder": (4, 8), "pancreas": (11, 42), "adrenal_r": (12, 25), "adrenal_l": (13, 25),
             "portal": (10, 165), "ivc": (9, 120), "aorta": (8, 210), "esophagus": (5, 45)}  # fmt: skip


def demo_case_names(n_cases: int = 12, n_test: int = 4) -> tuple[list[str], list[str]]:
    """Case names of the demo split: ``n_test`` of TransUNet's Synapse test IDs, train IDs from the other numbers.

    Returns:
        ``(train, test)`` lists of ``caseXXXX`` names.
    """
    if not 0 < n_test < n_cases or n_test > len(SYNAPSE_TEST_CASES):
        raise ValueError(f"need 0 < n_test < n_cases and n_test <= 12, got n_cases={n_cases}, n_test={n_test}")
    test = SYNAPSE_TEST_CASES[:n_test]
    train, i = [], 1
    while len(train) < n_cases - n_test:
        if f"case{i:04d}" not in SYNAPSE_TEST_CASES:
            train.append(f"case{i:04d}")
        i += 1
    return train, test


class _Phantom:
    """Rasterises one case: holds the mm coordinate grids, smooth random fields and the image/label being painted."""

    def __init__(self, rng: np.random.Generator, shape_zyx: tuple[int, int, int], spacing_zyx: tuple[float, float, float]):
        self.rng = rng
        nz, ny, nx = shape_zyx
        sz, sy, sx = spacing_zyx
        # mm coordinates centred in the volume: w superior, v posterior, u patient-left (array axes Z, Y, X).
        self.w = ((np.arange(nz) - (nz - 1) / 2) * sz)[:, None, None]
        self.v = ((np.arange(ny) - (ny - 1) / 2) * sy)[None, :, None]
        self.u = ((np.arange(nx) - (nx - 1) / 2) * sx)[None, None, :]
        self.shape = shape_zyx
        # Four smooth unit-variance random fields: low-frequency noise on a coarse grid, cubic-zoomed to full size.
        self.fields = []
        coarse_shape = (6, 9, 9)
        # The cubic spline zoom is a tensor product, so apply it as three small 1D interpolation matrices (fast).
        mats = [ndimage.zoom(np.eye(c), (n / c, 1), order=3, mode="nearest") for n, c in zip(shape_zyx, coarse_shape)]
        for _ in range(4):
            f = np.einsum("zi,yj,xk,ijk->zyx", *mats, rng.standard_normal(coarse_shape), optimize=True)
            self.fields.append(((f - f.mean()) / f.std()).astype(np.float32))
        self.hu = np.full(shape_zyx, -1000.0, dtype=np.float32)
        self.label = np.zeros(shape_zyx, dtype=np.uint8)
        self._k = 0

    def field(self, amp: float) -> np.ndarray:
        self._k += 1
        sign = 1.0 if self.rng.random() < 0.5 else -1.0
        return sign * amp * self.fields[self._k % len(self.fields)]

    def ellipsoid(self, c, r, amp: float = 0.25) -> np.ndarray:
        """Mask of a deformed ellipsoid with centre ``c`` and radii ``r`` (mm, ordered u, v, w)."""
        q = ((self.u - c[0]) / r[0]) ** 2 + ((self.v - c[1]) / r[1]) ** 2 + ((self.w - c[2]) / r[2]) ** 2
        return (q - 1.0 + self.field(amp)) < 0

    def tube(self, points, radius: float, amp: float = 0.15) -> np.ndarray:
        """Mask of a deformed tube of ``radius`` mm around the polyline ``points`` (N × 3, mm, u v w)."""
        pts = np.asarray(points, dtype=np.float64)
        d2 = np.full(self.shape, np.inf, dtype=np.float64)
        for a, b in zip(pts[:-1], pts[1:]):
            ab = b - a
            t = ((self.u - a[0]) * ab[0] + (self.v - a[1]) * ab[1] + (self.w - a[2]) * ab[2]) / float(ab @ ab)
            t = np.clip(t, 0.0, 1.0)
            d2 = np.minimum(d2, (self.u - a[0] - t * ab[0]) ** 2 + (self.v - a[1] - t * ab[1]) ** 2 + (self.w - a[2] - t * ab[2]) ** 2)
        return (np.sqrt(d2) / radius - 1.0 + self.field(amp)) < 0

    def paint(self, mask: np.ndarray, hu: float, label: int | None = None, texture: float = 6.0) -> None:
        self.hu[mask] = hu + texture * self.field(1.0)[mask]
        if label is not None:
            self.label[mask] = label


def _jitter(rng: np.random.Generator, c, r, dc: float = 6.0, dr: float = 0.12):
    c = np.asarray(c, dtype=np.float64) + rng.uniform(-dc, dc, 3)
    r = np.asarray(r, dtype=np.float64) * rng.uniform(1 - dr, 1 + dr, 3)
    return c, r


def _make_case(rng: np.random.Generator, shape_xyz: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    nx, ny, nz = shape_xyz
    s_xy, s_z = rng.uniform(2.7, 3.0), rng.uniform(4.5, 5.0)
    scale, zscale = 128 / max(nx, ny), 40 / nz  # other grid sizes keep the same anatomy at another spacing
    p = _Phantom(rng, (nz, ny, nx), (s_z * zscale, s_xy * scale, s_xy * scale))
    body_a, body_b = rng.uniform(140, 160), rng.uniform(100, 115)  # lateral / AP half-axes in mm
    du, dv = rng.uniform(-6, 6, 2)

    def E(c, r, **kw):  # ellipsoid relative to the body centre, with per-case jitter
        c, r = _jitter(rng, c, r)
        return p.ellipsoid((c[0] + du, c[1] + dv, c[2]), r, **kw)

    # Body: skin/subcutaneous fat ring, muscle wall, intra-abdominal fat.
    body = p.ellipsoid((du, dv, 0), (body_a, body_b, 1e4), amp=0.03)
    p.paint(body, -100, texture=8)
    p.paint(p.ellipsoid((du, dv + 5, 0), (body_a - 18, body_b - 18, 1e4), amp=0.03), 50)
    p.paint(p.ellipsoid((du, dv + 5, 0), (body_a - 30, body_b - 30, 1e4), amp=0.03), -90, texture=8)
    for side in (-1, 1):  # paraspinal muscles and psoas
        p.paint(E((side * 35, 88, 0), (24, 18, 1e4), amp=0.05), 50)
        p.paint(E((side * 30, 62, -60), (14, 14, 45)), 50)
    # Ribs: bone arcs inside the muscle wall in the upper abdomen, one every ~25 mm.
    ring = p.ellipsoid((du, dv + 5, 0), (body_a - 22, body_b - 22, 1e4), amp=0.0) & ~p.ellipsoid(
        (du, dv + 5, 0), (body_a - 28, body_b - 28, 1e4), amp=0.0)
    ribs = ring & (p.w > 0) & (np.cos(2 * math.pi * p.w / 25.0 + rng.uniform(0, 6.3)) > 0.4) & (p.v > -body_b * 0.3)
    p.paint(ribs, 700, texture=30)
    # Spine: vertebral body (cortex + trabecular) and spinous process.
    p.paint(E((0, 62, 0), (20, 17, 1e4), amp=0.04), 700, texture=30)
    p.paint(E((0, 62, 0), (14, 11, 1e4), amp=0.04), 280, texture=20)
    p.paint(E((0, 92, 0), (6, 14, 1e4), amp=0.05), 650, texture=30)
    # Bowel loops with gas in the lower anterior abdomen: unlabelled soft-tissue distractors.
    for _ in range(7):
        c = (rng.uniform(-70, 70), rng.uniform(-60, 10), rng.uniform(-100, -10))
        p.paint(p.ellipsoid((c[0] + du, c[1] + dv, c[2]), rng.uniform(12, 22, 3), amp=0.3), rng.uniform(15, 35))
        if rng.random() < 0.6:
            p.paint(p.ellipsoid((c[0] + du, c[1] + dv - 5, c[2]), rng.uniform(4, 9, 3), amp=0.3), -850, texture=30)

    # Labelled organs (raw BTCV labels), most superior/large first so small structures are painted over them.
    org = {k: v[0] for k, v in _ORGAN_HU.items()}
    hu = {k: v[1] + rng.uniform(-8, 8) for k, v in _ORGAN_HU.items()}
    liver = E((-62, -2, 38), (82, 72, 72), amp=0.3) & ~E((20, -20, 38), (45, 70, 90), amp=0.2)
    p.paint(liver & body, hu["liver"], org["liver"])
    p.paint(E((88, 42, 42), (26, 44, 48)), hu["spleen"], org["spleen"])
    for name, c in (("kidney_r", (-58, 62, -32)), ("kidney_l", (60, 58, -20))):
        c, r = _jitter(rng, c, (27, 26, 48))
        kid = p.ellipsoid((c[0] + du, c[1] + dv, c[2]), r, amp=0.15)
        p.paint(kid, hu[name], org[name])
        p.paint(kid & p.ellipsoid((c[0] + du - np.sign(c[0]) * 6, c[1] + dv, c[2]), r * 0.55, amp=0.1), 100, org[name])
        p.paint(kid & p.ellipsoid((c[0] + du - np.sign(c[0]) * 22, c[1] + dv, c[2]), (12, 9, 14), amp=0.1), -80, 0)
    stomach = E((58, -38, 48), (44, 34, 42), amp=0.3)
    p.paint(stomach, hu["stomach"], org["stomach"])
    p.paint(stomach & E((58, -38, 48), (34, 24, 32), amp=0.1), 12, org["stomach"])  # fluid contents
    p.paint(stomach & E((58, -62, 62), (22, 10, 14), amp=0.1), -850, org["stomach"], texture=30)  # gas cap
    p.paint(E((-52, -48, -8), (15, 15, 28), amp=0.2), hu["gallbladder"], org["gallbladder"])
    # Pancreas: a lobulated band from the head (right, by the duodenum) across the midline to the splenic hilum.
    j = rng.uniform(-5, 5, (4, 3))
    panc = [(-40, 12, -22), (-8, 18, -8), (30, 24, 6), (68, 36, 22)]
    p.paint(p.tube(np.array(panc) + j + (du, dv, 0), 12.0, amp=0.3), hu["pancreas"], org["pancreas"])
    p.paint(E((-38, 14, -20), (15, 14, 16), amp=0.2), hu["pancreas"], org["pancreas"])  # head
    for name, c in (("adrenal_r", (-34, 50, 30)), ("adrenal_l", (34, 46, 34))):
        p.paint(E(c, (5, 12, 14), amp=0.2), hu[name], org[name])
    # Vessels: splenic/portal vein behind the pancreas into the liver hilum, IVC, aorta (contrast), esophagus.
    pv = [(75, 44, 16), (30, 33, 10), (-10, 28, 8), (-40, 10, 24)]
    p.paint(p.tube(np.array(pv) + j + (du, dv, 0), 6.0, amp=0.2), hu["portal"], org["portal"])
    drift = rng.uniform(-6, 6)
    ivc = [(-24 + du, 38 + dv, -110), (-26 + du + drift, 34 + dv, 0), (-30 + du, 30 + dv, 110)]
    p.paint(p.tube(ivc, 11.0, amp=0.15), hu["ivc"], org["ivc"])
    aorta = [(14 + du, 40 + dv, -110), (12 + du + drift, 38 + dv, 0), (8 + du, 34 + dv, 110)]
    p.paint(p.tube(aorta, rng.uniform(9.5, 11.5), amp=0.1), hu["aorta"], org["aorta"], texture=10)
    p.paint(p.tube([(6 + du, 30 + dv, 110), (20 + du, 0 + dv, 62)], 8.0, amp=0.15), hu["esophagus"], org["esophagus"])
    p.label[~body] = 0

    # Partial volume (in-plane blur) and scanner noise; stored as int16 HU like the BTCV release.
    image = ndimage.gaussian_filter(p.hu, sigma=(0.3, 0.7, 0.7)) + rng.normal(0.0, 12.0, p.shape)
    image = np.clip(np.rint(image), -1024, 3071).astype(np.int16)
    theta = math.radians(rng.uniform(-5, 5))
    rot = np.array([[math.cos(theta), -math.sin(theta), 0], [math.sin(theta), math.cos(theta), 0], [0, 0, 1]])
    sx, sy, sz = p.u.ravel()[1] - p.u.ravel()[0], p.v.ravel()[1] - p.v.ravel()[0], p.w.ravel()[1] - p.w.ravel()[0]
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([-sx, -sy, sz])  # BTCV-like: x and y flipped (LPS stored in RAS), slight rotation
    affine[:3, 3] = -affine[:3, :3] @ (np.array([nx, ny, nz]) - 1) / 2 + rng.uniform(-20, 20, 3)
    return image, p.label, affine


def make_demo_dataset(
    out_dir: str | os.PathLike,
    *,
    seed: int = DEMO_SEED,
    n_cases: int = 12,
    n_test: int = 4,
    shape: tuple[int, int, int] = (128, 128, 40),
) -> Path:
    """Write the demo phantoms as a raw BTCV-style release under ``out_dir``.

    Layout: ``img/imgXXXX.nii.gz`` (int16 HU), ``label/labelXXXX.nii.gz`` (uint8, 13 raw BTCV labels) and a
    ``dataset.json`` with the split (``n_test`` cases named after Synapse test IDs, the rest train), written last.

    Args:
        out_dir: destination folder (created).
        seed: generation seed; equal seeds give bit-identical files.
        n_cases: number of volumes.
        n_test: number of test volumes.
        shape: volume size ``(x, y, z)``.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        ValueError: bad ``n_cases``/``n_test``/``shape``.
    """
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape must be three sizes >= 8 (x, y, z), got {shape}")
    out_dir = Path(out_dir)
    train, test = demo_case_names(n_cases, n_test)
    for i, case in enumerate(sorted(train + test)):
        rng = np.random.default_rng(np.random.SeedSequence([seed, int(case[4:])]))
        image, label, affine = _make_case(rng, tuple(int(s) for s in shape))
        geometry = Geometry.from_affine(affine, image.shape)
        write_image(out_dir / "img" / f"img{case[4:]}.nii.gz", image, geometry)
        write_image(out_dir / "label" / f"label{case[4:]}.nii.gz", label, geometry)
    atomic_write_json(
        out_dir / "dataset.json",
        {
            "name": "resfu-med demo abdominal CT phantoms",
            "generator_version": DEMO_VERSION,
            "seed": seed,
            "shape_xyz": list(shape),
            "labels": {str(k): v for k, v in RAW_BTCV_LABELS.items()},
            "split": {"train": train, "test": test},
        },
    )
    return out_dir
