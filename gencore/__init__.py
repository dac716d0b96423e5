"""gencore: fused kernels (C++, CUDA, Triton) for GAN and diffusion-model training and sampling.

    import gencore
    y = gencore.ops.group_norm_silu(x, 32, weight, bias, temb=temb)   # SiLU(GroupNorm(x + temb)), fused
    with gencore.use_backend("reference"):                             # choose a backend for a region
        ...
    scheduler = gencore.diffusion.DPMSolverMultistepScheduler()        # subpackages load on first use

`import gencore` loads the ops (and registers them with torch.library), the backends and the drop-in modules; the
other subpackages (diffusion, models, training, ...) are attributes that import themselves on first access, so a
program pays only for what it uses. The Triton ops register themselves the first time the triton backend runs
(gencore/ops/_triton_ops.py).
"""
import importlib

from . import backends, nn, ops
from .backends import available_backends, cpu_output_cache, get_backend, set_backend, use_backend
from .optimize import optimize

__version__ = "0.1.0"

# Public subpackages imported on first attribute access (PEP 562), not by `import gencore`.
_LAZY_SUBMODULES = ("data", "diffusion", "fusion", "gan", "metrics", "models", "reference", "testing", "training")

__all__ = ["available_backends", "backends", "cpu_output_cache", "get_backend", "nn", "ops", "optimize", "set_backend",
           "use_backend", "__version__", *_LAZY_SUBMODULES]


def __getattr__(name: str):
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f".{name}", __name__)  # the import binds it here: later lookups skip this
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_SUBMODULES))
