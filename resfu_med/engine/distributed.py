"""DDP plumbing: read ``torchrun``'s environment, initialise/destroy the process group, small collectives.

``torchrun --nproc_per_node N -m resfu_med train ...`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; without them
the run is a single process and every helper here is a no-op. The backend is NCCL on CUDA and gloo on CPU.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from collections.abc import Sequence
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

__all__ = ["DistInfo", "init_distributed", "destroy_distributed", "barrier", "all_true", "gather_objects",
           "parse_shard", "resolve_shard", "shard_items"]


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> DistInfo:
    """Initialise the default process group if launched by ``torchrun`` with more than one process.

    Args:
        device_type: ``"cuda"`` (NCCL backend) or ``"cpu"`` (gloo).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
    return DistInfo(rank=rank, world_size=world, local_rank=local)


#: Seconds without the GIL before a gloo group is destroyed (see :func:`destroy_distributed`).
GLOO_DRAIN_SECONDS = 0.5


def destroy_distributed() -> None:
    """Tear down the process group if one was initialised.

    Gloo first gets a short pause without the GIL: its worker threads release the tensors of finished collectives
    after the caller's wait has returned, and when the last reference is a Python one that release takes the GIL. The
    group's destructor joins those threads while holding the GIL, so a worker still waiting for it deadlocks the
    process (pytorch/pytorch#56297; seen once in about ten CI runs of the two-rank kill/resume test, diagnosed with
    gdb). ``time.sleep`` releases the GIL and lets them finish first.
    """
    if dist.is_available() and dist.is_initialized():
        if dist.get_backend() == "gloo":
            time.sleep(GLOO_DRAIN_SECONDS)
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every process (no-op without DDP)."""
    if info.enabled:
        dist.barrier()


def all_true(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """``True`` only if ``flag`` is true on every process."""
    if not info.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every process's ``obj``, in rank order (a one-element list without DDP)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def parse_shard(spec: str) -> tuple[int, int]:
    """``"I/N"`` (0-based shard ``I`` of ``N``, as ``RANK``/``WORLD_SIZE``) as ``(I, N)``.

    Raises:
        ValueError: not two integers with ``0 <= I < N``.
    """
    try:
        index, count = (int(x) for x in str(spec).split("/"))
    except ValueError:
        raise ValueError(f"--shard {spec!r}: give I/N, e.g. 0/4 (shards are numbered 0..N-1)") from None
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"--shard {spec!r}: need 0 <= I < N (shards are numbered 0..N-1)")
    return index, count


def resolve_shard(spec: str | None = None) -> tuple[int, int] | None:
    """The shard this process works on: ``--shard I/N`` if given, else ``(RANK, WORLD_SIZE)`` under ``torchrun``
    with more than one process, else ``None`` (everything).

    No process group is needed: each shard is a fixed, disjoint subset of the sorted inputs, so independent jobs
    started by a scheduler (``--shard``) and ``torchrun`` ranks split work the same way.
    """
    if spec is not None:
        return parse_shard(spec)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        return int(os.environ.get("RANK", "0")), world
    return None


def shard_items(items: Sequence[T], shard: tuple[int, int] | None) -> list[T]:
    """Items ``I, I+N, I+2N, ...`` of ``items`` for ``shard = (I, N)`` (all of them for ``None``): the shards of
    ``N`` are disjoint, their union is ``items``, and their sizes differ by at most one."""
    if shard is None:
        return list(items)
    index, count = shard
    return list(items[index::count])
