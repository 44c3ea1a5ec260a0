"""Just-in-time builds of the C++/CUDA FNS kernels (``csrc/``) with ``torch.utils.cpp_extension.load`` and ninja.

Two libraries, built and loaded separately so a CUDA compile error never costs the CPU kernel:

* ``cpu``: the op schema and the C++ CPU kernel (``fns_gather.cpp``, ``cpu/``), compiled with torch's OpenMP setting;
* ``cuda``: the CUDA kernel (``cuda/``), built only when a GPU and a toolkit are present, loaded after ``cpu``.

A third, test-only library (``testing/``: the CUDA kernels' per-element formulas run on CPU) is built by
:func:`load_testing` for the tests; it is never part of the production build.

The sources are located with ``importlib.resources`` (package data of ``resfu_med.csrc``), so the build works after a
plain, non-editable install. Each build folder is keyed by a hash of its sources, the headers, their folder, the torch /
CUDA / Python versions, the compiler flags and, for CUDA, the architecture list and the visible devices' compute
capabilities: other branches, torch builds or GPU generations never share (or load) one library, and concurrent
processes of one build wait on torch's lock file in that folder. A failed build writes the compiler output to
``build.log`` in its folder and is reported by ONE warning per process naming that file; ``fns_gather`` then runs the
pure-PyTorch reference. ``RESFU_MED_REQUIRE_KERNEL=1`` turns a failed build into an error instead (CI sets it).
"""

from __future__ import annotations

import hashlib
import importlib.resources
import logging
import os
import sys
import threading
import warnings
from pathlib import Path

import torch

from resfu_med.home import resfu_home

__all__ = ["available", "load", "load_testing", "last_error", "build_log", "source_files", "build_directory", "reset", "ENV_REQUIRE"]

logger = logging.getLogger(__name__)

ENV_REQUIRE = "RESFU_MED_REQUIRE_KERNEL"

_SOURCES = {
    "cpu": ("fns_gather.cpp", "cpu/fns_gather_kernel.cpp"),
    "cuda": ("cuda/fns_gather_kernel.cu",),
    "testing": ("testing/fns_gather_elementwise.cpp",),
}
_HEADERS = ("fns_gather_common.h", "fns_gather.h")

_lock = threading.Lock()
_state: dict = {"tried": False, "ok": False, "cuda": False, "error": None, "cuda_error": None, "log": None, "warned": False}
_testing: dict = {"ops": None}


def _csrc_dir() -> Path:
    root = importlib.resources.files("resfu_med.csrc")
    path = Path(str(root))
    if not (path / _SOURCES["cpu"][0]).is_file():
        raise FileNotFoundError(f"kernel sources not found in {path} (is resfu_med installed from a zip?)")
    return path


def _want_cuda() -> bool:
    from torch.utils.cpp_extension import CUDA_HOME

    return torch.cuda.is_available() and CUDA_HOME is not None


def _openmp_flags() -> list[str]:
    # at::parallel_for is inline: without the same OpenMP setting as torch it compiles to its serial branch. The
    # library then links torch's own libgomp (already loaded by torch, same soname).
    return ["-fopenmp"] if torch.backends.openmp.is_available() and sys.platform != "darwin" else []


def _flags(kind: str) -> dict[str, list[str]]:
    cflags = ["-O3", *_openmp_flags()]
    return {"extra_cflags": cflags, "extra_ldflags": _openmp_flags(), "extra_cuda_cflags": ["-O3"] if kind == "cuda" else []}


