"""Backend registry and selection.

Every fused op in gencore runs on one of four backends:

    reference   plain PyTorch (gencore.reference): always there, any device, the truth the tests hold the others to.
    cpu         the C++ extension's vectorized, multi-threaded kernels, for CPU tensors.
    cuda        the C++/CUDA extension's kernels, for CUDA tensors.
    triton      Triton kernels, for CUDA tensors (CPU tensors only under TRITON_INTERPRET=1, for tests).

Selection, most specific first: the per-call ``backend=`` argument, the innermost ``use_backend(name)`` context,
``set_backend(name)``, the environment variable ``GENCORE_BACKEND``, then ``"auto"``. An explicit choice that cannot
serve the input raises; ``auto`` picks the fastest backend that can and falls back quietly to the reference.

``GENCORE_BACKEND`` is read once, when gencore's ops are first used (like torch's own ``TORCH_*`` variables): a lookup in
``os.environ`` costs ~3 us, as much as a small GroupNorm's whole size gate, and the choice is looked up on every call.
Change the backend of a running program with ``set_backend`` or ``use_backend``.

The choice is process-wide (like ``torch.backends`` flags), which also keeps it visible to ``torch.compile``.
"""
from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass

import torch

from . import _extension

BACKENDS = ("reference", "cpu", "cuda", "triton")
_CHOICES = BACKENDS + ("auto",)

# Set by set_backend(); use_backend() pushes on _stack. Module globals on purpose: torch.compile can guard on them.
_default: str | None = None
_stack: list[str] = []
# GENCORE_BACKEND as found at import; checked where it is used, so a bad value names the variable there.
_environment: str | None = os.environ.get("GENCORE_BACKEND") or None

# For CUDA tensors, auto prefers these in order. The order is the one bench/gpu.sh measured (see README); ops that
# have no implementation on a backend are skipped.
AUTO_CUDA_ORDER = ("cuda", "triton")


@dataclass(frozen=True)
class BackendStatus:
    name: str
    available: bool
    reason: str


def _check_name(name: str, what: str = "backend") -> str:
    if not isinstance(name, str) or name.lower() not in _CHOICES:
        raise ValueError(f"{what} must be one of {', '.join(_CHOICES)}; got {name!r}")
    return name.lower()


def set_backend(name: str | None) -> None:
    """Set the process-wide default backend (``None`` or ``"auto"`` restores automatic selection)."""
    global _default
    _default = None if name is None else _check_name(name)


def get_backend() -> str:
    """The backend name in force before a per-call argument: context, then set_backend, then env, then auto."""
    if _stack:
        return _stack[-1]
    if _default is not None:
        return _default
    if _environment is not None:
        return _check_name(_environment, "GENCORE_BACKEND")
    return "auto"


@contextlib.contextmanager
def use_backend(name: str):
    """Run the enclosed gencore ops on backend ``name`` (or ``"auto"``)."""
    _stack.append(_check_name(name))
    try:
        yield
    finally:
        _stack.pop()


# ---------------------------------------------------------------------------------------------------------------------
# Availability


@functools.lru_cache(maxsize=None)
def _triton_error() -> str | None:
    try:
        import triton  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install
        return f"triton is not importable: {exc}"
    return None


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# Filled once, eagerly (see the end of this module): torch.compile traces resolve() -> _can_serve() -> _cpu_error(),
# and must find a plain cached value there, not a call of torch.ops.gencore.cpu_isa() (a str-returning op breaks a
# fullgraph compile; Dynamo also ignores functools.lru_cache and would trace into the function).
_cpu_error_cache: list[str | None] = []


def _cpu_error() -> str | None:
    if not _cpu_error_cache:
        _cpu_error_cache.append(_find_cpu_error())
    return _cpu_error_cache[0]


def _find_cpu_error() -> str | None:
    err = _extension.error()
    if err:
        return err
    isa = _extension.cpu_isa()
    # What the hardware supports (cpuinfo), not torch's chosen capability, which ATEN_CPU_CAPABILITY can lower.
    have_avx512 = torch.cpu._is_avx512_supported()
    have_avx2 = have_avx512 or torch.cpu._is_avx2_supported()
    have = torch.backends.cpu.get_cpu_capability()
    if isa == "avx512" and not have_avx512:
        return f"the CPU kernels were built for AVX-512 but this CPU lacks it ({have}); rebuild with GENCORE_CPU_ISA=auto"
    if isa == "avx2" and not have_avx2:
        return f"the CPU kernels were built for AVX2 but this CPU lacks it ({have}); rebuild with GENCORE_CPU_ISA=auto"
    return None


# One entry point of each op (setup.py builds every op's CUDA binding into the extension, or none): the cuda backend
# is available only when all of them have a CUDA kernel.
CUDA_OPS = ("group_norm_silu_fwd", "sampler_step", "gradient_penalty_interpolate")


