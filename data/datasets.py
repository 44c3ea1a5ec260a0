"""MONAI datasets over the prepared TransUNet layout (:mod:`resfu_med.data.layout`).

Training splits yield 2D slice dicts ``{"image": float32 (1, H, W), "label": uint8 (1, H, W), "case": str}``, or with
``volumes=True`` (3D patch training) one dict per case, its slices stacked back in slice order:
``{"image": float32 (Z, H, W), "label": uint8 (Z, H, W), "case": str}``; evaluation splits yield volume dicts ``{"image": float32 (Z, H, W), "label": uint8 (Z, H, W), "case": str,
"spacing": (sz, sy, sx) mm or None, "affine": 4×4 array or None}`` (geometry comes from ``dataset.json``; TransUNet's
own release has none). Files are read by a deterministic loader transform placed first, so ``CacheDataset`` caching
(``cache_rate > 0``) keeps the loaded arrays and reruns only the random augmentation.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from monai.data import CacheDataset
from monai.transforms import Compose, Transform

from resfu_med.errors import InputError, find_user_error
from resfu_med.safety import check_case_name

from .layout import TRAIN_SPLITS, lists_from_files, read_dataset_json

__all__ = ["PreparedDataset", "SynapseDataset", "LoadPrepared", "read_list"]


def read_list(path: Path) -> list[str]:
    """Names listed one per line in ``path`` (blank lines ignored).

    Raises:
        InputError: the file is missing, or a name is a path (``..``, separators, control characters).
    """
    if not path.is_file():
        raise InputError(f"{path}: list file not found")
    # A listed name becomes a file name under the dataset and the output folders: one plain name, never a path.
    return [check_case_name(line.strip(), str(path)) for line in path.read_text().splitlines() if line.strip()]


def _as_label(a: np.ndarray, path: Path) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind == "f":  # TransUNet's release stores labels as float; they must be whole numbers
        r = np.rint(a)
        if not np.array_equal(r, a) or r.min(initial=0) < 0 or r.max(initial=0) > 255:
            raise InputError(f"{path}: label holds non-integer or out-of-range values")
        a = r
    return a.astype(np.uint8)


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Turn a failure to read a prepared file into an :class:`InputError` naming it."""
    try:
        yield
    except InputError:
        raise
    except (OSError, KeyError, ValueError, EOFError) as err:
        raise InputError(f"{path}: cannot read prepared data ({type(err).__name__}: {err})") from err


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(image float32, label uint8)`` of one ``.npz``: keys ``image``/``label`` (TransUNet layout) or ``img``/``label``
    (the ACDC copy of TransUNet follow-ups)."""
    with _reading(path), np.load(path) as f:
        key = "img" if "image" not in f.files and "img" in f.files else "image"
        return np.asarray(f[key], dtype=np.float32), _as_label(f["label"], path)


def _read_slice(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(image float32 (H, W), label uint8 (H, W))`` of one ``.npz`` training slice."""
    image, label = _read_npz(path)
    if image.ndim != 2 or image.shape != label.shape:
        raise InputError(f"{path}: a slice must hold 2D image and label arrays of one shape, got {image.shape} and {label.shape}")
    return image, label


def _stack_slices(item: dict[str, Any]) -> dict[str, Any]:
    """Load a training case's slices (listed in slice order) and stack them into a ``(Z, H, W)`` volume."""
    images, labels = [], []
    for name in item["paths"]:
        path = Path(name)
        image, label = _read_slice(path)
        if image.shape != label.shape or (images and image.shape != images[0].shape):
            first = images[0].shape if images else image.shape
            raise InputError(f"{path}: slice of shape {image.shape} (label {label.shape}) does not match "
                             f"the first slice of case {item['case']} {first}; cannot stack a volume")
        images.append(image)
        labels.append(label)
    return {"image": np.stack(images), "label": np.stack(labels), "case": item["case"]}


