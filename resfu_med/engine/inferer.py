"""Window-level inference over arrays (MONAI's sense of "inferer"): slice-wise for 2D models, 3D sliding windows.

Files in and out are :mod:`resfu_med.engine.predictor` (nnU-Net's sense of "predictor").

2D models are trained on whole axial slices zoomed to ``img_size`` (docs/datasets.md), so they are run the same way
(docs/evaluation.md, TransUNet's ``test_single_volume``): each slice is zoomed to ``img_size`` (cubic, ``scipy.ndimage.zoom``
order 3), predicted, and the argmax zoomed back to the slice's size (nearest, order 0). Slices are batched for speed.
The network call goes through MONAI ``sliding_window_inference`` with Gaussian blending, so a ``roi`` smaller than
``img_size`` tiles the zoomed slice; with ``roi == img_size`` it is one window and exactly the evaluation protocol.
With a dataset plan's ``target_spacing`` (``plans.json``, :mod:`resfu_med.data.plans`) 2D models instead predict each
whole slice at the planned in-plane spacing by Gaussian-weighted sliding windows of the plan's patch, and the
probabilities are resampled back to the slice's own grid (:func:`predict_slices`).

A 2D model trained by the plan pipeline (``data.pipeline: plan``) carries its 2D plan in its checkpoint
(``data.plan``: ``spacing``, ``patch_size``); :func:`predict_volume` then runs :func:`predict_slices` at the plan's
spacing with windows of the plan's patch, whatever ``img_size``, ``roi`` or ``resample`` say.

3D models run MONAI ``sliding_window_inference`` over the volume at its own voxel grid, in overlapping slabs along
the first axis so that memory stays bounded for large CT volumes (only one slab's probabilities exist at a time,
however many slices the volume has).

Arrays are ``(Z, Y, X)`` (slice axis first), the layout of the evaluation datasets.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from scipy.ndimage import zoom

from resfu_med.errors import CheckpointError
from resfu_med.networks.model_registry import DEFAULT_IMG_SIZE, get_model_spec

__all__ = ["make_predictor", "predict_slices", "predict_volume_3d", "predict_volume"]


def _pair(v: int | Sequence[int], n: int, name: str) -> tuple[int, ...]:
    t = (int(v),) * n if isinstance(v, (int, np.integer)) else tuple(int(x) for x in v)
    if len(t) == 1:
        t = t * n
    if len(t) != n or min(t) < 1:
        raise ValueError(f"{name} must be a positive int or {n} positive ints, got {v!r}")
    return t


def make_predictor(
    model: torch.nn.Module, spatial_dims: int, tta: bool = False, num_classes: int | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Wrap ``model`` into a function returning softmax probabilities, optionally averaged over mirror flips.

    Args:
        model: network returning logits ``(B, C, *spatial)`` (a tuple/list output uses its first element).
        spatial_dims: 2 or 3.
        tta: average over all ``2**spatial_dims`` combinations of flips along the spatial axes (nnU-Net mirroring).
        num_classes: if given, the channel count the logits must have.

    Returns:
        ``predictor(x) -> probabilities`` (float32), for ``sliding_window_inference``.

    Raises:
        CheckpointError: (when called) the logits have a channel count other than ``num_classes``.
    """
    axes = list(range(2, 2 + spatial_dims))
    flips = [list(c) for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)] if tta else [[]]

    def forward(x: torch.Tensor) -> torch.Tensor:
        out = model(x)
        if isinstance(out, (list, tuple)):
            out = out[0]
        if num_classes is not None and out.shape[1] != num_classes:
            raise CheckpointError(
                f"the model outputs {out.shape[1]} classes but its checkpoint config says num_classes={num_classes}"
            )
        return torch.softmax(out.float(), dim=1)

    def predictor(x: torch.Tensor) -> torch.Tensor:
        total = None
        for f in flips:
            p = forward(x.flip(f)).flip(f) if f else forward(x)
            total = p if total is None else total + p
        return total / len(flips)

    return predictor


def _zoom_to(a: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    if tuple(a.shape) == tuple(shape):
        return a
    out = zoom(a, [t / s for t, s in zip(shape, a.shape)], order=order)
    if out.shape != tuple(shape):  # scipy rounds the output size; guard against an off-by-one
        raise RuntimeError(f"zoom produced {out.shape}, expected {tuple(shape)}")
    return out


def _planned_shape(shape: Sequence[int], spacing: Sequence[float] | None,
                   target_spacing: Sequence[float]) -> tuple[int, int]:
    """A slice's size once resampled from ``spacing`` to ``target_spacing`` (at least 1 pixel per side)."""
    if spacing is None:
        raise ValueError("spacing (the slices' own (sy, sx) in mm) is required with target_spacing")
    src = tuple(float(v) for v in spacing)[-2:]
    dst = tuple(float(v) for v in target_spacing)[-2:]
    if len(src) != 2 or len(dst) != 2 or min(src + dst) <= 0 or not all(np.isfinite(src + dst)):
        raise ValueError(f"spacing and target_spacing must be 2 positive numbers each, got {spacing!r} and "
                         f"{target_spacing!r}")
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, src, dst))


