"""Loads the compiled extension gencore._C, if there is one, and remembers why not otherwise.

Importing gencore must never fail because the extension is missing or broken: the cpu and cuda backends are then
simply unavailable, and `gencore info` shows the reason.
"""
from __future__ import annotations

import importlib

import torch

_module = None
_error: str | None = None


def _load():
    global _module, _error
    if _module is not None or _error is not None:
        return
    try:
        _module = importlib.import_module("gencore._C")
    except ImportError as exc:  # not built (GENCORE_SKIP_EXT=1), or built against another torch
        _error = f"gencore._C could not be imported: {exc}"
    except OSError as exc:  # broken shared object
        _error = f"gencore._C could not be loaded: {exc}"


def error() -> str | None:
    """Why the extension is unavailable, or None when it loaded."""
    _load()
    return _error


def loaded() -> bool:
    _load()
    return _module is not None


def module():
    """The extension module gencore._C (its eager entry points), or None when it is unavailable."""
    _load()
    return _module


def has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether the extension registered a kernel for `gencore::<op>` under `dispatch_key` ("CPU" or "CUDA")."""
    if not loaded():
        return False
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"gencore::{op}", dispatch_key)
    except RuntimeError:  # the schema itself is unknown
        return False


def cpu_isa() -> str | None:
    """The vector ISA the CPU kernels were compiled for ("avx2", "avx512", "generic"), or None without extension."""
    if not loaded():
        return None
    try:
        return torch.ops.gencore.cpu_isa()
    except (AttributeError, RuntimeError):
        return "unknown"
