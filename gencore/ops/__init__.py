"""Fused functional ops. Each has a pure-PyTorch twin in gencore.reference and runs on the backends of
gencore.backends (reference, cpu, cuda, triton)."""
from .gradient_penalty import gradient_norm_penalty, gradient_penalty_interpolate
from .group_norm_silu import group_norm_silu
from .sampler_step import diffusion_training_inputs, philox_uint32, sampler_step

__all__ = ["gradient_norm_penalty", "gradient_penalty_interpolate", "group_norm_silu", "sampler_step",
           "diffusion_training_inputs", "philox_uint32"]