class LoadPrepared(Transform):
    """Read one item of the prepared layout: ``{"path", "case", "kind", ...}`` → the array dict (see module doc)."""

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        if item["kind"] == "stack":
            return _stack_slices(item)
        path = Path(item["path"])
        if item["kind"] == "slice":
            image, label = _read_slice(path)
            return {"image": image[None], "label": label[None], "case": item["case"]}
        if path.suffix == ".npz":  # a volume of the ACDC copy: (Z, H, W), the axis TransUNet's test code slices
            image, label = _read_npz(path)
        else:
            with _reading(path), h5py.File(path, "r") as f:
                image, label = np.asarray(f["image"][:], dtype=np.float32), _as_label(f["label"][:], path)
        if image.ndim != 3 or image.shape != label.shape:
            raise InputError(f"{path}: a volume must hold 3D image and label arrays of one shape, got {image.shape} "
                             f"and {label.shape}")
        out = {"image": image, "label": label, "case": item["case"]}
        out["spacing"] = tuple(item["spacing"]) if item.get("spacing") is not None else None
        out["affine"] = np.asarray(item["affine"], dtype=np.float64) if item.get("affine") is not None else None
        return out


def _flatten(transform: Callable | Sequence[Callable] | None) -> list[Callable]:
    if transform is None:
        return []
    if isinstance(transform, Compose):
        return list(transform.transforms)
    if isinstance(transform, Sequence):
        return list(transform)
    return [transform]


_ANNOUNCED: set[Path] = set()


def _release_lists(root: Path) -> dict[str, list[str]]:
    """Lists of a TransUNet-layout folder without ``lists/``, announced in one line once per folder and process."""
    if (root / "meta").is_dir():  # resfu-med's prepare writes meta/ per case and lists/ at the very end
        raise InputError(f"{root}: an unfinished `resfu-med prepare` output (meta/ but no lists/); run prepare again "
                         "to finish it")
    found = lists_from_files(root)
    if root.resolve() not in _ANNOUNCED:
        _ANNOUNCED.add(root.resolve())
        print(f"resfu-med: {root} has no lists/ folder (TransUNet's download): using its {len(found['train'])} "
              f"train_npz/ slices as the train split and its {len(found['test_vol'])} test_vol_h5/ volumes as the "
              "test split, sorted by name", file=sys.stderr)
    return found


