"""Fused functional ops. Each has a pure-PyTorch twin in gencore.reference and runs on the backends of
gencore.backends (reference, cpu, cuda, triton)."""
from .group_norm_silu import group_norm_silu

__all__ = ["group_norm_silu"]
