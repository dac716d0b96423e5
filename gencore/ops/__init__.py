"""Fused functional ops. Each has a pure-PyTorch twin in gencore.reference and runs on the backends of
gencore.backends (reference, cpu, cuda, triton).

The C++ ops (torch.ops.gencore.*) are registered on import; the Triton ops (torch.ops.gencore.*_triton) the first
time the triton backend serves a call, or by register_triton_ops() for a caller that reaches them directly.
"""
from ._triton_ops import register_triton_ops
from .gradient_penalty import gradient_norm_penalty, gradient_penalty_interpolate
from .group_norm_silu import group_norm_silu
from .sampler_step import diffusion_training_inputs, philox_uint32, sampler_step

__all__ = ["gradient_norm_penalty", "gradient_penalty_interpolate", "group_norm_silu", "sampler_step",
           "diffusion_training_inputs", "philox_uint32", "register_triton_ops"]