class PreparedDataset(CacheDataset):
    """A split of any dataset in the prepared TransUNet layout.

    Args:
        root: prepared folder (``train_npz``/``test_vol_h5``/``lists``; ``dataset.json`` optional).
        split: ``"train"`` (slices) or an evaluation split such as ``"test"``/``"val"`` (volumes).
        transform: MONAI transform(s) applied after loading.
        list_dir: list folder relative to ``root``; default from ``dataset.json`` or the only ``lists/lists_*``.
        cache_rate: fraction of items whose loaded arrays are cached in memory (0 = read from disk each time).
        num_workers: threads used to fill the cache.
        volumes: for a training split, one item per case with its slices stacked into a volume (3D patch training)
            instead of one item per slice; evaluation splits are volumes anyway.

    Raises:
        InputError: missing folders/list files/split, an empty split, or (``volumes``) a case whose listed slices
            are not numbered ``0..Z-1``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        transform: Callable | Sequence[Callable] | None = None,
        list_dir: str | None = None,
        cache_rate: float = 0.0,
        num_workers: int | None = 1,
        volumes: bool = False,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.meta = read_dataset_json(self.root) or {}
        if not self.root.is_dir():
            raise InputError(f"{self.root}: dataset folder not found")
        self._from_files: dict[str, list[str]] | None = None
        as_is = self._items_as_is(split, volumes) if list_dir is None and not self.meta else None
        if as_is is not None:  # a layout the subclass reads as it is (ACDCDataset: the follow-ups' ACDC copy)
            items = as_is
            lists = self.root
        else:
            if list_dir is None and not self.meta.get("list_dir") and not (self.root / "lists").is_dir():
                self._from_files = _release_lists(self.root)  # TransUNet's download: lists from the files present
                lists = self.root / "lists"
            else:
                lists = self.root / (list_dir or self.meta.get("list_dir") or self._only_list_dir())
            if split in TRAIN_SPLITS:
                items = self._slice_items(lists)
                if volumes:
                    items = self._stack_items(items, lists / f"{split}.txt")
            else:
                items = self._volume_items(lists)
        if not items:
            raise InputError(f"{lists}: split '{split}' is empty")
        self.cases = sorted({it["case"] for it in items})
        super().__init__(
            data=items,
            transform=Compose([LoadPrepared(), *_flatten(transform)]),
            cache_rate=cache_rate,
            num_workers=num_workers,
            progress=False,
        )

    def _items_as_is(self, split: str, volumes: bool) -> list[dict[str, Any]] | None:
        """The items of a foreign layout that a subclass reads without preparing it; ``None``: not such a layout."""
        return None

    def _transform(self, index: int) -> Any:
        # MONAI wraps a transform's exception in RuntimeError("applying transform ..."): surface our loader's
        # InputError (it names the file) instead, so a corrupt item reads as one clear message.
        try:
            return super()._transform(index)
        except RuntimeError as err:
            cause = find_user_error(err)
            if cause is None:
                raise
            raise cause from None

    def _only_list_dir(self) -> str:
        found = sorted(p for p in (self.root / "lists").glob("lists_*") if p.is_dir())
        if len(found) != 1:
            raise InputError(f"{self.root / 'lists'}: expected one lists_<Name> folder, found {[p.name for p in found]}")
        return str(found[0].relative_to(self.root))

    def _names(self, lists: Path, stem: str) -> list[str]:
        if self._from_files is None:
            return read_list(lists / f"{stem}.txt")
        if stem not in self._from_files:
            raise InputError(f"{self.root}: no lists/ folder, so only the TransUNet download's splits exist "
                             f"(train from train_npz/, test from test_vol_h5/); split '{self.split}' needs a list file")
        return self._from_files[stem]

    def _slice_items(self, lists: Path) -> list[dict[str, Any]]:
        names = self._names(lists, self.split)
        items = []
        for n in names:
            path = self.root / "train_npz" / f"{n}.npz"
            if not path.is_file():
                raise InputError(f"{path}: listed in {lists / f'{self.split}.txt'} but missing")
            items.append({"path": str(path), "case": n.rpartition("_slice")[0] or n, "kind": "slice"})
        return items

    @staticmethod
    def _stack_items(slices: list[dict[str, Any]], list_file: Path) -> list[dict[str, Any]]:
        """Group slice items by case, in slice-number order; every case must list slices ``0..Z-1``."""
        by_case: dict[str, dict[int, str]] = {}
        for it in slices:
            index = Path(it["path"]).stem.rpartition("_slice")[2]
            if not index.isdigit():
                raise InputError(f"{it['path']}: slice name has no _slice<N> number; cannot stack volumes")
            by_case.setdefault(it["case"], {})[int(index)] = it["path"]
        items = []
        for case, paths in by_case.items():
            if sorted(paths) != list(range(len(paths))):
                missing = sorted(set(range(max(paths) + 1)) - set(paths))
                raise InputError(f"{list_file}: case {case} lists slices {min(paths)}..{max(paths)} with gaps "
                                 f"(missing {missing[:5]}); 3D training needs every slice of a volume")
            items.append({"paths": [paths[z] for z in range(len(paths))], "case": case, "kind": "stack"})
        return items

    def _volume_items(self, lists: Path) -> list[dict[str, Any]]:
        names = self._names(lists, f"{self.split}_vol")
        cases = self.meta.get("cases", {})
        items = []
        for n in names:
            path = self.root / "test_vol_h5" / f"{n}.npy.h5"
            if not path.is_file():
                raise InputError(f"{path}: listed in {lists / f'{self.split}_vol.txt'} but missing")
            c = cases.get(n, {})
            items.append({"path": str(path), "case": n, "kind": "volume", "spacing": c.get("spacing"), "affine": c.get("affine")})
        return items


class SynapseDataset(PreparedDataset):
    """Synapse multi-organ CT in the TransUNet layout (``lists/lists_Synapse``); see :class:`PreparedDataset`.

    Example:
        >>> ds = SynapseDataset("~/datasets/Synapse", split="test")  # doctest: +SKIP
        >>> ds[0]["image"].shape  # (Z, 512, 512)  # doctest: +SKIP
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", transform: Callable | None = None, **kw: Any):
        if "list_dir" not in kw and (Path(root) / "lists" / "lists_Synapse").is_dir():
            kw["list_dir"] = "lists/lists_Synapse"
        super().__init__(root, split, transform, **kw)