def _cuda_targets() -> str:
    """Architectures the CUDA library is compiled for: ``TORCH_CUDA_ARCH_LIST`` and the visible devices."""
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "")
    caps = []
    if torch.cuda.is_available():
        caps = sorted({"%d.%d" % torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
    return f"arch_list={archs};devices={','.join(caps)}"


def source_files(kind: str | bool | None = "cpu") -> list[Path]:
    """Absolute paths of the sources of one library.

    Args:
        kind: ``"cpu"``, ``"cuda"`` or ``"testing"``.

    Returns:
        The list of source paths.
    """
    if kind not in _SOURCES:
        raise ValueError(f"unknown kernel library {kind!r}; expected one of {', '.join(_SOURCES)}")
    csrc = _csrc_dir()
    return [csrc / name for name in _SOURCES[kind]]


def build_directory(sources: list[Path], kind: str = "cpu", extra_key: str = "") -> Path:
    """Build folder of one library, keyed by everything that changes the binary.

    Args:
        sources: the files to compile (the shared headers are hashed too).
        kind: ``"cpu"``, ``"cuda"`` or ``"testing"`` (part of the name and the key).
        extra_key: more key material (e.g. sanitizer flags).

    Returns:
        ``$RESFU_MED_HOME/torch_extensions/resfu_med_<kind>_<hash>`` (``~/.cache/resfu-med`` when ``RESFU_MED_HOME`` is
        unset).
    """
    digest = hashlib.sha256()
    for path in sorted(sources + [_csrc_dir() / h for h in _HEADERS]):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    digest.update(f"{torch.__version__}|{torch.version.cuda}|{kind}|{sys.version_info[:2]}|{_flags(kind)}|{extra_key}".encode())
    if kind == "cuda":  # a cache shared across GPU generations must not load a library without a matching image
        digest.update(_cuda_targets().encode())
    # build.ninja names the sources by absolute path: two checkouts of the same sources sharing one folder would
    # rewrite it and rebuild each other's library on every start (and could load a half-written .so).
    digest.update(str(_csrc_dir().resolve()).encode())
    return resfu_home() / "torch_extensions" / f"resfu_med_{kind}_{digest.hexdigest()[:16]}"


def _cpp_load(**kwargs):
    # Indirection so tests can force a build failure.
    from torch.utils.cpp_extension import load as cpp_load

    return cpp_load(**kwargs)


def _summarise(exc: Exception) -> str:
    # cpp_extension puts the whole compiler log in the message; keep the first error line.
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower()]
    return f"{type(exc).__name__}: {(errors or lines or [''])[0][:300]}"


def compile_library(kind: str, extra_cflags: tuple[str, ...] = (), extra_ldflags: tuple[str, ...] = (), key: str = "") -> Path:
    """Compile and load one library (cached on disk); on failure write ``build.log`` and re-raise.

    Args:
        kind: ``"cpu"``, ``"cuda"`` or ``"testing"``.
        extra_cflags: more compiler flags (e.g. ``-fsanitize=address`` for the sanitizer test).
        extra_ldflags: more linker flags.
        key: extra build-folder key for those flags.

    Returns:
        The build folder.
    """
    sources = source_files(kind)
    build_dir = build_directory(sources, kind, " ".join((key, *extra_cflags, *extra_ldflags)).strip())
    build_dir.mkdir(parents=True, exist_ok=True)
    flags = _flags(kind)
    logger.info("building the resfu_med %s kernels in %s (first use only)", kind, build_dir)
    try:
        _cpp_load(
            name=build_dir.name,
            sources=[str(s) for s in sources],
            extra_cflags=flags["extra_cflags"] + list(extra_cflags),
            extra_cuda_cflags=flags["extra_cuda_cflags"],
            extra_ldflags=flags["extra_ldflags"] + list(extra_ldflags),
            extra_include_paths=[str(_csrc_dir())],
            build_directory=str(build_dir),
            with_cuda=kind == "cuda",
            is_python_module=False,
        )
    except Exception as exc:
        log = build_dir / "build.log"
        try:
            log.write_text(f"{type(exc).__name__}: {exc}\n")
        except OSError:  # read-only cache: the warning still carries the first error line
            pass
        exc.build_log = log  # type: ignore[attr-defined]
        raise
    return build_dir


def _require() -> bool:
    return os.environ.get(ENV_REQUIRE, "").strip() not in ("", "0")


def _fail_message(kind: str, error: str, log: Path | None) -> str:
    return f"resfu_med: the {kind} FNS kernel could not be built ({error}); build log: {log}"


def load() -> bool:
    """Build (once per process, cached on disk) and load the CPU library, then the CUDA one when a GPU is usable.

    Returns:
        ``True`` when ``torch.ops.resfu_med.fns_gather_forward`` has a CPU kernel, ``False`` after a failed CPU build
        (the failure is kept in :func:`last_error`, the compiler output in :func:`build_log`).

    Raises:
        RuntimeError: if a build fails and ``RESFU_MED_REQUIRE_KERNEL=1`` is set.
    """
    if _state["tried"]:  # fast path: no lock once decided
        return _state["ok"]
    with _lock:
        if _state["tried"]:
            return _state["ok"]
        failure = None
        try:
            compile_library("cpu")
            from resfu_med.ops import autograd  # registers autograd + fake kernels on the loaded op

            autograd.register()
            _state.update(ok=True, error=None)
        except Exception as exc:  # any build/load failure falls back to the reference (with one warning)
            _state.update(ok=False, error=_summarise(exc), log=getattr(exc, "build_log", None))
            failure = _fail_message("C++", _state["error"], _state["log"])
        if _state["ok"] and _want_cuda():
            try:
                compile_library("cuda")
                _state.update(cuda=True, cuda_error=None)
            except Exception as exc:  # the CPU kernel stays usable
                _state.update(cuda=False, cuda_error=_summarise(exc), log=getattr(exc, "build_log", None))
                failure = _fail_message("CUDA", _state["cuda_error"], _state["log"])
        _state["tried"] = True
        if failure is not None and _require():
            raise RuntimeError(f"{failure} ({ENV_REQUIRE} is set, so the reference fallback is not allowed)")
        return _state["ok"]


def available(device: str | torch.device = "cpu", warn: bool = True) -> bool:
    """Whether the compiled kernels serve tensors on ``device`` (builds on first call).

    Args:
        device: the tensors' device.
        warn: issue the one-per-process warning when the build for that device failed.

    Returns:
        ``True`` when the C++ (CPU) or CUDA kernel for ``device`` is loaded.
    """
    ok = load()
    device = torch.device(device)
    usable = (ok and _state["cuda"]) if device.type == "cuda" else (ok and device.type == "cpu")
    if not usable and warn and not _state["warned"] and device.type in ("cpu", "cuda"):
        error = _state["error"] if not ok else _state["cuda_error"]
        if error is not None:
            _state["warned"] = True
            warnings.warn(
                f"{_fail_message('C++' if not ok else 'CUDA', error, _state['log'])}. fns_gather falls back to the slow "
                f"pure-PyTorch reference; set {ENV_REQUIRE}=1 to make this an error.",
                RuntimeWarning,
                stacklevel=3,
            )
    return usable


def load_testing():
    """Build and load the test-only library; returns ``torch.ops.resfu_med_testing``.

    Its op ``fns_gather_elementwise(grad_out, attn, x, kernel_depth) -> (out, grad_attn, grad_x)`` runs the CUDA kernels'
    per-element formulas (``fns_gather_common.h``) serially on CPU, so the CUDA maths is tested without a GPU.
    """
    if _testing["ops"] is None:
        with _lock:
            if _testing["ops"] is None:
                compile_library("testing")
                _testing["ops"] = torch.ops.resfu_med_testing
    return _testing["ops"]


def last_error() -> str | None:
    """The reason of the last failed build (CPU, else CUDA), or ``None``."""
    return _state["error"] or _state["cuda_error"]


def build_log() -> Path | None:
    """The compiler output of the last failed build, or ``None``."""
    return _state["log"]


def reset() -> None:
    """Forget the build outcome so the next call tries again (tests; a loaded library stays loaded)."""
    with _lock:
        _state.update(tried=False, ok=False, cuda=False, error=None, cuda_error=None, log=None, warned=False)