@functools.lru_cache(maxsize=None)
def _cuda_error() -> str | None:
    err = _extension.error()
    if err:
        return err
    missing = [op for op in CUDA_OPS if not _extension.has_kernel(op, "CUDA")]
    if missing:
        return (f"gencore._C was built without CUDA kernels for {', '.join(missing)} (no CUDA toolkit or a CPU build "
                f"of torch at build time)")
    if not torch.cuda.is_available():
        return "no CUDA device is visible"
    return None


def status() -> list[BackendStatus]:
    """Each backend, whether it can run here, and why not."""
    out = [BackendStatus("reference", True, "plain PyTorch")]
    err = _cpu_error()
    out.append(BackendStatus("cpu", err is None, err or f"C++ extension ({_extension.cpu_isa()})"))
    err = _cuda_error()
    out.append(BackendStatus("cuda", err is None, err or "C++/CUDA extension"))
    err = _triton_error()
    if err is None and not torch.cuda.is_available():
        if triton_interpret():
            reason = "TRITON_INTERPRET=1: Triton kernels run in the interpreter on CPU tensors (tests only, slow)"
            out.append(BackendStatus("triton", True, reason))
        else:
            out.append(BackendStatus("triton", False, "no CUDA device (set TRITON_INTERPRET=1 to run on CPU tensors)"))
    else:
        out.append(BackendStatus("triton", err is None, err or "Triton kernels"))
    return out


def available_backends() -> list[str]:
    """Names of the backends that can run on this machine."""
    return [s.name for s in status() if s.available]


def _can_serve(name: str, device: torch.device) -> str | None:
    """None if backend `name` can run on tensors on `device`, else the reason it cannot."""
    if name == "reference":
        return None
    if name == "cpu":
        if device.type != "cpu":
            return f"the cpu backend serves CPU tensors only, got a tensor on {device}"
        return _cpu_error()
    if name == "cuda":
        if device.type != "cuda":
            return f"the cuda backend serves CUDA tensors only, got a tensor on {device}"
        return _cuda_error()
    if name == "triton":
        err = _triton_error()
        if err:
            return err
        if device.type == "cuda":
            return None
        if device.type == "cpu" and triton_interpret():
            return None
        return f"the triton backend serves CUDA tensors (CPU tensors only under TRITON_INTERPRET=1), got {device}"
    raise AssertionError(name)


def resolve(requested: str | None, device: torch.device, implemented: tuple[str, ...] = BACKENDS) -> str:
    """The backend an op runs on.

    requested: the per-call ``backend=`` argument (None: fall through to context, default, environment, auto).
    device: where the op's tensors live. implemented: the backends this op has.
    """
    name = _check_name(requested) if requested is not None else get_backend()
    if name == "auto":
        if device.type == "cpu":
            order = ("cpu",)
        elif device.type == "cuda":
            order = AUTO_CUDA_ORDER
        else:
            order = ()
        for candidate in order:
            if candidate in implemented and _can_serve(candidate, device) is None:
                return candidate
        return "reference"
    if name not in implemented:
        raise ValueError(f"backend {name!r} has no implementation of this op; it has {', '.join(implemented)}")
    err = _can_serve(name, device)
    if err is not None:
        raise RuntimeError(f"backend {name!r} cannot run here: {err}")
    return name


_cpu_error()  # see _cpu_error_cache


def cpu_output_cache(limit_mb: float | None = None) -> dict | None:
    """The cpu backend's cache of large output buffers: {"cached_mb", "limit_mb"}; with limit_mb, set the limit first.

    Fresh multi-MB CPU allocations cost a page fault per 4 KiB on first write (65 ms of faults against ~10 ms of
    work for an (8, 320, 64, 64) float32 GroupNorm), so the fused CPU ops take their outputs from a cache of freed
    buffers of the same size (csrc/cpu_output_pool.h), like the CUDA caching allocator. Only buffers a loop reuses are
    kept: those of sizes asked for more than once, among the 16 sizes asked for most recently (varied shapes leave
    next to nothing cached). Bounded: 1024 MB by default,
    GENCORE_CPU_CACHE_MB at start-up, or limit_mb here; 0 turns it off and releases what it holds (a lower limit
    releases it too). torch.ops.gencore.cpu_empty_cache() releases it without changing the limit. None when the
    extension is not built.
    """
    if not _extension.loaded():
        return None
    if limit_mb is not None:
        if isinstance(limit_mb, bool) or not isinstance(limit_mb, (int, float)) or not limit_mb >= 0:
            raise ValueError(f"limit_mb must be a number >= 0 (0 turns the cache off), got {limit_mb!r}")
        cached, limit = torch.ops.gencore.cpu_set_cache_limit(int(limit_mb * (1 << 20)))
    else:
        cached, limit = torch.ops.gencore.cpu_cache_stats()
    return {"cached_mb": cached / (1 << 20), "limit_mb": limit / (1 << 20)}
