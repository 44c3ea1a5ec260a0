"""Loader for the official TransUNet/ViT checkpoint ``R50+ViT-B_16.npz`` (ImageNet-21k), with an explicit key map.

Every parameter of the encoder (ResNetV2 root and units, patch embedding, position embedding, transformer blocks,
encoder norm) is listed by its official name; values are converted from the JAX layout (conv kernels HWIO → OIHW,
dense kernels (in, out) → (out, in), attention kernels (hidden, heads, head_dim) → rows of MONAI's fused qkv
projection). Keys of the file that the model does not use (classifier head, pre-logits, class token) are reported as
skipped. GroupNorm and attention arrays are accepted in any layout of the right size, as the official loader
``.view()``s them (the 2020 release stores GroupNorm vectors as ``(1, 1, 1, C)``). A missing key or a shape mismatch
raises :class:`resfu_med.errors.InputError` naming the file and the key.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from resfu_med.errors import InputError

__all__ = ["MapEntry", "npz_key_map", "load_npz", "resize_position_embedding", "CLASSIFIER_KEYS"]


@dataclass
class MapEntry:
    """One official key: its expected array shape and how to write it into the model."""

    key: str
    shape: tuple[int, ...]
    write: Callable[[torch.Tensor], None]
    flatten: bool = False  # the official loader reshapes this array with .view(...): any layout of equal size is valid


def _copy(param: torch.Tensor, convert: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], None]:
    def write(value: torch.Tensor) -> None:
        param.copy_(convert(value).to(param.dtype))

    return write


def _conv(key: str, weight: torch.Tensor) -> MapEntry:
    o, i, kh, kw = weight.shape
    return MapEntry(key, (kh, kw, i, o), _copy(weight, lambda v: v.permute(3, 2, 0, 1)))  # HWIO → OIHW


def _vec(key: str, param: torch.Tensor, flatten: bool = False) -> MapEntry:
    return MapEntry(key, tuple(param.shape), _copy(param, lambda v: v.reshape(-1)), flatten)


def _dense(key: str, weight: torch.Tensor) -> MapEntry:
    o, i = weight.shape
    return MapEntry(key, (i, o), _copy(weight, lambda v: v.t()))


def _norm(prefix: str, module: nn.Module, flatten: bool = False) -> list[MapEntry]:
    return [_vec(f"{prefix}/scale", module.weight, flatten), _vec(f"{prefix}/bias", module.bias, flatten)]


def _group_norm(prefix: str, module: nn.Module) -> list[MapEntry]:
    # Flax before 0.3.6 (the 2020 ViT/R50 release) stored GroupNorm scale/bias as (1, 1, 1, C); the official
    # TransUNet loader and timm flatten them with .view(-1) / .flatten().
    return _norm(prefix, module, flatten=True)


def npz_key_map(model: nn.Module) -> list[MapEntry]:
    """The explicit map official key → model parameter for a :class:`TransUNet` (any config).

    Args:
        model: a ``TransUNet``.

    Returns:
        The entries in file order of the official names; the position embedding is handled by :func:`load_npz`.
    """
    entries: list[MapEntry] = []
    resnet = model.resnet
    entries.append(_conv("conv_root/kernel", resnet.conv_root.weight))
    entries += _group_norm("gn_root", resnet.gn_root)
    for b, stage in enumerate(resnet.stages):
        for u, unit in enumerate(stage):
            p = f"block{b + 1}/unit{u + 1}"
            for j in (1, 2, 3):
                entries.append(_conv(f"{p}/conv{j}/kernel", getattr(unit, f"conv{j}").weight))
                entries += _group_norm(f"{p}/gn{j}", getattr(unit, f"gn{j}"))
            if unit.has_proj:
                entries.append(_conv(f"{p}/conv_proj/kernel", unit.conv_proj.weight))
                entries += _group_norm(f"{p}/gn_proj", unit.gn_proj)
    entries.append(_conv("embedding/kernel", model.embeddings.patch.weight))
    entries.append(_vec("embedding/bias", model.embeddings.patch.bias))
    for i, block in enumerate(model.vit.blocks):
        p = f"Transformer/encoderblock_{i}"
        hidden = block.norm1.weight.shape[0]
        heads = block.attn.num_heads
        hd = hidden // heads
        entries += _norm(f"{p}/LayerNorm_0", block.norm1)
        for j, name in enumerate(("query", "key", "value")):
            rows = slice(j * hidden, (j + 1) * hidden)
            # MONAI's fused qkv rows are ordered (q|k|v, head, head_dim): exactly the flattened JAX kernel's columns.
            w, bias = block.attn.qkv.weight[rows], block.attn.qkv.bias[rows]
            entries.append(MapEntry(f"{p}/MultiHeadDotProductAttention_1/{name}/kernel", (hidden, heads, hd),
                                    _copy(w, lambda v, h=hidden: v.reshape(h, h).t()), flatten=True))
            entries.append(MapEntry(f"{p}/MultiHeadDotProductAttention_1/{name}/bias", (heads, hd),
                                    _copy(bias, lambda v: v.reshape(-1)), flatten=True))
        out = block.attn.out_proj
        entries.append(MapEntry(f"{p}/MultiHeadDotProductAttention_1/out/kernel", (heads, hd, hidden),
                                _copy(out.weight, lambda v, h=hidden: v.reshape(h, h).t()), flatten=True))
        entries.append(_vec(f"{p}/MultiHeadDotProductAttention_1/out/bias", out.bias, flatten=True))
        entries += _norm(f"{p}/LayerNorm_2", block.norm2)
        entries.append(_dense(f"{p}/MlpBlock_3/Dense_0/kernel", block.mlp.linear1.weight))
        entries.append(_vec(f"{p}/MlpBlock_3/Dense_0/bias", block.mlp.linear1.bias))
        entries.append(_dense(f"{p}/MlpBlock_3/Dense_1/kernel", block.mlp.linear2.weight))
        entries.append(_vec(f"{p}/MlpBlock_3/Dense_1/bias", block.mlp.linear2.bias))
    entries += _norm("Transformer/encoder_norm", model.vit.norm)
    return entries


POSEMB_KEY = "Transformer/posembed_input/pos_embedding"
#: Arrays of the ImageNet classifier that a segmentation encoder never uses: the class token, the pre-logits layer
#: and the 21k-class head (their presence is normal in the official file and only reported).
CLASSIFIER_KEYS = ("cls", "pre_logits/", "head/")


def _is_classifier_key(key: str) -> bool:
    return key == "cls" or key.startswith(CLASSIFIER_KEYS[1:])


def _layout_matches(shape: tuple[int, ...], entry: MapEntry) -> bool:
    """Whether an array of ``shape`` is a valid layout for ``entry`` (see :func:`load_npz`)."""
    shape = tuple(int(s) for s in shape)
    if shape == entry.shape:
        return True
    if entry.flatten:  # the official loader .view()s it: only the element count matters
        return int(np.prod(shape)) == int(np.prod(entry.shape))
    # timm flattens any leading singleton axes, e.g. a (1, 1, 1, C) vector of an old Flax checkpoint
    squeezed = shape
    while len(squeezed) > len(entry.shape) and squeezed[0] == 1:
        squeezed = squeezed[1:]
    return squeezed == entry.shape


def resize_position_embedding(posemb: torch.Tensor, grid: int) -> torch.Tensor:
    """Resize a ``(1, g², D)`` position embedding to ``(1, grid², D)`` bilinearly.

    Corner-aligned, as the original's ``scipy.ndimage.zoom(order=1)``.
    """
    old = int(round(posemb.shape[1] ** 0.5))
    if old * old != posemb.shape[1]:
        raise ValueError(f"position embedding of {posemb.shape[1]} tokens is not a square grid.")
    if old == grid:
        return posemb
    g = posemb.reshape(1, old, old, -1).permute(0, 3, 1, 2)
    g = F.interpolate(g, size=(grid, grid), mode="bilinear", align_corners=True)
    return g.permute(0, 2, 3, 1).reshape(1, grid * grid, -1)


def load_npz(model: nn.Module, path: str | os.PathLike) -> dict[str, Any]:
    """Load ``R50+ViT-B_16.npz`` into a ``TransUNet``'s encoder.

    Args:
        model: a ``TransUNet``; its decoder and head stay as initialised.
        path: the official npz file.

    Array layouts: the official file (Flax before 0.3.6) stores GroupNorm scale/bias as ``(1, 1, 1, C)``, newer
    exports as ``(C,)``. Every key that the official TransUNet loader reshapes with ``.view`` (GroupNorm scale/bias,
    attention query/key/value/out kernels and biases) is accepted in any layout with the expected element count;
    other vectors also with extra leading singleton axes (as timm flattens them); any other shape is an error.

    Returns:
        ``{"loaded": [keys], "skipped": [file keys not used], "classifier_skipped": [the ImageNet classifier keys
        among them: cls, pre_logits/*, head/*], "note": one line saying what was ignored ("" if nothing),
        "position_embedding": "copied" | "dropped class token" | "resized g→G"}``.

    Raises:
        InputError: unreadable file, a missing key, or a shape mismatch (the message names the file and the key).
    """
    path = os.fspath(path)
    try:
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError) as err:
        raise InputError(f"{path}: cannot read the pretrained weights as .npz ({err}).") from err
    entries = npz_key_map(model)
    loaded: list[str] = []
    with torch.no_grad():
        for e in entries:
            if e.key not in arrays:
                raise InputError(f"{path}: missing key {e.key!r} (expected shape {e.shape}).")
            value = arrays[e.key]
            if not _layout_matches(value.shape, e):
                raise InputError(f"{path}: key {e.key!r} has shape {tuple(value.shape)}, the model expects {e.shape}.")
            e.write(torch.from_numpy(np.ascontiguousarray(value)).float())
            loaded.append(e.key)
        if POSEMB_KEY not in arrays:
            raise InputError(f"{path}: missing key {POSEMB_KEY!r}.")
        target = model.embeddings.position
        posemb = torch.from_numpy(np.ascontiguousarray(arrays[POSEMB_KEY])).float()
        n_new, hidden = target.shape[1], target.shape[2]
        if posemb.dim() != 3 or posemb.shape[0] != 1 or posemb.shape[2] != hidden:
            raise InputError(f"{path}: key {POSEMB_KEY!r} has shape {tuple(posemb.shape)}, expected (1, tokens, {hidden}).")
        how = "copied"
        if posemb.shape[1] != n_new:
            side = int(round((posemb.shape[1] - 1) ** 0.5))
            if side * side == posemb.shape[1] - 1:  # a class token first: the segmentation model has none
                posemb = posemb[:, 1:]
                how = "dropped class token"
            if posemb.shape[1] != n_new:
                old = int(round(posemb.shape[1] ** 0.5))
                try:
                    posemb = resize_position_embedding(posemb, model.embeddings.grid)
                except ValueError as err:
                    raise InputError(f"{path}: key {POSEMB_KEY!r}: {err}") from err
                resized = f"resized {old}x{old}->{model.embeddings.grid}x{model.embeddings.grid}"
                how = resized if how == "copied" else f"{how}, {resized}"
        target.copy_(posemb)
        loaded.append(POSEMB_KEY)
    used = set(loaded)
    skipped = sorted(k for k in arrays if k not in used)
    classifier = [k for k in skipped if _is_classifier_key(k)]
    other = [k for k in skipped if not _is_classifier_key(k)]
    note = f"ignored {len(classifier)} ImageNet classifier array(s) ({', '.join(classifier)})" if classifier else ""
    if other:
        note += ("; " if note else "") + f"ignored {len(other)} other array(s) ({', '.join(other[:5])}{', ...' if len(other) > 5 else ''})"
    return {"loaded": loaded, "skipped": skipped, "classifier_skipped": classifier, "note": note,
            "position_embedding": how}
