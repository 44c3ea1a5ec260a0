"""Resumable, reproducible sampling of training slices.

Two pieces make a run's batches a pure function of ``(seed, epoch, position in epoch)``, independent of the number of
DataLoader workers and of interruptions:

- :class:`ResumableSampler` (a :class:`torch.utils.data.DistributedSampler`) shuffles with ``seed + epoch``, shards
  across DDP ranks, can start mid-epoch (``set_start``), and yields ``(index, sample_seed)`` pairs;
- with ``fg_oversample > 0`` the sampler replaces a fixed share of every global batch by foreground draws (nnU-Net's
  oversampling, for slices): the last ``round(fg_oversample * batch)`` positions of each batch (at least one) take a
  slice that contains a class drawn uniformly among the foreground classes present in the training split, so rare
  classes are seen as often as common ones; the other positions keep the uniform shuffle. Each draw is seeded by
  ``(seed, epoch, position)`` like the rest, so it stays resumable and independent of the DDP rank that makes it;
- :class:`SeededDataset` reseeds the random transforms with ``sample_seed`` before transforming each sample, so the
  augmentation of a sample does not depend on which worker loaded it or on what was loaded before.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import DistributedSampler

__all__ = ["ResumableSampler", "SeededDataset", "sample_seed", "foreground_index", "item_labels", "foreground_slots"]


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """A 32-bit seed for the sample at global ``position`` of ``epoch`` in a run seeded with ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(epoch), int(position)]).generate_state(1)[0])


def foreground_index(labels: Iterable[Any]) -> dict[int, list[int]]:
    """Foreground class → the indices of the items (slices) whose label contains it (classes present only).

    Args:
        labels: each item's label array (any shape; integer classes, 0 = background), in item order.
    """
    index: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        for c in np.unique(np.asarray(label)):
            if int(c) > 0:
                index.setdefault(int(c), []).append(i)
    return dict(sorted(index.items()))


def item_labels(dataset: Any) -> Iterator[np.ndarray]:
    """The label of every item of a training dataset, read without its random transforms where possible.

    A MONAI dataset's ``data`` list is used directly: items that hold their ``label`` array, or prepared-layout slice
    items (read with :class:`resfu_med.data.LoadPrepared`); any other dataset is indexed (``dataset[i]["label"]``).
    """
    inner = getattr(dataset, "dataset", dataset)  # SeededDataset → the MONAI dataset
    data = getattr(inner, "data", None)
    if isinstance(data, Sequence) and len(data) == len(inner):
        loader = None
        for item in data:
            if isinstance(item, Mapping) and "label" in item:
                yield np.asarray(item["label"])
                continue
            if loader is None:
                from resfu_med.data.datasets import LoadPrepared

                loader = LoadPrepared()
            yield np.asarray(loader(item)["label"])
        return
    for i in range(len(inner)):
        yield np.asarray(inner[i]["label"])


def foreground_slots(batch_size: int, fraction: float) -> int:
    """How many positions of a global batch are foreground draws: ``round(fraction * batch)``, at least 1 if > 0."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fg_oversample must be in [0, 1], got {fraction}")
    return 0 if fraction == 0 else min(batch_size, max(1, round(fraction * batch_size)))


class ResumableSampler(DistributedSampler):
    """A ``DistributedSampler`` that can resume mid-epoch and pairs each index with a per-sample seed.

    Args:
        dataset: the map-style dataset (only its length is used).
        num_replicas: DDP world size (1 without DDP).
        rank: this process's rank.
        shuffle: reshuffle every epoch with ``seed + epoch``.
        seed: the run seed.
        drop_last: drop the tail that does not divide evenly across replicas.
        fg_oversample: fraction of every global batch drawn from foreground slices (0: uniform sampling only).
        fg_index: class → item indices containing it (:func:`foreground_index`); needed when ``fg_oversample > 0``
            (an empty index falls back to uniform sampling).
        batch_size: the global batch size (positions ``[j * batch_size, (j + 1) * batch_size)`` of an epoch form
            batch ``j`` across all ranks).

    Example:
        >>> sampler = ResumableSampler(ds, num_replicas=1, rank=0, seed=1234)
        >>> sampler.set_epoch(3); sampler.set_start(48)  # skip the 48 samples this rank already consumed
    """

    def __init__(self, dataset: Any, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False, fg_oversample: float = 0.0, fg_index: Mapping[int, Sequence[int]] | None = None,
                 batch_size: int = 1) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.start = 0
        self.batch_size = int(batch_size)
        self.fg_slots = foreground_slots(self.batch_size, float(fg_oversample))
        self.fg_index = {int(c): list(v) for c, v in (fg_index or {}).items() if len(v)}
        if self.fg_slots and fg_index is None:
            raise ValueError("fg_oversample > 0 needs fg_index (foreground_index of the training labels)")

    def set_start(self, start: int) -> None:
        """Skip the first ``start`` samples of this rank's share of the current epoch (reset by ``set_epoch``)."""
        if start < 0 or start > self.num_samples:
            raise ValueError(f"start must be in [0, {self.num_samples}], got {start}")
        self.start = int(start)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.start = 0

    def foreground_draw(self, position: int) -> int | None:
        """The item drawn at global ``position`` of the current epoch if it is a foreground slot, else ``None``."""
        if not self.fg_slots or not self.fg_index or position % self.batch_size < self.batch_size - self.fg_slots:
            return None
        rng = np.random.default_rng(np.random.SeedSequence([int(self.seed), int(self.epoch), int(position), 1]))
        classes = list(self.fg_index)
        members = self.fg_index[classes[int(rng.integers(len(classes)))]]
        return members[int(rng.integers(len(members)))]

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        indices = list(super().__iter__())
        for local in range(self.start, len(indices)):
            # Global position of this sample in the epoch (ranks interleave: rank + k * world).
            position = self.rank + local * self.num_replicas
            drawn = self.foreground_draw(position)
            yield (indices[local] if drawn is None else drawn), sample_seed(self.seed, self.epoch, position)

    def __len__(self) -> int:
        return self.num_samples - self.start


class SeededDataset(TorchDataset):
    """Wraps a MONAI dataset so each item is produced with its random transforms seeded by the sampler.

    Args:
        dataset: a MONAI ``Dataset`` (its ``transform``, if randomizable, is reseeded per item) or any map-style
            dataset.
        transform: an optional further transform (a MONAI ``Compose``) applied after the dataset's own.

    Items are requested as ``dataset[(index, seed)]`` (what :class:`ResumableSampler` yields); a plain ``int`` index
    uses seed 0.
    """

    def __init__(self, dataset: Any, transform: Any = None) -> None:
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        index, seed = key if isinstance(key, tuple) else (key, 0)
        inner = getattr(self.dataset, "transform", None)
        if hasattr(inner, "set_random_state"):
            inner.set_random_state(seed=seed)
        item = self.dataset[index]
        if self.transform is not None:
            if hasattr(self.transform, "set_random_state"):
                self.transform.set_random_state(seed=(seed + 1) % (2**32))
            item = self.transform(item)
        return item
