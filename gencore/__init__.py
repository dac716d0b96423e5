"""gencore: fused kernels (C++, CUDA, Triton) for GAN and diffusion-model training and sampling.

    import gencore
    y = gencore.ops.group_norm_silu(x, 32, weight, bias, temb=temb)   # SiLU(GroupNorm(x + temb)), fused
    with gencore.use_backend("reference"):                             # choose a backend for a region
        ...
"""
from . import backends, nn, ops
from .backends import available_backends, cpu_output_cache, get_backend, set_backend, use_backend
from .optimize import optimize

__version__ = "0.1.0"

__all__ = ["available_backends", "backends", "cpu_output_cache", "get_backend", "nn", "ops", "optimize", "set_backend", "use_backend",
           "__version__"]
