"""Builds a CUDA host-emulation driver (tests/cuda_emulation/*.cpp) into a shared library for ctypes.

The drivers include the real csrc/cuda/*_kernels.cu through csrc/cuda/host_emulation.h, which runs each GPU thread
as a lightweight coroutine on the CPU: the kernels' indexing and reductions are checked without a GPU.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
# The launchers' element types: the values of gencore::ScalarKind (csrc/scalar_kind.h).
SCALAR_KIND = {torch.float16: 0, torch.bfloat16: 1, torch.float32: 2, torch.float64: 3}


def cuda_include() -> Path | None:
    from torch.utils.cpp_extension import CUDA_HOME

    for home in (os.environ.get("CUDA_HOME"), CUDA_HOME, "/usr/local/cuda"):
        if home and (Path(home) / "include" / "cuda_fp16.h").exists():
            return Path(home) / "include"
    return None


def build_emulation(op: str) -> ctypes.CDLL:
    """The op's driver, tests/cuda_emulation/<op>_emulation.cpp, built once per version of its sources (the driver and
    every header and kernel under csrc/ that it may include; cached under build/cuda_emulation/), loaded; skips the
    calling test module with the reason when the CUDA headers or a C++20 compiler are missing."""
    driver = ROOT / "tests" / "cuda_emulation" / f"{op}_emulation.cpp"
    include = cuda_include()
    cxx = shutil.which(os.environ.get("CXX", "g++"))
    sources = [driver] + sorted(p for p in (ROOT / "csrc").rglob("*") if p.suffix in (".h", ".cuh", ".cu"))
    if include is None or cxx is None:
        pytest.skip(f"needs the CUDA headers (found: {include}) and a C++20 compiler (found: {cxx})")
    flags = ["-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", "-Wall", "-Wextra", "-Wno-unused-parameter",
             "-Wno-unknown-pragmas", "-Werror", f"-I{include}"]
    digest = hashlib.sha256(" ".join(flags).encode() + b"".join(p.read_bytes() for p in sources)).hexdigest()[:16]
    lib = ROOT / "build" / "cuda_emulation" / f"{op}_{digest}.so"
    if not lib.exists():
        lib.parent.mkdir(parents=True, exist_ok=True)
        tmp = lib.with_suffix(f".{os.getpid()}.tmp")
        proc = subprocess.run([cxx, *flags, str(driver), "-o", str(tmp)], capture_output=True, text=True,
                              timeout=900)
        assert proc.returncode == 0, f"building the emulation failed:\n{proc.stderr[-6000:]}"
        os.replace(tmp, lib)
    return ctypes.CDLL(str(lib))
