"""gencore: fused kernels (C++, CUDA, Triton) for GAN and diffusion-model training and sampling.

    import gencore
    y = gencore.ops.group_norm_silu(x, 32, weight, bias, temb=temb)   # SiLU(GroupNorm(x + temb)), fused
    with gencore.use_backend("reference"):                             # choose a backend for a region
        ...
    scheduler = gencore.diffusion.DPMSolverMultistepScheduler()        # subpackages load on first use

`import gencore` imports nothing, torch included, so `gencore --help` answers at once: every public name is an
attribute that imports its module on first access (PEP 562). The first use of `gencore.ops` (or of anything built on
it: nn, backends, optimize, the schedulers' fused steps) loads the C++ extension and registers the ops with
torch.library; a program that calls `torch.ops.gencore.*` directly, or loads an exported program that does, imports
`gencore.ops` first. The Triton ops register themselves the first time the triton backend runs
(gencore/ops/_triton_ops.py).
"""
import importlib

__version__ = "0.1.0"

# Public subpackages and modules, imported on first attribute access.
_LAZY_SUBMODULES = ("backends", "data", "diffusion", "fusion", "gan", "metrics", "models", "nn", "ops", "reference",
                    "testing", "training")
# Public functions, each re-exported from the module that defines it, imported on first access too (optimize lives in
# _optimize.py: a submodule named optimize would rebind `gencore.optimize` to itself when imported).
_LAZY_FUNCTIONS = {name: "backends" for name in ("available_backends", "cpu_output_cache", "get_backend",
                                                 "set_backend", "use_backend")} | {"optimize": "_optimize"}

__all__ = ["__version__", *_LAZY_SUBMODULES, *_LAZY_FUNCTIONS]


def __getattr__(name: str):
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f".{name}", __name__)  # the import binds it here: later lookups skip this
    if name in _LAZY_FUNCTIONS:
        value = getattr(importlib.import_module(f".{_LAZY_FUNCTIONS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_SUBMODULES) | set(_LAZY_FUNCTIONS))
