"""How every launcher here starts a kernel: ``wrap_triton(kernel)[grid](*args)``.

``torch.library.wrap_triton`` makes the launch traceable inside a ``triton_op`` (torch.compile, export). Under
``TRITON_INTERPRET=1`` ``@triton.jit`` gives an ``InterpretedFunction``: torch 2.13 hands it back unwrapped, while
torch 2.11 (the oldest torch gencore supports) raises "wrap_triton only works on functions annotated with
triton.jit". The interpreter runs eagerly on CPU tensors, so there is nothing to trace: the kernel itself is the
launcher there, on every torch.
"""
from __future__ import annotations

import torch

try:
    from triton.runtime.interpreter import InterpretedFunction
except ImportError:  # a Triton without the interpreter: every kernel is a JITFunction
    InterpretedFunction = ()


def wrap_triton(kernel):
    if isinstance(kernel, InterpretedFunction):
        return kernel
    return torch.library.wrap_triton(kernel)
