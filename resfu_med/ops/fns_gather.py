"""``fns_gather``: the fused fine-grained neighbour selection gather (docs/fns_operator.md), 2D and 3D.

Thin, documented entry point in the torchvision style: validate the arguments, pick a backend, call
``torch.ops.resfu_med.fns_gather_forward`` (C++ CPU / CUDA kernels built just in time by :mod:`resfu_med.ops.build`)
or the pure-PyTorch reference when no kernel is available. The 2D op is the 3D kernel with a depth of one (one LR and HR
slice, one neighbour offset in depth), so both share every line of kernel code.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import warnings
from collections.abc import Iterator

import torch

from resfu_med.ops import build
from resfu_med.ops.reference import fns_gather_reference

__all__ = ["fns_gather", "backend", "use_backend", "BACKENDS", "ENV_BACKEND"]

BACKENDS = ("reference", "cpp", "cuda")
ENV_BACKEND = "RESFU_MED_BACKEND"

# Per context (thread / task) override set by use_backend(); the environment is read once per process, not per call.
_override: contextvars.ContextVar[str | None] = contextvars.ContextVar("resfu_med_fns_backend", default=None)
_environment: list[str | None] = []  # [value] once read


def _check_name(value: str, source: str) -> str:
    if value not in BACKENDS:
        raise ValueError(f"{source}={value!r} is not one of {', '.join(BACKENDS)}")
    return value


def _env_backend() -> str | None:
    if not _environment:
        value = os.environ.get(ENV_BACKEND, "").strip().lower()
        _environment.append(_check_name(value, ENV_BACKEND) if value else None)
    return _environment[0]


def _reread_environment() -> None:
    """Read ``RESFU_MED_BACKEND`` again at the next call (tests that change the environment)."""
    _environment.clear()


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run ``fns_gather`` with backend ``name`` inside the ``with`` block (this thread / task only).

    Takes precedence over ``RESFU_MED_BACKEND``. Forcing a compiled backend that cannot serve the tensors raises at the
    call instead of falling back.

    Args:
        name: ``"reference"``, ``"cpp"`` or ``"cuda"``.

    Raises:
        ValueError: if ``name`` is not a backend.

    Example:
        >>> with use_backend("reference"):  # e.g. to export plain torch ops
        ...     traced = torch.jit.trace(model, example)
    """
    token = _override.set(_check_name(str(name).strip().lower(), "use_backend"))
    try:
        yield
    finally:
        _override.reset(token)


def _forced_backend() -> tuple[str | None, str]:
    forced = _override.get()
    if forced is not None:
        return forced, "use_backend"
    return _env_backend(), ENV_BACKEND


def backend(device: str | torch.device = "cpu") -> str:
    """Name of the backend that ``fns_gather`` runs for tensors on ``device``.

    ``"cpp"`` (C++ CPU kernel) or ``"cuda"`` (CUDA kernel) when the extension built (compiled on first call), else
    ``"reference"``. :func:`use_backend` forces one within a block; the environment variable
    ``RESFU_MED_BACKEND=reference|cpp|cuda`` (read once, at the first call) forces one for the process.

    Args:
        device: the device of the tensors (default CPU).

    Returns:
        ``"reference"``, ``"cpp"`` or ``"cuda"``.

    Raises:
        ValueError: if ``RESFU_MED_BACKEND`` names an unknown backend, or a forced compiled backend does not serve
            ``device`` (``cpp`` for CUDA tensors, ``cuda`` for CPU tensors).
        RuntimeError: if a compiled backend is forced and the extension could not be built, or the build failed and
            ``RESFU_MED_REQUIRE_KERNEL=1`` is set.
    """
    device = torch.device(device)
    native = "cuda" if device.type == "cuda" else "cpp" if device.type == "cpu" else None
    forced, source = _forced_backend()
    if forced == "reference":
        return "reference"
    if forced is not None:
        if forced != native:
            raise ValueError(f"{source}={forced} cannot run tensors on device {device}")
        if not build.available(device, warn=False):
            raise RuntimeError(f"{source}={forced} but the resfu_med kernel is not available: {build.last_error()} (build log: {build.build_log()})")
        return forced
    if native is not None and build.available(device):
        return native
    return "reference"


def _assume_constant_result(fn):
    """``torch.compiler.assume_constant_result`` without its import of ``torch._dynamo``: that import costs about 0.5 s
    of CPU in every process (each ``infer --shard`` and ``prepare -np`` worker), compiling or not. Dynamo's decorator
    only sets this attribute; tests/ops/test_fns_backend.py checks that it still does."""
    fn._dynamo_marked_constant = True
    return fn


@_assume_constant_result
def _backend_for(device_type: str, index: int | None) -> str:
    # torch.compile evaluates this once while tracing and keeps the answer as a constant: no graph break.
    return backend(torch.device(device_type, index) if index is not None else torch.device(device_type))


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    # Under torch.jit.trace sizes are traced tensors; the op's shapes are static, so read them as plain ints quietly.
    if torch.jit.is_tracing():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            return tuple(int(s) for s in t.shape)
    return tuple(t.shape)


