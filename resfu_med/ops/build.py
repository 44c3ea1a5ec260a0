"""Just-in-time build of the C++/CUDA FNS kernels (``csrc/``) with ``torch.utils.cpp_extension.load`` and ninja.

The sources are located with ``importlib.resources`` (they ship as package data of ``resfu_med.csrc``), so the build
works after a plain, non-editable install. The build folder is keyed by a hash of every source, their folder, the torch
version and the CUDA switch: processes of other branches or other torch builds never share (and never corrupt) one build, and
concurrent processes of one build wait on torch's lock file in that folder. A failed build is reported by ONE warning
per process; ``fns_gather`` then runs the pure-PyTorch reference.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import logging
import sys
import threading
import warnings
from pathlib import Path

import torch

from resfu_med.home import resfu_home

__all__ = ["available", "load", "last_error", "source_files", "build_directory", "reset"]

logger = logging.getLogger(__name__)

_CPU_SOURCES = ("fns_gather.cpp", "cpu/fns_gather_kernel.cpp")
_CUDA_SOURCES = ("cuda/fns_gather_kernel.cu",)
_HEADERS = ("fns_gather_common.h", "fns_gather.h")

_lock = threading.Lock()
_state: dict = {"tried": False, "ok": False, "cuda": False, "error": None, "warned": False}


def _csrc_dir() -> Path:
    root = importlib.resources.files("resfu_med.csrc")
    path = Path(str(root))
    if not (path / _CPU_SOURCES[0]).is_file():
        raise FileNotFoundError(f"kernel sources not found in {path} (is resfu_med installed from a zip?)")
    return path


def _want_cuda() -> bool:
    from torch.utils.cpp_extension import CUDA_HOME

    return torch.cuda.is_available() and CUDA_HOME is not None


def source_files(with_cuda: bool | None = None) -> list[Path]:
    """Absolute paths of the sources to compile (CUDA sources only when CUDA is usable).

    Args:
        with_cuda: include the ``.cu`` files; default: when ``torch.cuda.is_available()`` and a CUDA toolkit is found.

    Returns:
        The list of source paths.
    """
    csrc = _csrc_dir()
    names = _CPU_SOURCES + (_CUDA_SOURCES if (_want_cuda() if with_cuda is None else with_cuda) else ())
    return [csrc / name for name in names]


def build_directory(sources: list[Path], with_cuda: bool) -> Path:
    """Build folder keyed by the sources' content and location, the torch version and the CUDA switch.

    Args:
        sources: the files to compile (the shared header is hashed too).
        with_cuda: whether CUDA sources are part of the build.

    Returns:
        ``$RESFU_MED_HOME/torch_extensions/<hash>`` (``~/.cache/resfu-med`` when ``RESFU_MED_HOME`` is unset).
    """
    digest = hashlib.sha256()
    for path in sorted(sources + [_csrc_dir() / h for h in _HEADERS]):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    digest.update(f"{torch.__version__}|{torch.version.cuda}|{with_cuda}|{sys.version_info[:2]}".encode())
    # build.ninja names the sources by absolute path: two checkouts of the same sources sharing one folder would
    # rewrite it and rebuild each other's library on every start (and could load a half-written .so).
    digest.update(str(_csrc_dir().resolve()).encode())
    return resfu_home() / "torch_extensions" / f"resfu_med_ops_{digest.hexdigest()[:16]}"


def _cpp_load(**kwargs):
    # Indirection so tests can force a build failure.
    from torch.utils.cpp_extension import load as cpp_load

    return cpp_load(**kwargs)


def _summarise(exc: Exception) -> str:
    # cpp_extension puts the whole compiler log in the message; keep the first error line.
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower()]
    return f"{type(exc).__name__}: {(errors or lines or [''])[0][:300]}"


def load() -> bool:
    """Build (once per process, cached on disk) and load the extension; register its autograd and fake kernels.

    Returns:
        ``True`` when ``torch.ops.resfu_med.fns_gather_forward`` is usable, ``False`` after a failed build (the
        failure is kept in :func:`last_error`).
    """
    with _lock:
        if _state["tried"]:
            return _state["ok"]
        _state["tried"] = True
        try:
            with_cuda = _want_cuda()
            sources = source_files(with_cuda)
            build_dir = build_directory(sources, with_cuda)
            build_dir.mkdir(parents=True, exist_ok=True)
            logger.info("building the resfu_med FNS kernels in %s (first use only)", build_dir)
            _cpp_load(
                name=build_dir.name,
                sources=[str(s) for s in sources],
                extra_cflags=["-O3"],
                extra_cuda_cflags=["-O3"],
                extra_include_paths=[str(_csrc_dir())],
                build_directory=str(build_dir),
                with_cuda=with_cuda,
                is_python_module=False,
            )
            from resfu_med.ops import autograd  # noqa: F401  (registers autograd + fake kernels on the loaded op)

            autograd.register()
            _state.update(ok=True, cuda=with_cuda, error=None)
        except Exception as exc:  # any build/load failure falls back to the reference (with one warning)
            _state.update(ok=False, cuda=False, error=_summarise(exc))
        return _state["ok"]


def available(device: str | torch.device = "cpu", warn: bool = True) -> bool:
    """Whether the compiled kernels serve tensors on ``device`` (builds on first call).

    Args:
        device: the tensors' device.
        warn: issue the one-per-process warning when the build failed.

    Returns:
        ``True`` when the C++ (CPU) or CUDA kernel for ``device`` is loaded.
    """
    ok = load()
    if not ok and warn and not _state["warned"]:
        _state["warned"] = True
        warnings.warn(
            f"resfu_med: the C++/CUDA FNS kernels could not be built ({_state['error']}); fns_gather falls back to the "
            "slow pure-PyTorch reference. Set RESFU_MED_BACKEND=reference to choose it explicitly.",
            RuntimeWarning,
            stacklevel=3,
        )
    device = torch.device(device)
    if device.type == "cuda":
        return ok and _state["cuda"]
    return ok and device.type == "cpu"


def last_error() -> str | None:
    """The reason of the last failed build, or ``None``."""
    return _state["error"]


def reset() -> None:
    """Forget the build outcome so the next call tries again (tests; a loaded library stays loaded)."""
    with _lock:
        _state.update(tried=False, ok=False, cuda=False, error=None, warned=False)