@torch.no_grad()
def predict_slices(
    model: torch.nn.Module,
    image: np.ndarray,
    img_size: int | Sequence[int],
    device: str | torch.device = "cpu",
    batch_size: int = 8,
    roi: int | Sequence[int] | None = None,
    overlap: float = 0.25,
    tta: bool = False,
    num_classes: int | None = None,
    resample: bool = True,
    probabilities: bool = False,
    progress: Callable[[int], None] | None = None,
    *,
    spacing: Sequence[float] | None = None,
    target_spacing: Sequence[float] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Predict a ``(Z, H, W)`` volume with a 2D model, slice by slice (docs/evaluation.md).

    With ``target_spacing`` (a dataset plan's 2D spacing, ``plans.json``), slices are predicted at the planned
    resolution instead of being zoomed to ``img_size``: each slice is resampled from its own ``spacing`` to
    ``target_spacing`` (cubic), tiled by Gaussian-weighted sliding windows of ``roi`` (default ``img_size``: the
    plan's patch; slices smaller than a window are padded by MONAI, never zoomed), and the class probabilities are
    resampled back to the slice's own grid (linear) before the argmax, as nnU-Net does.

    Args:
        model: 2D network in eval mode, input ``(B, 1, h, w)``.
        image: ``(Z, H, W)`` float volume, already intensity-normalised.
        img_size: size slices are zoomed to (the training size).
        device: where the network runs.
        batch_size: slices per network call.
        roi: sliding-window size on the zoomed slice; default ``img_size`` (one window).
        overlap: window overlap fraction in [0, 1).
        tta: mirror test-time augmentation.
        num_classes: expected logit channels (checked).
        resample: zoom slices to ``img_size`` and back; ``False`` runs windows at the native slice grid.
        spacing: the slices' in-plane spacing ``(sy, sx)`` in mm (required with ``target_spacing``).
        target_spacing: predict at this in-plane spacing ``(ty, tx)`` (see above); overrides ``resample``.
        probabilities: also return ``(C, Z, H, W)`` float32 probabilities (zoomed back linearly).
        progress: called with the number of slices done after each batch.

    Returns:
        ``(labels, probs)``: labels ``(Z, H, W)`` uint8; probs or ``None``.
    """
    if image.ndim != 3:
        raise ValueError(f"image must be (Z, H, W), got shape {image.shape}")
    size = _pair(img_size, 2, "img_size")
    roi_t = _pair(roi if roi is not None else size, 2, "roi")
    depth, h, w = image.shape
    target = size if resample else (h, w)
    planned = target_spacing is not None
    if planned:
        target = _planned_shape((h, w), spacing, target_spacing)
    predictor = make_predictor(model, 2, tta, num_classes)
    labels = np.zeros(image.shape, dtype=np.uint8)
    probs = None
    for z0 in range(0, depth, max(1, int(batch_size))):
        z1 = min(depth, z0 + max(1, int(batch_size)))
        batch = np.stack([_zoom_to(np.asarray(image[z], dtype=np.float32), target, 3) for z in range(z0, z1)])
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).unsqueeze(1).to(device)
        p = sliding_window_inference(x, roi_t, x.shape[0], predictor, overlap=overlap, mode="gaussian")
        if planned:  # probabilities back to the slice's own grid, then the argmax
            pn = p.cpu().numpy()
            back = np.stack([np.stack([_zoom_to(pn[i, c], (h, w), 1) for c in range(pn.shape[1])])
                             for i in range(pn.shape[0])])
            labels[z0:z1] = np.argmax(back, axis=1).astype(np.uint8)
            if probabilities:
                if probs is None:
                    probs = np.zeros((pn.shape[1], depth, h, w), dtype=np.float32)
                probs[:, z0:z1] = back.transpose(1, 0, 2, 3)
            if progress is not None:
                progress(z1 - z0)
            continue
        lab = torch.argmax(p, dim=1).to(torch.uint8).cpu().numpy()
        for i, z in enumerate(range(z0, z1)):
            labels[z] = _zoom_to(lab[i], (h, w), 0)
        if probabilities:
            if probs is None:
                probs = np.zeros((p.shape[1], depth, h, w), dtype=np.float32)
            pn = p.cpu().numpy()
            for i, z in enumerate(range(z0, z1)):
                for c in range(pn.shape[1]):
                    probs[c, z] = _zoom_to(pn[i, c], (h, w), 1)
        if progress is not None:
            progress(z1 - z0)
    return labels, probs


def _checked_plan(plan: Any, dims: int = 2) -> dict[str, Any]:
    """The checkpoint's 2D (or 3D) plan, checked: one line naming the bad key (a checkpoint is data, never trusted)."""
    if not isinstance(plan, Mapping):
        raise CheckpointError(f"checkpoint config data.plan: expected the {dims}D plan (an object), got {plan!r}")
    for key, kind in (("spacing", float), ("patch_size", int)):
        v = plan.get(key)
        ok = isinstance(v, list) and len(v) == dims and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0 and (kind is float or float(x).is_integer())
            for x in v)
        if not ok:
            raise CheckpointError(f"checkpoint config data.plan.{key}: expected {dims} positive "
                                  f"{'numbers' if kind is float else 'integers'}, got {v!r}")
    return {"spacing": [float(x) for x in plan["spacing"]], "patch_size": [int(x) for x in plan["patch_size"]]}


@torch.no_grad()
def predict_volume_3d(
    model: torch.nn.Module,
    image: np.ndarray,
    roi: int | Sequence[int],
    device: str | torch.device = "cpu",
    sw_batch_size: int = 1,
    overlap: float = 0.25,
    tta: bool = False,
    num_classes: int | None = None,
    probabilities: bool = False,
    slab_depth: int | None = None,
    progress: Callable[[int], None] | None = None,
    spacing: Sequence[float] | None = None,
    target_spacing: Sequence[float] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Predict a ``(Z, Y, X)`` volume with a 3D model by Gaussian-blended sliding windows, streamed in slabs.

    The volume is cut along Z into slabs of ``slab_depth`` slices; each slab is extended by half a window of context
    on both sides, predicted with ``sliding_window_inference``, and only its central part kept. Peak memory is one
    extended slab's probabilities — about ``(slab_depth + roi_z) * C * Y * X * 4`` bytes plus MONAI's weight map —
    whatever the number of slices. Voxels near a slab border are blended from a slightly different set of windows
    than a single whole-volume pass would use (the labels can differ there by a near-tie; a pointwise model gives
    identical results, which the tests check).

    Args:
        model: 3D network in eval mode, input ``(B, 1, z, y, x)``.
        image: ``(Z, Y, X)`` float volume, already intensity-normalised.
        roi: window size (one int or three).
        device: where the network runs.
        sw_batch_size: windows per network call.
        overlap: window overlap fraction in [0, 1).
        tta: mirror test-time augmentation (8 flips).
        num_classes: expected logit channels (checked).
        probabilities: also return ``(C, Z, Y, X)`` float32 probabilities.
        slab_depth: slices per slab; default ``roi_z``.
        progress: called with the number of slices done after each slab.
        spacing: the volume's ``(sz, sy, sx)`` in mm; needed with ``target_spacing``.
        target_spacing: a 3D plan's ``(sz, sy, sx)``: the volume is resampled to it (trilinear, as the plan
            pipeline's training resamples), predicted there, and its probabilities are resampled (linear) back to the
            volume's own grid before the argmax (peak memory: the probabilities at both grids). ``None``: the
            volume's own grid.

    Returns:
        ``(labels, probs)`` on the input's grid: labels ``(Z, Y, X)`` uint8; probs or ``None``.
    """
    if image.ndim != 3:
        raise ValueError(f"image must be (Z, Y, X), got shape {image.shape}")
    if target_spacing is not None:
        return _predict_at_spacing_3d(model, image, roi, device, sw_batch_size, overlap, tta, num_classes,
                                      probabilities, slab_depth, progress, spacing, target_spacing)
    roi_t = _pair(roi, 3, "roi")
    depth = image.shape[0]
    slab = int(slab_depth) if slab_depth else roi_t[0]
    halo = roi_t[0] // 2
    predictor = make_predictor(model, 3, tta, num_classes)
    labels = np.zeros(image.shape, dtype=np.uint8)
    probs = None
    for z0 in range(0, depth, slab):
        z1 = min(depth, z0 + slab)
        a0, a1 = max(0, z0 - halo), min(depth, z1 + halo)
        x = torch.from_numpy(np.ascontiguousarray(image[a0:a1], dtype=np.float32))[None, None].to(device)
        p = sliding_window_inference(x, roi_t, sw_batch_size, predictor, overlap=overlap, mode="gaussian")
        p = p[0, :, z0 - a0 : z1 - a0]
        labels[z0:z1] = torch.argmax(p, dim=0).to(torch.uint8).cpu().numpy()
        if probabilities:
            if probs is None:
                probs = np.zeros((p.shape[0],) + image.shape, dtype=np.float32)
            probs[:, z0:z1] = p.cpu().numpy()
        del p, x
        if progress is not None:
            progress(z1 - z0)
    return labels, probs


def _predict_at_spacing_3d(model: torch.nn.Module, image: np.ndarray, roi: int | Sequence[int],
                           device: str | torch.device, sw_batch_size: int, overlap: float, tta: bool,
                           num_classes: int | None, probabilities: bool, slab_depth: int | None,
                           progress: Callable[[int], None] | None, spacing: Sequence[float] | None,
                           target_spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`predict_volume_3d` with ``target_spacing``: resample, predict, resample the probabilities back."""
    from resfu_med.data.patch_transforms import resample_array, spacing_factors

    if spacing is None or len(spacing) != 3 or min(float(v) for v in spacing) <= 0:
        raise ValueError(f"target_spacing needs the volume's spacing as 3 positive numbers (sz, sy, sx), "
                         f"got {spacing!r}")
    factors = spacing_factors(spacing, target_spacing)
    if factors is None:
        return predict_volume_3d(model, image, roi, device, sw_batch_size, overlap, tta, num_classes, probabilities,
                                 slab_depth, progress)
    planned = resample_array(np.asarray(image, dtype=np.float32), factors, 1)
    _, p = predict_volume_3d(model, planned, roi, device, sw_batch_size, overlap, tta, num_classes, True, slab_depth)
    del planned
    back = np.stack([_zoom_to(p[c], image.shape, 1) for c in range(p.shape[0])])  # type: ignore[index]
    del p
    labels = np.argmax(back, axis=0).astype(np.uint8)
    if progress is not None:
        progress(image.shape[0])
    return labels, (back if probabilities else None)


def predict_volume(
    model: torch.nn.Module,
    image: np.ndarray,
    config: Mapping[str, Any],
    device: str | torch.device = "cpu",
    batch_size: int = 8,
    roi: int | Sequence[int] | None = None,
    overlap: float = 0.25,
    tta: bool = False,
    probabilities: bool = False,
    resample: bool = True,
    progress: Callable[[int], None] | None = None,
    spacing: Sequence[float] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Predict a ``(Z, Y, X)`` normalised volume with the model a checkpoint ``config`` describes (2D or 3D).

    ``config["data"]`` gives ``img_size`` and ``num_classes``; the window is ``roi`` or the model's default
    (:meth:`resfu_med.networks.ModelSpec.default_roi`). A 2D model trained by the plan pipeline
    (``data.pipeline == "plan"``) is run by :func:`predict_slices` at the checkpoint's ``data.plan`` spacing from the
    image's ``spacing`` ``(sz, sy, sx)`` (``None``: the planned spacing); ``roi`` and ``resample`` do not apply. A 3D
    model trained by the plan pipeline is run by :func:`predict_volume_3d` at ``data.plan.spacing`` (windows of
    ``roi`` or ``data.patch_size``).
    """
    data = config.get("data", {}) or {}
    spec = get_model_spec((config.get("model") or {}).get("name"))
    if spec.spatial_dims == 2 and data.get("pipeline") == "plan":
        plan = _checked_plan(data.get("plan"))
        own = spacing if spacing is not None else plan["spacing"]  # unknown spacing: taken as the planned one
        return predict_slices(model, image, plan["patch_size"], device, batch_size, plan["patch_size"], overlap, tta,
                              data.get("num_classes"), True, probabilities, progress, spacing=tuple(own)[-2:],
                              target_spacing=plan["spacing"])
    window = roi if roi is not None else spec.default_roi(data)
    if spec.spatial_dims == 3 and data.get("pipeline") == "plan" and data.get("plan") is not None:
        plan = _checked_plan(data["plan"], 3)
        own = spacing if spacing is not None else plan["spacing"]  # unknown spacing: taken as the planned one
        return predict_volume_3d(model, image, window, device, batch_size, overlap, tta, data.get("num_classes"),
                                 probabilities, progress=progress, spacing=tuple(own), target_spacing=plan["spacing"])
    if spec.spatial_dims == 3:
        return predict_volume_3d(model, image, window, device, batch_size, overlap, tta, data.get("num_classes"),
                                 probabilities, progress=progress)
    return predict_slices(model, image, data.get("img_size") or DEFAULT_IMG_SIZE, device, batch_size, window, overlap, tta,
                          data.get("num_classes"), resample, probabilities, progress)