def _odd_root(count: int, spatial: int) -> int | None:
    k = 1
    while k**spatial < count:
        k += 2
    return k if k**spatial == count else None


def _validate(attn: torch.Tensor, x: torch.Tensor) -> tuple[int, int]:
    """Check shapes, dtypes and devices; return ``(spatial_dims, K)``."""
    if not isinstance(attn, torch.Tensor) or not isinstance(x, torch.Tensor):
        raise ValueError(f"fns_gather: attn and x must be tensors, got {type(attn).__name__} and {type(x).__name__}")
    a_shape, x_shape = _shape(attn), _shape(x)
    shapes = f"attn {a_shape}, x {x_shape}"
    if len(x_shape) not in (4, 5) or len(a_shape) != len(x_shape):
        raise ValueError(f"fns_gather: attn and x must both be 4D (2D maps) or both 5D (volumes), got {shapes}")
    spatial = len(x_shape) - 2
    if 0 in a_shape or 0 in x_shape:
        raise ValueError(f"fns_gather: empty tensors are not supported, got {shapes}")
    if a_shape[0] != x_shape[0]:
        raise ValueError(f"fns_gather: batch sizes of attn and x differ, got {shapes}")
    k = _odd_root(a_shape[1], spatial)
    if k is None:
        raise ValueError(f"fns_gather: attn channels must be K^{spatial} for an odd K (1, 3, 5, 7, ...), got {shapes}")
    for axis, (hr, lr) in enumerate(zip(a_shape[2:], x_shape[2:])):
        if hr < lr:
            raise ValueError(f"fns_gather: the output size must not be smaller than x's (ratio < 1 on spatial axis {axis}), got {shapes}")
    if not attn.is_floating_point() or attn.dtype != x.dtype:
        raise ValueError(f"fns_gather: attn and x must share one floating dtype, got attn {attn.dtype}, x {x.dtype} ({shapes})")
    if attn.device != x.device:
        raise ValueError(f"fns_gather: attn and x must be on one device, got attn {attn.device}, x {x.device} ({shapes})")
    return spatial, k


def fns_gather(attn: torch.Tensor, x: torch.Tensor, *, deterministic: bool = False) -> torch.Tensor:
    """Fine-grained neighbour selection gather (docs/fns_operator.md).

    ``out[n, c, p] = Σ_t attn[n, t, p] · V(n, c, p, t)``, where ``V`` samples ``x`` bilinearly (trilinearly in 3D) at the
    LR coordinate of HR position ``p`` (``align_corners=False``) shifted by the whole-LR-pixel offset ``t``, clamped to
    the LR grid. ``t = (a + R)·K + (b + R)`` in 2D and ``((a + R)·K + (b + R))·K + (c + R)`` in 3D, ``R = (K − 1)/2``.
    Integer and non-integer ratios per axis are exact. Differentiable in both inputs.

    Under autocast the op runs in float32 (the kernels accumulate in float32 for half inputs in any case).

    Args:
        attn: ``(N, K^2, H, W)`` or ``(N, K^3, D, H, W)`` neighbour weights (usually a softmax over dim 1), ``K`` odd.
        x: ``(N, C, h, w)`` or ``(N, C, d, h, w)`` low-resolution values, same dtype and device as ``attn``,
            with ``h <= H``, ``w <= W`` (and ``d <= D``).
        deterministic: CUDA only: compute ``grad_x`` by a gather without atomics (bit-identical across runs);
            also on whenever ``torch.use_deterministic_algorithms(True)`` is in effect (``resfu-med train
            --deterministic``). CPU backward is always deterministic.

    Returns:
        ``(N, C, H, W)`` or ``(N, C, D, H, W)`` tensor in the inputs' dtype.

    Raises:
        ValueError: on wrong ranks, attn channels that are not ``K^2``/``K^3`` for an odd ``K``, batch mismatch, an
            output smaller than ``x`` on some axis, mismatched dtypes or devices, or empty tensors.

    Example:
        >>> attn = torch.softmax(torch.randn(2, 9, 32, 32), dim=1)
        >>> fns_gather(attn, torch.randn(2, 16, 14, 14)).shape
        torch.Size([2, 16, 32, 32])
    """
    spatial, k = _validate(attn, x)
    # Like torch's own ops, honour the global switch so a deterministic run needs no flag threaded through networks.
    deterministic = bool(deterministic) or torch.are_deterministic_algorithms_enabled()
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        with torch.autocast(device_type, enabled=False):
            return fns_gather(attn.float(), x.float(), deterministic=deterministic)
    # ONNX export has no symbolic for the compiled op; the reference is made of standard ops.
    if torch.onnx.is_in_onnx_export() or _backend_for(x.device.type, x.device.index) == "reference":
        return fns_gather_reference(attn, x)
    if spatial == 2:
        # 2D = 3D with one slice in depth and one depth offset (kernel_depth = 1).
        out = torch.ops.resfu_med.fns_gather_forward(attn.unsqueeze(2), x.unsqueeze(2), 1, bool(deterministic))
        return out.squeeze(2)
    return torch.ops.resfu_med.fns_gather_forward(attn, x, k, bool(deterministic))
