"""Compile-check every ``.cu`` source with nvcc and torch's headers (no GPU needed; skipped without nvcc).

The CPU torch wheel ships the c10/ATen CUDA headers but not the CMake-generated ``c10/cuda/impl/cuda_cmake_macros.h``;
a one-line stub in a temporary include folder stands in for it, for this check only. The kernels include only
``c10/cuda`` headers (not ``ATen/cuda/CUDAContext.h``, which pulls cuBLAS/cuSPARSE headers the toolkit may lack).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from torch.utils import cpp_extension

CSRC = Path(__file__).resolve().parents[2] / "csrc"


def _nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    home = cpp_extension.CUDA_HOME or os.environ.get("CUDA_HOME")
    candidate = Path(home or "/usr/local/cuda") / "bin" / "nvcc"
    return str(candidate) if candidate.is_file() else None


@pytest.mark.skipif(_nvcc() is None, reason="nvcc not found")
@pytest.mark.parametrize("source", sorted(CSRC.rglob("*.cu")), ids=lambda p: p.relative_to(CSRC).as_posix())
def test_cu_compiles(source, tmp_path):
    stub = tmp_path / "include" / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    (stub / "cuda_cmake_macros.h").write_text("#pragma once\n")
    includes = [f"-I{p}" for p in cpp_extension.include_paths()] + [f"-I{tmp_path / 'include'}", f"-I{CSRC}"]
    cmd = [_nvcc(), "-c", "-std=c++20", *cpp_extension.COMMON_NVCC_FLAGS, *includes, str(source), "-o", str(tmp_path / "out.o")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"nvcc failed:\n{proc.stderr[-4000:]}"
