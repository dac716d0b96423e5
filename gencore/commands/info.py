"""`gencore info` (arguments: gencore.cli): versions, and each backend available or not, with the reason."""
from __future__ import annotations

import platform
import shutil
import subprocess

import torch

import gencore
from gencore import backends


def _compiler() -> str:
    for cc in ("c++", "g++", "clang++"):
        path = shutil.which(cc)
        if path:
            try:
                version = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
                return version.stdout.splitlines()[0]
            except (OSError, subprocess.SubprocessError, IndexError):
                return path
    return "none found"


def run(args) -> int:
    try:
        import triton  # optional: only Linux x86_64/aarch64 have it, and it may fail to import
        triton_version = triton.__version__
    except Exception as exc:  # noqa: BLE001 - report whatever broke
        triton_version = f"not available ({exc.__class__.__name__}: {exc})"
    print(f"gencore  {gencore.__version__}")
    print(f"python   {platform.python_version()} ({platform.machine()})")
    print(f"torch    {torch.__version__} (CUDA {torch.version.cuda or 'none'}, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads)")
    print(f"triton   {triton_version}")
    print(f"compiler {_compiler()}")
    if torch.cuda.is_available():
        print(f"device   {torch.cuda.get_device_name()}")
    print(f"selected {backends.get_backend()}")
    print("backends:")
    for s in backends.status():
        print(f"  {s.name:<10} {'yes' if s.available else 'no ':<4} {s.reason}")
    cache = backends.cpu_output_cache()
    if cache is not None:
        print(f"cpu output cache: {cache['cached_mb']:.0f} MB held, limit {cache['limit_mb']:.0f} MB "
              "(GENCORE_CPU_CACHE_MB, or gencore.cpu_output_cache(limit_mb=...); 0 turns it off)")
    return 0
