"""Resumable, reproducible sampling of training slices.

Two pieces make a run's batches a pure function of ``(seed, epoch, position in epoch)``, independent of the number of
DataLoader workers and of interruptions:

- :class:`ResumableSampler` (a :class:`torch.utils.data.DistributedSampler`) shuffles with ``seed + epoch``, shards
  across DDP ranks, can start mid-epoch (``set_start``), and yields ``(index, sample_seed)`` pairs;
- :class:`SeededDataset` reseeds the random transforms with ``sample_seed`` before transforming each sample, so the
  augmentation of a sample does not depend on which worker loaded it or on what was loaded before.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import DistributedSampler

__all__ = ["ResumableSampler", "SeededDataset", "sample_seed"]


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """A 32-bit seed for the sample at global ``position`` of ``epoch`` in a run seeded with ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(epoch), int(position)]).generate_state(1)[0])


class ResumableSampler(DistributedSampler):
    """A ``DistributedSampler`` that can resume mid-epoch and pairs each index with a per-sample seed.

    Args:
        dataset: the map-style dataset (only its length is used).
        num_replicas: DDP world size (1 without DDP).
        rank: this process's rank.
        shuffle: reshuffle every epoch with ``seed + epoch``.
        seed: the run seed.
        drop_last: drop the tail that does not divide evenly across replicas.

    Example:
        >>> sampler = ResumableSampler(ds, num_replicas=1, rank=0, seed=1234)
        >>> sampler.set_epoch(3); sampler.set_start(48)  # skip the 48 samples this rank already consumed
    """

    def __init__(self, dataset: Any, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)
        self.start = 0

    def set_start(self, start: int) -> None:
        """Skip the first ``start`` samples of this rank's share of the current epoch (reset by ``set_epoch``)."""
        if start < 0 or start > self.num_samples:
            raise ValueError(f"start must be in [0, {self.num_samples}], got {start}")
        self.start = int(start)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.start = 0

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        indices = list(super().__iter__())
        for local in range(self.start, len(indices)):
            # Global position of this sample in the epoch (ranks interleave: rank + k * world).
            position = self.rank + local * self.num_replicas
            yield indices[local], sample_seed(self.seed, self.epoch, position)

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
