"""Fused functional ops. Each has a pure-PyTorch twin in gencore.reference and runs on the backends of
gencore.backends (reference, cpu, cuda, triton)."""
from .group_norm_silu import group_norm_silu
from .sampler_step import diffusion_training_inputs, philox_uint32, sampler_step

__all__ = ["group_norm_silu", "sampler_step", "diffusion_training_inputs", "philox_uint32"]
