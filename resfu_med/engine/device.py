"""``--device`` of every command: one resolution rule (``auto``, ``cpu``, ``cuda``, ``cuda:N``)."""

from __future__ import annotations

import torch

from resfu_med.errors import InputError

__all__ = ["resolve_device"]


def resolve_device(name: str | None, local_rank: int | None = None) -> torch.device:
    """The torch device a ``--device`` value names.

    Args:
        name: ``auto`` (or ``None``/empty: CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        local_rank: the DDP process's GPU; used when ``name`` names CUDA without an index.

    Returns:
        The device.

    Raises:
        InputError: not a device torch knows, or CUDA asked for but unavailable.
    """
    if name in (None, "", "auto"):
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise InputError(f"--device {name!r}: not a device (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device {name}: no CUDA device is available (use --device cpu)")
        if dev.index is None and local_rank is not None:
            dev = torch.device("cuda", local_rank)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise InputError(f"--device {name!r}: use auto, cpu, cuda or cuda:N")
    return dev
