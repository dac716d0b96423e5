"""Argument checks shared by the public ops: every bad input becomes a clear exception naming the argument.

The kernels check again (TORCH_CHECK in C++), so calling torch.ops.gencore.* directly is safe too; these checks run
first so that users see the argument names of the public function.
"""
from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_float_tensor(name: str, t, *, min_dim: int = 0, allow_empty: bool = False) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating-point tensor (float16, bfloat16, float32 or float64), got {t.dtype}")
    if t.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dimensions, got shape {tuple(t.shape)}")
    if not allow_empty and t.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(t.shape)}")


def check_like(name: str, t, ref: torch.Tensor, ref_name: str, shape: tuple[int, ...]) -> None:
    """`t` is a tensor of exactly `shape`, with `ref`'s dtype and device."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(t).__name__}")
    if t.shape != shape:  # torch.Size is a tuple: compared as is, no conversion on the hot path
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}; they must be on the same device")
    if t.dtype != ref.dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but {ref_name} has dtype {ref.dtype}; they must match")


def check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return value


def check_fake_devices(ref_name: str, ref: torch.Tensor, **tensors) -> None:
    """In a fake (meta) implementation: every tensor argument is on `ref`'s device. A direct torch.ops call with one
    argument on "meta" dispatches to the fake, which must fail like the kernels do instead of returning
    uninitialised memory on the other device."""
    for name, t in tensors.items():
        if t is not None:
            torch._check(t.device == ref.device,
                         lambda name=name, t=t: f"{name} is on {t.device} but {ref_name} is on {ref.device}; they "
                                                f"must be on the same device")
